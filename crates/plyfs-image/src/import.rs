//! Importing an image archive: a `docker save`/`podman save` archive
//! (docker-archive: `manifest.json`), or an OCI image layout, as a
//! directory or a tar; the archive itself may be gzip or zstd
//! compressed, and so may its layers. Every blob is checked against the
//! digest and size its manifest gives, every layer against its diff-id;
//! layers the store has already are not unpacked again. Everything is
//! staged under the store's `tmp/` and renamed into place only once all
//! of it checked out, so a refused archive leaves the store as it was.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashReader};
use crate::error::{Error, IoContext, Result};
use crate::spec::{self, Descriptor, DockerImage, Index, Manifest};
use crate::store::{ImageRecord, LayerInfo, LayerRef, Store, WhiteoutFormat, normalize_name};
use crate::unpack::{UnpackOptions, unpack};
use crate::{Compression, Progress, StepReader};

/// Largest JSON document read from an archive.
const JSON_MAX: u64 = 64 << 20;

/// What an import added.
#[derive(Debug)]
pub struct Imported {
    /// Each image's names and id.
    pub images: Vec<(Vec<String>, Digest)>,
    pub layers_unpacked: usize,
    pub layers_shared: usize,
}

/// Imports every image of `archive` into `store` (which the caller has
/// locked exclusively).
pub fn import(
    store: &Store,
    archive: &Path,
    whiteouts: WhiteoutFormat,
    progress: &dyn Progress,
) -> Result<Imported> {
    let mut staged = Vec::new();
    let r = import_staged(store, archive, whiteouts, progress, &mut staged);
    if r.is_err() {
        for (tmp, _) in &staged {
            crate::store::remove_any(tmp);
        }
    }
    r
}

fn import_staged(
    store: &Store,
    archive: &Path,
    whiteouts: WhiteoutFormat,
    progress: &dyn Progress,
    staged: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<Imported> {
    let src = Source::load(store, archive, progress)?;
    let plans = src.plan()?;
    let mut out = Imported {
        images: Vec::new(),
        layers_unpacked: 0,
        layers_shared: 0,
    };
    let mut records = Vec::new();
    let mut done: HashMap<String, ()> = HashMap::new();
    for plan in plans {
        let mut layers = Vec::new();
        for (i, l) in plan.layers.iter().enumerate() {
            let what = format!(
                "layer {}/{} {}",
                i + 1,
                plan.layers.len(),
                l.diff_id.short()
            );
            let (blob, fresh) = import_layer(
                store, &src, l, whiteouts, progress, &what, staged, &mut done,
            )?;
            if fresh {
                out.layers_unpacked += 1;
            } else {
                out.layers_shared += 1;
            }
            layers.push(LayerRef {
                diff_id: l.diff_id.to_string(),
                blob,
            });
        }
        // Configs and manifests are small: staged as files too.
        let (manifest_bytes, manifest_desc) = match plan.manifest {
            Some(m) => m,
            None => {
                let m = Manifest {
                    schema_version: 2,
                    media_type: Some(spec::OCI_MANIFEST.into()),
                    config: Descriptor {
                        media_type: spec::OCI_CONFIG.into(),
                        digest: plan.config_digest.to_string(),
                        size: plan.config.len() as u64,
                        annotations: Default::default(),
                    },
                    layers: layers.iter().map(|l| l.blob.clone()).collect(),
                };
                let bytes = serde_json::to_vec(&m).map_err(|e| Error::Archive {
                    archive: archive.display().to_string(),
                    what: format!("cannot encode a manifest: {e}"),
                })?;
                let desc = Descriptor {
                    media_type: spec::OCI_MANIFEST.into(),
                    digest: Digest::of(&bytes).to_string(),
                    size: bytes.len() as u64,
                    annotations: Default::default(),
                };
                (bytes, desc)
            }
        };
        for (bytes, digest) in [
            (&plan.config, plan.config_digest.clone()),
            (&manifest_bytes, Digest::parse(&manifest_desc.digest)?),
        ] {
            if !store.has_blob(&digest) {
                let tmp = store.tmp_path("blob");
                crate::store::write_synced(&tmp, bytes)?;
                staged.push((tmp, store.blob_path(&digest)));
            }
        }
        let created = serde_json::from_slice::<serde_json::Value>(&plan.config)
            .ok()
            .and_then(|v| v.get("created")?.as_str().map(str::to_string));
        out.images
            .push((plan.names.clone(), plan.config_digest.clone()));
        records.push(ImageRecord {
            names: plan.names,
            manifest: manifest_desc,
            config: plan.config_digest.to_string(),
            layers,
            created,
        });
    }
    for (tmp, dst) in staged.drain(..) {
        if dst.exists() {
            crate::store::remove_any(&tmp);
        } else {
            std::fs::rename(&tmp, &dst).at(&dst)?;
        }
    }
    for r in records {
        store.add_image(r)?;
    }
    Ok(out)
}

/// One layer: its blob stored, its tree unpacked, unless the store (or
/// this import) has them. Returns the blob's descriptor and whether the
/// layer was unpacked now.
#[allow(clippy::too_many_arguments)]
fn import_layer(
    store: &Store,
    src: &Source,
    l: &PlannedLayer,
    whiteouts: WhiteoutFormat,
    progress: &dyn Progress,
    what: &str,
    staged: &mut Vec<(PathBuf, PathBuf)>,
    done: &mut HashMap<String, ()>,
) -> Result<(Descriptor, bool)> {
    let layer_known = match store.layer_info(&l.diff_id) {
        Some(info) if info.whiteouts != whiteouts => {
            return Err(Error::Store {
                path: store.root().to_path_buf(),
                what: format!(
                    "layer {} is stored with {:?} whiteouts; import with that format, or remove the images using it first",
                    l.diff_id, info.whiteouts
                ),
            });
        }
        Some(_) => true,
        None => done.contains_key(l.diff_id.as_str()),
    };
    if layer_known
        && let Some(d) = &l.digest
        && (store.has_blob(d) || done.contains_key(d.as_str()))
    {
        return Ok((l.descriptor(d.clone(), l.size.unwrap_or(0)), false));
    }
    let (reader, size) = src.member(&l.name)?.ok_or_else(|| Error::Blob {
        digest: l.shown(),
        what: format!(
            "named by the manifest but missing from the archive ({})",
            l.name
        ),
    })?;
    if let Some(want) = l.size
        && size > want
    {
        return Err(Error::Blob {
            digest: l.shown(),
            what: format!(
                "layer bomb: {size} bytes where the manifest says {want}: {}",
                crate::digest::OVER_LIMIT
            ),
        });
    }
    let step = progress.step(what, Some(size), true);
    let blob_tmp = store.tmp_path("blob");
    let blob_file = File::create(&blob_tmp).at(&blob_tmp)?;
    let mut tee = HashReader::new(
        Tee {
            inner: StepReader {
                inner: reader,
                step: &*step,
            },
            copy: std::io::BufWriter::new(blob_file),
        },
        l.size,
    );
    let layer_tmp = store.tmp_path("layer");
    let diff = layer_tmp.join("diff");
    let (compression, diff_got, unpacked) = {
        let (c, dec) = Compression::decoder(BufReader::with_capacity(1 << 16, &mut tee))
            .map_err(|e| blob_error(l, e))?;
        let mut diff_r = HashReader::new(dec, None);
        let mut unpacked = None;
        if !layer_known {
            std::fs::create_dir_all(&diff).at(&diff)?;
            staged.push((layer_tmp.clone(), store.layer_dir(&l.diff_id)));
            let opts = UnpackOptions {
                rootless: store.rootless,
                whiteouts,
            };
            unpacked = Some(unpack(&mut diff_r, &diff, &l.shown(), opts)?);
        }
        diff_r.drain().map_err(|e| blob_error(l, e))?;
        (c, diff_r.finish().0, unpacked)
    };
    tee.drain().map_err(|e| blob_error(l, e))?;
    let (blob_digest, count) = tee.finish();
    if let Some(want) = l.size
        && count != want
    {
        return Err(Error::Blob {
            digest: l.shown(),
            what: format!("truncated: {count} bytes where the manifest says {want}"),
        });
    }
    if let Some(want) = &l.digest
        && *want != blob_digest
    {
        return Err(Error::Blob {
            digest: want.to_string(),
            what: format!("digest mismatch: the archive's blob is {blob_digest}"),
        });
    }
    if diff_got != l.diff_id {
        return Err(Error::Blob {
            digest: l.shown(),
            what: format!(
                "diff-id mismatch: the configuration says {}, the layer is {diff_got}",
                l.diff_id
            ),
        });
    }
    if let Some(size) = unpacked {
        let info = LayerInfo {
            diff_id: l.diff_id.to_string(),
            whiteouts,
            rootless: store.rootless,
            size,
        };
        let raw = serde_json::to_vec_pretty(&info).unwrap_or_default();
        crate::store::write_synced(&layer_tmp.join("layer.json"), &raw)?;
    }
    done.insert(l.diff_id.to_string(), ());
    done.insert(blob_digest.to_string(), ());
    staged.push((blob_tmp, store.blob_path(&blob_digest)));
    let mut desc = l.descriptor(blob_digest, count);
    if l.media_type.is_none() {
        desc.media_type = spec::layer_media_type(compression).into();
    }
    Ok((desc, unpacked.is_some()))
}

fn blob_error(l: &PlannedLayer, e: std::io::Error) -> Error {
    let what = if e.to_string().contains(crate::digest::OVER_LIMIT) {
        format!("layer bomb: {}", crate::digest::OVER_LIMIT)
    } else {
        format!("truncated or corrupt: {e}")
    };
    Error::Blob {
        digest: l.shown(),
        what,
    }
}

/// Copies what is read through it into `copy`.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        if n == 0 {
            self.copy.flush()?;
        }
        Ok(n)
    }
}

/// One image of the archive, checked so far as its small documents go.
struct Plan {
    names: Vec<String>,
    config: Vec<u8>,
    config_digest: Digest,
    /// The manifest as stored (OCI layouts); docker archives get one made.
    manifest: Option<(Vec<u8>, Descriptor)>,
    layers: Vec<PlannedLayer>,
}

struct PlannedLayer {
    /// Where the blob is in the archive.
    name: String,
    /// What the manifest says of it (docker archives say nothing).
    digest: Option<Digest>,
    size: Option<u64>,
    media_type: Option<String>,
    diff_id: Digest,
}

impl PlannedLayer {
    fn shown(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => format!("{} ({})", self.name, self.diff_id),
        }
    }

    fn descriptor(&self, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self
                .media_type
                .clone()
                .unwrap_or_else(|| spec::OCI_LAYER.into()),
            digest: digest.to_string(),
            size: self.size.unwrap_or(size),
            annotations: Default::default(),
        }
    }
}

/// The archive: a directory, or a tar whose members are found by name.
enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        shown: String,
        /// name → (offset of the data, size)
        members: HashMap<String, (u64, u64)>,
        /// name → the member a symlink or hard link leads to
        links: HashMap<String, String>,
    },
}

/// A member name in one spelling: no `./`, no empty or `.` components;
/// `None` for a name that leaves the archive.
fn clean(name: &str) -> Option<String> {
    let mut v = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => v.push(c),
        }
    }
    (!name.starts_with('/')).then(|| v.join("/"))
}

/// A symlink's target relative to its directory, within the archive.
fn resolve_relative(dir: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut v: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                v.pop()?;
            }
            c => v.push(c),
        }
    }
    Some(v.join("/"))
}

impl Source {
    fn load(store: &Store, archive: &Path, progress: &dyn Progress) -> Result<Source> {
        let shown = archive.display().to_string();
        let md = std::fs::metadata(archive).at(archive)?;
        if md.is_dir() {
            return Ok(Source::Dir(archive.to_path_buf()));
        }
        let mut head = [0u8; 4];
        let n = File::open(archive)
            .and_then(|mut f| f.read(&mut head))
            .at(archive)?;
        let path = if Compression::sniff(&head[..n]) == Compression::None {
            archive.to_path_buf()
        } else {
            // A compressed archive: its members are read out of order, so
            // it is decompressed once into the store's tmp/.
            let tmp = store.tmp_path("archive");
            let step = progress.step("decompressing the archive", Some(md.len()), true);
            let undo = |e: std::io::Error| Error::Archive {
                archive: shown.clone(),
                what: format!("cannot decompress: {e}"),
            };
            let input = StepReader {
                inner: File::open(archive).at(archive)?,
                step: &*step,
            };
            let (_, mut dec) = Compression::decoder(BufReader::new(input)).map_err(undo)?;
            let mut out = File::create(&tmp).at(&tmp)?;
            std::io::copy(&mut dec, &mut out).map_err(undo)?;
            tmp
        };
        let bad = |e: std::io::Error| Error::Archive {
            archive: shown.clone(),
            what: format!("not a readable tar archive: {e}"),
        };
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        let mut tar = tar::Archive::new(File::open(&path).at(&path)?);
        for e in tar.entries().map_err(bad)? {
            let e = e.map_err(bad)?;
            let Some(name) = clean(&String::from_utf8_lossy(&e.path_bytes())) else {
                continue;
            };
            match e.header().entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let target = if e.header().entry_type() == tar::EntryType::Symlink {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        resolve_relative(dir, &target)
                    } else {
                        clean(&target)
                    };
                    if let Some(t) = target {
                        links.insert(name, t);
                    }
                }
                _ => {
                    members.insert(name, (e.raw_file_position(), e.size()));
                }
            }
        }
        Ok(Source::Tar {
            path,
            shown,
            members,
            links,
        })
    }

    fn shown(&self) -> String {
        match self {
            Source::Dir(p) => p.display().to_string(),
            Source::Tar { shown, .. } => shown.clone(),
        }
    }

    fn archive_error(&self, what: String) -> Error {
        Error::Archive {
            archive: self.shown(),
            what,
        }
    }

    /// Member `name` and its size; `None` when the archive lacks it.
    fn member(&self, name: &str) -> Result<Option<(Box<dyn Read>, u64)>> {
        let Some(name) = clean(name) else {
            return Err(
                self.archive_error(format!("member name {name:?} leaves the archive: refused"))
            );
        };
        match self {
            Source::Dir(root) => {
                let p = root.join(&name);
                match File::open(&p) {
                    Ok(f) => {
                        let size = f.metadata().at(&p)?.len();
                        Ok(Some((Box::new(f), size)))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).at(p),
                }
            }
            Source::Tar {
                path,
                members,
                links,
                ..
            } => {
                let mut name = name;
                for _ in 0..16 {
                    if let Some(&(off, size)) = members.get(&name) {
                        let mut f = File::open(path).at(path)?;
                        f.seek(SeekFrom::Start(off)).at(path)?;
                        return Ok(Some((Box::new(f.take(size)), size)));
                    }
                    match links.get(&name) {
                        Some(t) => name = t.clone(),
                        None => return Ok(None),
                    }
                }
                Ok(None)
            }
        }
    }

    /// A small document, whole.
    fn read_json(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some((mut r, size)) = self.member(name)? else {
            return Ok(None);
        };
        if size > JSON_MAX {
            return Err(self.archive_error(format!("{name} is too large ({size} bytes)")));
        }
        let mut v = Vec::new();
        r.read_to_end(&mut v)
            .map_err(|e| self.archive_error(format!("{name}: {e}")))?;
        Ok(Some(v))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str, raw: &[u8]) -> Result<T> {
        serde_json::from_slice(raw)
            .map_err(|e| self.archive_error(format!("{what} does not read: {e}")))
    }

    /// A blob an OCI document names, checked against its descriptor.
    fn blob(&self, d: &Descriptor) -> Result<(Vec<u8>, Digest)> {
        let digest = Digest::parse(&d.digest)?;
        let name = format!("blobs/sha256/{}", digest.hex());
        let data = self.read_json(&name)?.ok_or_else(|| Error::Blob {
            digest: digest.to_string(),
            what: "named by the manifest but missing from the archive".into(),
        })?;
        check_blob(&digest, Some(d.size), &data)?;
        Ok((data, digest))
    }

    /// The images of the archive, with their configs and manifests checked.
    fn plan(&self) -> Result<Vec<Plan>> {
        if let Some(raw) = self.read_json("manifest.json")? {
            let images: Vec<DockerImage> = self.parse("manifest.json", &raw)?;
            return images.iter().map(|i| self.plan_docker(i)).collect();
        }
        let Some(raw) = self.read_json("index.json")? else {
            return Err(self.archive_error(
                "neither manifest.json (docker-archive) nor index.json (OCI layout): not an image archive".into(),
            ));
        };
        let index: Index = self.parse("index.json", &raw)?;
        let mut plans = Vec::new();
        for d in &index.manifests {
            plans.push(self.plan_oci(d, 0)?);
        }
        if plans.is_empty() {
            return Err(self.archive_error("index.json lists no image".into()));
        }
        Ok(plans)
    }

    fn plan_docker(&self, image: &DockerImage) -> Result<Plan> {
        let config = self.read_json(&image.config)?.ok_or_else(|| {
            self.archive_error(format!(
                "configuration {} named by manifest.json is missing",
                image.config
            ))
        })?;
        let config_digest = Digest::of(&config);
        // The name is the digest (`HEX.json`, `blobs/sha256/HEX`).
        let stem = image.config.rsplit('/').next().unwrap_or("");
        let stem = stem.strip_suffix(".json").unwrap_or(stem);
        if stem.len() == 64 && stem != config_digest.hex() {
            return Err(Error::Blob {
                digest: format!("sha256:{stem}"),
                what: format!("digest mismatch: the archive's configuration is {config_digest}"),
            });
        }
        let diff_ids = self.diff_ids(&config, image.layers.len())?;
        let layers = image
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(name, diff_id)| {
                let hex = name.strip_prefix("blobs/sha256/").filter(|h| h.len() == 64);
                Ok(PlannedLayer {
                    name: name.clone(),
                    digest: hex
                        .map(|h| Digest::parse(&format!("sha256:{h}")))
                        .transpose()?,
                    size: None,
                    media_type: None,
                    diff_id,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            names: image
                .repo_tags
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|n| normalize_name(n))
                .collect(),
            config,
            config_digest,
            manifest: None,
            layers,
        })
    }

    fn plan_oci(&self, d: &Descriptor, depth: u32) -> Result<Plan> {
        let (raw, _) = self.blob(d)?;
        if matches!(d.media_type.as_str(), spec::OCI_INDEX | spec::DOCKER_LIST) {
            // A multi-platform image: the first of its manifests.
            let inner: Index = self.parse(&d.digest, &raw)?;
            let first = inner
                .manifests
                .first()
                .filter(|_| depth < 4)
                .ok_or_else(|| {
                    self.archive_error(format!("index {} lists no manifest", d.digest))
                })?;
            let mut plan = self.plan_oci(first, depth + 1)?;
            plan.names = names_of(d).or(Some(plan.names)).unwrap_or_default();
            return Ok(plan);
        }
        let manifest: Manifest = self.parse(&d.digest, &raw)?;
        let (config, config_digest) = self.blob(&manifest.config)?;
        let diff_ids = self.diff_ids(&config, manifest.layers.len())?;
        let layers = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .map(|(l, diff_id)| {
                let digest = Digest::parse(&l.digest)?;
                Ok(PlannedLayer {
                    name: format!("blobs/sha256/{}", digest.hex()),
                    digest: Some(digest),
                    size: Some(l.size),
                    media_type: Some(l.media_type.clone()),
                    diff_id,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut desc = d.clone();
        desc.annotations.clear();
        Ok(Plan {
            names: names_of(d).unwrap_or_default(),
            config,
            config_digest,
            manifest: Some((raw, desc)),
            layers,
        })
    }

    fn diff_ids(&self, config: &[u8], layers: usize) -> Result<Vec<Digest>> {
        let v: serde_json::Value = self.parse("the image configuration", config)?;
        let ids = spec::diff_ids(&v).ok_or_else(|| {
            self.archive_error("the image configuration has no rootfs.diff_ids".into())
        })?;
        if ids.len() != layers {
            return Err(self.archive_error(format!(
                "the manifest names {layers} layers, the configuration {}",
                ids.len()
            )));
        }
        ids.iter().map(|s| Digest::parse(s)).collect()
    }
}

/// An image's names from its index entry's annotations.
fn names_of(d: &Descriptor) -> Option<Vec<String>> {
    if let Some(full) = d.annotations.get(spec::CONTAINERD_NAME) {
        return Some(vec![normalize_name(full)]);
    }
    let r = d.annotations.get(spec::REF_NAME)?;
    // A bare tag names nothing by itself.
    let full = r.contains('/') || r.contains(':');
    full.then(|| vec![normalize_name(r)])
}

/// A blob read whole, against its digest and size.
fn check_blob(digest: &Digest, size: Option<u64>, data: &[u8]) -> Result<()> {
    if let Some(s) = size
        && data.len() as u64 != s
    {
        let what = if (data.len() as u64) > s {
            format!(
                "layer bomb: {} bytes where the manifest says {s}",
                data.len()
            )
        } else {
            format!(
                "truncated: {} bytes where the manifest says {s}",
                data.len()
            )
        };
        return Err(Error::Blob {
            digest: digest.to_string(),
            what,
        });
    }
    let got = Digest::of(data);
    if got != *digest {
        return Err(Error::Blob {
            digest: digest.to_string(),
            what: format!("digest mismatch: the archive's blob is {got}"),
        });
    }
    Ok(())
}

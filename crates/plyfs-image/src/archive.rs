//! Reading an image archive: a directory or a tar (compressed or not)
//! whose members are found by name, and the images it holds, planned
//! from `manifest.json` (docker-archive) or `index.json` (OCI layout),
//! with the small documents (index, manifests, configs) checked against
//! their digests.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::spec::{self, Descriptor, DockerImage, Index, Manifest};
use crate::store::{Store, normalize_name};
use crate::{Compression, Progress, StepReader};

/// Largest JSON document read from an archive.
const JSON_MAX: u64 = 64 << 20;

/// One image of the archive, checked so far as its small documents go.
pub(crate) struct Plan {
    pub(crate) names: Vec<String>,
    pub(crate) config: Vec<u8>,
    pub(crate) config_digest: Digest,
    /// The manifest as stored (OCI layouts); docker archives get one made.
    pub(crate) manifest: Option<(Vec<u8>, Descriptor)>,
    pub(crate) layers: Vec<PlannedLayer>,
}

pub(crate) struct PlannedLayer {
    /// Where the blob is in the archive.
    pub(crate) name: String,
    /// What the manifest says of it (docker archives say nothing).
    pub(crate) digest: Option<Digest>,
    pub(crate) size: Option<u64>,
    pub(crate) media_type: Option<String>,
    pub(crate) diff_id: Digest,
}

impl PlannedLayer {
    pub(crate) fn shown(&self) -> String {
        match &self.digest {
            Some(d) => d.to_string(),
            None => format!("{} ({})", self.name, self.diff_id),
        }
    }

    pub(crate) fn descriptor(&self, digest: Digest, size: u64) -> Descriptor {
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
pub(crate) enum Source {
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
    pub(crate) fn load(store: &Store, archive: &Path, progress: &dyn Progress) -> Result<Source> {
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
    pub(crate) fn member(&self, name: &str) -> Result<Option<(Box<dyn Read>, u64)>> {
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
    pub(crate) fn plan(&self) -> Result<Vec<Plan>> {
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

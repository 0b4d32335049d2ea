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
use std::io::Write;
use std::path::Path;

use crate::archive::{PlannedLayer, Source};
use crate::digest::{Digest, HashReader};
use crate::error::{Error, IoContext, Result};
use crate::spec::{self, Descriptor, Manifest};
use crate::stage::{Staged, blob_error, known_layer, unpack_blob};
use crate::store::{ImageRecord, LayerRef, Store, WhiteoutFormat};
use crate::{Progress, StepReader};

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
    let mut staged = Staged::default();
    let r = import_staged(store, archive, whiteouts, progress, &mut staged);
    if r.is_err() {
        store.remove_own_tmp();
    }
    r
}

fn import_staged(
    store: &Store,
    archive: &Path,
    whiteouts: WhiteoutFormat,
    progress: &dyn Progress,
    staged: &mut Staged,
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
                staged.add(tmp, store.blob_path(&digest));
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
    staged.publish()?;
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
    staged: &mut Staged,
    done: &mut HashMap<String, ()>,
) -> Result<(Descriptor, bool)> {
    let layer_known =
        known_layer(store, &l.diff_id, whiteouts)? || done.contains_key(l.diff_id.as_str());
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
    // The blob is copied and checked before a byte of it is parsed.
    let blob_tmp = store.tmp_path("blob");
    let (blob_digest, count) = {
        let step = progress.step(what, Some(size), true);
        let mut r = HashReader::new(
            StepReader {
                inner: reader,
                step: &*step,
            },
            l.size,
        );
        let mut out = std::io::BufWriter::new(File::create(&blob_tmp).at(&blob_tmp)?);
        std::io::copy(&mut r, &mut out).map_err(|e| blob_error(&l.shown(), e))?;
        out.flush().at(&blob_tmp)?;
        r.finish()
    };
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
    let u = unpack_blob(
        store,
        &blob_tmp,
        &l.diff_id,
        layer_known,
        whiteouts,
        &l.shown(),
        &crate::Quiet,
        staged,
    )?;
    done.insert(l.diff_id.to_string(), ());
    done.insert(blob_digest.to_string(), ());
    staged.add(blob_tmp, store.blob_path(&blob_digest));
    let mut desc = l.descriptor(blob_digest, count);
    if l.media_type.is_none() {
        desc.media_type = spec::layer_media_type(u.compression).into();
    }
    Ok((desc, u.fresh))
}

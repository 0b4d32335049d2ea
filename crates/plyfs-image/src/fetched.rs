//! Adding an image whose documents and blobs were fetched elsewhere (by
//! plyfs-registry, from a registry) and checked there: the manifest and
//! configuration as received, each layer blob in a file. Everything is
//! checked again here as it is read — the manifest's and configuration's
//! digests, each blob's digest and size, each layer's diff-id — then
//! staged and renamed into place as an import is, so the store takes
//! nothing it has not verified itself and a failure leaves it as it was.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::Progress;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::import::Imported;
use crate::spec::{self, Descriptor, Manifest};
use crate::stage::{Staged, known_layer, unpack_blob};
use crate::store::{ImageRecord, LayerRef, Store, WhiteoutFormat, normalize_name};

/// An image as fetched.
pub struct FetchedImage {
    /// The names it gets in the store (`host[:port]/repo:tag`).
    pub names: Vec<String>,
    /// The manifest, byte for byte as the registry served it (its digest
    /// is the image's digest, and a push sends these same bytes).
    pub manifest: Vec<u8>,
    pub manifest_media_type: String,
    pub config: Vec<u8>,
    /// Layer blobs fetched into files (the store's `downloads/`), by
    /// digest; a layer whose blob the store has needs none.
    pub blobs: HashMap<Digest, PathBuf>,
}

/// The manifest of a fetched image, checked against itself: what a
/// puller reads to know which blobs to fetch.
pub struct Planned {
    pub manifest: Manifest,
    pub config_digest: Digest,
    pub layers: Vec<(Descriptor, Digest)>,
}

/// Parses a manifest (OCI or docker v2) and its configuration's diff-ids.
pub fn plan(manifest: &[u8], config: Option<&[u8]>) -> Result<Planned> {
    let bad = |what: String| Error::Blob {
        digest: Digest::of(manifest).to_string(),
        what,
    };
    let m: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| bad(format!("manifest does not read: {e}")))?;
    if m.schema_version != 2 {
        return Err(bad(format!(
            "manifest schema version {} (only 2 is read)",
            m.schema_version
        )));
    }
    let config_digest = Digest::parse(&m.config.digest)?;
    let mut layers = Vec::new();
    if let Some(config) = config {
        check(&m.config, config)?;
        let v: serde_json::Value = serde_json::from_slice(config).map_err(|e| Error::Blob {
            digest: config_digest.to_string(),
            what: format!("configuration does not read: {e}"),
        })?;
        let ids = spec::diff_ids(&v).ok_or_else(|| Error::Blob {
            digest: config_digest.to_string(),
            what: "the image configuration has no rootfs.diff_ids".into(),
        })?;
        if ids.len() != m.layers.len() {
            return Err(bad(format!(
                "the manifest names {} layers, the configuration {}",
                m.layers.len(),
                ids.len()
            )));
        }
        for (d, id) in m.layers.iter().zip(ids) {
            Digest::parse(&d.digest)?;
            layers.push((d.clone(), Digest::parse(&id)?));
        }
    }
    Ok(Planned {
        manifest: m,
        config_digest,
        layers,
    })
}

/// A small document against its descriptor.
pub fn check(desc: &Descriptor, data: &[u8]) -> Result<()> {
    let want = Digest::parse(&desc.digest)?;
    let got = Digest::of(data);
    if got != want {
        return Err(Error::Blob {
            digest: want.to_string(),
            what: format!("digest mismatch: received {got}"),
        });
    }
    if data.len() as u64 != desc.size {
        return Err(Error::Blob {
            digest: want.to_string(),
            what: format!("{} bytes where the manifest says {}", data.len(), desc.size),
        });
    }
    Ok(())
}

/// Adds `image` to `store` (which the caller has locked exclusively):
/// blobs moved in, layers the store lacks unpacked once each.
pub fn add_fetched(
    store: &Store,
    image: FetchedImage,
    whiteouts: WhiteoutFormat,
    progress: &dyn Progress,
) -> Result<Imported> {
    let mut staged = Staged::default();
    let downloads: Vec<PathBuf> = image.blobs.values().cloned().collect();
    let r = add_staged(store, image, whiteouts, progress, &mut staged);
    match &r {
        // Only now that the store has the blobs do their download names
        // go: a second pull waiting on a download's lock then finds the
        // blob in the store, never a fresh empty download to fetch again.
        Ok(_) => {
            for d in downloads {
                let _ = std::fs::remove_file(d);
            }
        }
        Err(_) => store.remove_own_tmp(),
    }
    r
}

fn add_staged(
    store: &Store,
    image: FetchedImage,
    whiteouts: WhiteoutFormat,
    progress: &dyn Progress,
    staged: &mut Staged,
) -> Result<Imported> {
    let plan = plan(&image.manifest, Some(&image.config))?;
    let mut out = Imported {
        images: Vec::new(),
        layers_unpacked: 0,
        layers_shared: 0,
    };
    let mut done = HashSet::new();
    let n = plan.layers.len();
    for (i, (desc, diff_id)) in plan.layers.iter().enumerate() {
        let digest = Digest::parse(&desc.digest)?;
        let known = known_layer(store, diff_id, whiteouts)? || done.contains(diff_id);
        let fetched = image.blobs.get(&digest);
        if known && (store.has_blob(&digest) || done.contains(&digest)) {
            out.layers_shared += 1;
            continue;
        }
        // A blob the store has is read from there (and checked again).
        let file = match fetched {
            Some(f) => f.clone(),
            None if store.has_blob(&digest) => store.blob_path(&digest),
            None => {
                return Err(Error::Blob {
                    digest: digest.to_string(),
                    what: "neither fetched nor in the store".into(),
                });
            }
        };
        let step = progress.step(
            &format!("unpacking {}/{n} {}", i + 1, diff_id.short()),
            Some(desc.size),
            true,
        );
        let u = unpack_blob(
            store,
            &file,
            diff_id,
            known,
            whiteouts,
            digest.as_str(),
            &*step,
            staged,
        )?;
        if u.digest != digest || u.size != desc.size {
            return Err(Error::Blob {
                digest: digest.to_string(),
                what: format!(
                    "digest mismatch: received {} ({} bytes, the manifest says {})",
                    u.digest, u.size, desc.size
                ),
            });
        }
        if u.fresh {
            out.layers_unpacked += 1;
        } else {
            out.layers_shared += 1;
        }
        if fetched.is_some() && !store.has_blob(&digest) {
            let tmp = store.tmp_path("blob");
            std::fs::hard_link(&file, &tmp).map_err(|source| Error::Io {
                path: file.clone(),
                source,
            })?;
            staged.add(tmp, store.blob_path(&digest));
        }
        done.insert(diff_id.clone());
        done.insert(digest);
    }
    let manifest_digest = Digest::of(&image.manifest);
    for (bytes, digest) in [
        (&image.config, plan.config_digest.clone()),
        (&image.manifest, manifest_digest.clone()),
    ] {
        if !store.has_blob(&digest) {
            let tmp = store.tmp_path("blob");
            crate::store::write_synced(&tmp, bytes)?;
            staged.add(tmp, store.blob_path(&digest));
        }
    }
    staged.publish()?;
    let created = serde_json::from_slice::<serde_json::Value>(&image.config)
        .ok()
        .and_then(|v| v.get("created")?.as_str().map(str::to_string));
    let names: Vec<String> = image.names.iter().map(|n| normalize_name(n)).collect();
    store.add_image(ImageRecord {
        names: names.clone(),
        manifest: Descriptor {
            media_type: image.manifest_media_type,
            digest: manifest_digest.to_string(),
            size: image.manifest.len() as u64,
            annotations: Default::default(),
        },
        config: plan.config_digest.to_string(),
        layers: plan
            .layers
            .iter()
            .map(|(d, id)| LayerRef {
                diff_id: id.to_string(),
                blob: d.clone(),
            })
            .collect(),
        created,
    })?;
    out.images.push((names, plan.config_digest));
    Ok(out)
}

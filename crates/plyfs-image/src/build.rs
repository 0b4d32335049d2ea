//! A new image made of another image's layers and one more (what
//! `commit --image NAME --tag NEW` adds, as `docker commit` does): the
//! layer blob stored and unpacked, the configuration extended (its
//! diff-ids, a history entry, the creation time), a new manifest.

use std::path::Path;

use crate::commit::Layer;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::spec::{self, Descriptor, Manifest};
use crate::stage::{Staged, known_layer, unpack_blob};
use crate::store::{ImageRecord, LayerRef, Store, WhiteoutFormat, normalize_name};

/// Adds image `tag`: `base`'s layers (none without a base) and `layer`,
/// whose blob is the file `blob` (moved into the store). The caller holds
/// the store's exclusive lock. Returns the new image's id.
pub fn add_committed_image(
    store: &Store,
    base: Option<&ImageRecord>,
    blob: &Path,
    layer: &Layer,
    tag: &str,
) -> Result<Digest> {
    let whiteouts = base
        .and_then(|b| b.layers.first())
        .and_then(|l| Digest::parse(&l.diff_id).ok())
        .and_then(|d| store.layer_info(&d))
        .map_or(WhiteoutFormat::Oci, |i| i.whiteouts);
    let blob_tmp = store.tmp_path("blob");
    std::fs::copy(blob, &blob_tmp).at(&blob_tmp)?;
    let mut staged = Staged::default();
    let known = known_layer(store, &layer.diff_id, whiteouts)?;
    let u = unpack_blob(
        store,
        &blob_tmp,
        &layer.diff_id,
        known,
        whiteouts,
        layer.digest.as_str(),
        &crate::Quiet,
        &mut staged,
    )?;
    if u.digest != layer.digest {
        return Err(Error::Blob {
            digest: layer.digest.to_string(),
            what: format!("changed while it was stored (now {})", u.digest),
        });
    }
    staged.add(blob_tmp, store.blob_path(&layer.digest));

    let mut config: serde_json::Value = match base {
        Some(b) => {
            let raw = store.read_blob(&b.id()?)?;
            serde_json::from_slice(&raw).map_err(|e| Error::Store {
                path: store.root().to_path_buf(),
                what: format!("the configuration of {} does not read: {e}", b.config),
            })?
        }
        None => serde_json::json!({
            "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
        }),
    };
    let now = rfc3339(std::time::SystemTime::now());
    extend_config(&mut config, &layer.diff_id, &now).ok_or_else(|| Error::Store {
        path: store.root().to_path_buf(),
        what: "the base image's configuration has no rootfs.diff_ids".into(),
    })?;
    let config_raw = serde_json::to_vec(&config).map_err(|e| Error::Usage(e.to_string()))?;
    let config_digest = Digest::of(&config_raw);
    let mut layers: Vec<LayerRef> = base.map(|b| b.layers.clone()).unwrap_or_default();
    layers.push(LayerRef {
        diff_id: layer.diff_id.to_string(),
        blob: Descriptor {
            media_type: spec::layer_media_type(layer.compression).into(),
            digest: layer.digest.to_string(),
            size: layer.size,
            annotations: Default::default(),
        },
    });
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(spec::OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: spec::OCI_CONFIG.into(),
            digest: config_digest.to_string(),
            size: config_raw.len() as u64,
            annotations: Default::default(),
        },
        layers: layers.iter().map(|l| l.blob.clone()).collect(),
    };
    let manifest_raw = serde_json::to_vec(&manifest).map_err(|e| Error::Usage(e.to_string()))?;
    let manifest_digest = Digest::of(&manifest_raw);
    staged.publish()?;
    store.put_blob(&config_digest, &config_raw)?;
    store.put_blob(&manifest_digest, &manifest_raw)?;
    store.add_image(ImageRecord {
        names: vec![normalize_name(tag)],
        manifest: Descriptor {
            media_type: spec::OCI_MANIFEST.into(),
            digest: manifest_digest.to_string(),
            size: manifest_raw.len() as u64,
            annotations: Default::default(),
        },
        config: config_digest.to_string(),
        layers,
        created: Some(now),
    })?;
    Ok(config_digest)
}

/// Adds the layer, a history entry and the time to a configuration.
fn extend_config(config: &mut serde_json::Value, diff_id: &Digest, now: &str) -> Option<()> {
    let obj = config.as_object_mut()?;
    obj.insert("created".into(), now.into());
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    rootfs
        .get_mut("diff_ids")?
        .as_array_mut()?
        .push(diff_id.to_string().into());
    let history = obj
        .entry("history")
        .or_insert_with(|| serde_json::json!([]));
    history.as_array_mut()?.push(serde_json::json!({
        "created": now,
        "created_by": "plyfs commit",
    }));
    Some(())
}

/// A time as RFC 3339 in UTC, as image configurations record it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let t = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_700_000_000)), "2023-11-14T22:13:20Z");
    }
}

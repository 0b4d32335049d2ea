//! Staging: everything a change adds is built under the store's `tmp/`
//! and renamed into place only once all of it checked out, so a refused
//! archive, a blob that does not match its digest or a command that dies
//! leaves the store as it was. Used by import, commit and pulled images
//! alike: one copy of the rules for putting a layer into the store.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashReader};
use crate::error::{Error, IoContext, Result};
use crate::store::{LayerInfo, Store, WhiteoutFormat};
use crate::unpack::{UnpackOptions, unpack};
use crate::{Compression, Step, StepReader};

/// Files and trees under `tmp/` and where each goes once all is checked.
#[derive(Default)]
pub(crate) struct Staged {
    moves: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    pub(crate) fn add(&mut self, tmp: PathBuf, dst: PathBuf) {
        self.moves.push((tmp, dst));
    }

    /// Renames everything into place; what is there already (the same
    /// content, by its digest) stays and the staged copy goes.
    pub(crate) fn publish(&mut self) -> Result<()> {
        for (tmp, dst) in self.moves.drain(..) {
            if dst.exists() {
                crate::store::remove_any(&tmp);
            } else {
                std::fs::rename(&tmp, &dst).at(&dst)?;
            }
        }
        Ok(())
    }
}

/// What [`unpack_blob`] found.
pub(crate) struct Unpacked {
    pub(crate) compression: Compression,
    /// The compressed blob's digest and length, as read.
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    /// Whether a new layer tree was staged (false: the store had it).
    pub(crate) fresh: bool,
}

/// The blob of one layer, whose file is `blob`, read once: its digest
/// and length computed, its tree unpacked under `tmp/` (staged as layer
/// `diff_id`) unless the store has that layer, its uncompressed stream
/// checked against `diff_id` either way. `known`: the store (or this
/// change) has the layer already. `shown` names the blob in errors.
#[allow(clippy::too_many_arguments)]
pub(crate) fn unpack_blob(
    store: &Store,
    blob: &Path,
    diff_id: &Digest,
    known: bool,
    whiteouts: WhiteoutFormat,
    shown: &str,
    step: &dyn Step,
    staged: &mut Staged,
) -> Result<Unpacked> {
    let corrupt = |e: std::io::Error| blob_error(shown, e);
    let f = File::open(blob).at(blob)?;
    let mut outer = HashReader::new(StepReader { inner: f, step }, None);
    let (compression, diff_got, tree) = {
        let (c, dec) =
            Compression::decoder(BufReader::with_capacity(1 << 16, &mut outer)).map_err(corrupt)?;
        let mut diff_r = HashReader::new(dec, None);
        let mut tree = None;
        if !known {
            let layer_tmp = store.tmp_path("layer");
            let diff = layer_tmp.join("diff");
            std::fs::create_dir_all(&diff).at(&diff)?;
            staged.add(layer_tmp.clone(), store.layer_dir(diff_id));
            let opts = UnpackOptions {
                rootless: store.rootless,
                whiteouts,
            };
            let size = unpack(&mut diff_r, &diff, shown, opts)?;
            tree = Some((layer_tmp, size));
        }
        diff_r.drain().map_err(corrupt)?;
        (c, diff_r.finish().0, tree)
    };
    // What the decoder's buffer left unread still counts for the digest.
    outer.drain().map_err(corrupt)?;
    let (digest, size) = outer.finish();
    if diff_got != *diff_id {
        return Err(Error::Blob {
            digest: shown.to_string(),
            what: format!(
                "diff-id mismatch: the configuration says {diff_id}, the layer is {diff_got}"
            ),
        });
    }
    let fresh = tree.is_some();
    if let Some((layer_tmp, size)) = tree {
        let info = LayerInfo {
            diff_id: diff_id.to_string(),
            whiteouts,
            rootless: store.rootless,
            size,
        };
        let raw = serde_json::to_vec_pretty(&info).unwrap_or_default();
        crate::store::write_synced(&layer_tmp.join("layer.json"), &raw)?;
    }
    Ok(Unpacked {
        compression,
        digest,
        size,
        fresh,
    })
}

/// Whether the store has layer `diff_id`; an error when it has it in
/// another whiteout format (one tree per diff-id).
pub(crate) fn known_layer(
    store: &Store,
    diff_id: &Digest,
    whiteouts: WhiteoutFormat,
) -> Result<bool> {
    match store.layer_info(diff_id) {
        Some(info) if info.whiteouts != whiteouts => Err(Error::Store {
            path: store.root().to_path_buf(),
            what: format!(
                "layer {diff_id} is stored with {:?} whiteouts; use that format, or remove the images using it first",
                info.whiteouts
            ),
        }),
        Some(_) => Ok(true),
        None => Ok(false),
    }
}

pub(crate) fn blob_error(shown: &str, e: std::io::Error) -> Error {
    let what = if e.to_string().contains(crate::digest::OVER_LIMIT) {
        format!("layer bomb: {}", crate::digest::OVER_LIMIT)
    } else {
        format!("truncated or corrupt: {e}")
    };
    Error::Blob {
        digest: shown.to_string(),
        what,
    }
}

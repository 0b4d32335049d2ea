//! The lower index: the entries of each lower layer directory, read once,
//! and the merged listing of a union directory's lowers built from them.
//!
//! Lowers never change under a mount, so a directory read once need not be
//! read again; the records are also saved next to the work directory when
//! the mount ends, so the next mount starts warm. A record is only used
//! while its directory still has the same inode, mtime and ctime (any
//! change to its entries moves both times), and the whole file only for
//! the very same lower layers: it is rebuilt rather than trusted.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::{Errno, Result};
use crate::markers::{self, Kind};
use crate::sys::fs;

/// Bumped whenever the format or its meaning changes.
const VERSION: u32 = 1;
/// The file's name in the work directory.
pub const FILE_NAME: &str = "plyfs-lower.index";

/// What a name is in one lower directory, as stored: a `d_type`, or one
/// of these.
const KIND_WHITEOUT: u8 = 0xff;
const KIND_XWHITEOUT: u8 = 0xfe;

/// One lower directory's entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DirRecord {
    layer: u16,
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// The directory holds the OCI opaque marker.
    oci_opaque: bool,
    /// OCI whiteouts appear under the name they hide.
    entries: Vec<RecEntry>,
}

/// (name, d_type or KIND_WHITEOUT/KIND_XWHITEOUT, d_ino).
type RecEntry = (Vec<u8>, u8, u64);

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    /// (dev, ino) of each lower root, top first.
    layers: Vec<(u64, u64)>,
    dirs: Vec<DirRecord>,
}

pub struct LowerIndex {
    dirs: DashMap<(u16, u64, u64), Arc<DirRecord>>,
    /// Where the index is kept; without one, records live only as long as
    /// the directories that use them.
    file: Option<PathBuf>,
    layers: Vec<(u64, u64)>,
    dirty: AtomicBool,
}

impl std::fmt::Debug for LowerIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LowerIndex")
            .field("dirs", &self.dirs.len())
            .field("file", &self.file)
            .finish()
    }
}

impl LowerIndex {
    /// Loads the saved index, if there is one for these very layers.
    pub fn load(file: Option<PathBuf>, layers: Vec<(u64, u64)>) -> LowerIndex {
        let index = LowerIndex {
            dirs: DashMap::new(),
            file,
            layers,
            dirty: AtomicBool::new(false),
        };
        let Some(path) = &index.file else {
            return index;
        };
        let Ok(bytes) = std::fs::read(path) else {
            return index;
        };
        match postcard::from_bytes::<IndexFile>(&bytes) {
            Ok(f) if f.version == VERSION && f.layers == index.layers => {
                debug!(
                    "lower index: {} directories from {}",
                    f.dirs.len(),
                    path.display()
                );
                for d in f.dirs {
                    index.dirs.insert((d.layer, d.dev, d.ino), Arc::new(d));
                }
            }
            Ok(_) => debug!(
                "lower index at {} is for other layers: rebuilding",
                path.display()
            ),
            Err(e) => warn!(
                "lower index at {} unreadable ({e}): rebuilding",
                path.display()
            ),
        }
        index
    }

    /// Saves the index next to the work directory (atomically: a crash
    /// leaves the old file or the new one).
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let dirs: Vec<DirRecord> = self.dirs.iter().map(|r| (**r.value()).clone()).collect();
        let n = dirs.len();
        let file = IndexFile {
            version: VERSION,
            layers: self.layers.clone(),
            dirs,
        };
        let bytes = postcard::to_allocvec(&file).map_err(|_| Errno::EIO)?;
        let tmp = path.with_extension("tmp");
        {
            // Only the daemon's user may change what lookups will trust.
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
        }
        std::fs::rename(&tmp, path)?;
        debug!("lower index: {n} directories saved to {}", path.display());
        Ok(())
    }

    /// The entries of lower directory `dir` of layer `layer`.
    /// `xwhiteouts`: it is marked as holding xattr whiteouts.
    fn dir(&self, layer: u16, dir: BorrowedFd<'_>, xwhiteouts: bool) -> Result<Arc<DirRecord>> {
        let st = fs::fstat(dir)?;
        let key = (layer, st.st_dev, st.st_ino);
        let (mtime, ctime) = (
            (st.st_mtime, st.st_mtime_nsec),
            (st.st_ctime, st.st_ctime_nsec),
        );
        if let Some(r) = self.dirs.get(&key)
            && r.mtime == mtime
            && r.ctime == ctime
        {
            return Ok(r.clone());
        }
        let read = markers::read_layer_dir(dir, xwhiteouts, false)?;
        let entries = read
            .entries
            .into_iter()
            .map(|(name, kind, ino)| {
                let kind = match kind {
                    Kind::Whiteout => KIND_WHITEOUT,
                    Kind::XWhiteout => KIND_XWHITEOUT,
                    Kind::Object(t) => t,
                };
                (name.into_vec(), kind, ino)
            })
            .collect();
        let rec = Arc::new(DirRecord {
            layer,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime,
            ctime,
            oci_opaque: read.oci_opaque,
            entries,
        });
        // Whether an empty file is an xattr whiteout does not show in its
        // directory's times: such directories are always read afresh.
        if self.file.is_some() && !xwhiteouts {
            self.dirs.insert(key, rec.clone());
            self.dirty.store(true, Ordering::Relaxed);
        }
        Ok(rec)
    }

    pub fn len(&self) -> usize {
        self.dirs.len()
    }
}

/// What a name is in one lower directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Whiteout,
    Dir,
    /// Anything else, with its `d_type`.
    Other(u8),
}

/// A name found in one layer of a directory's lower stack.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hit {
    /// Position in the directory's lower stack (0 = top-most lower).
    pub pos: usize,
    pub kind: EntryKind,
    /// The real inode number (`d_ino`) in that layer.
    pub ino: u64,
}

/// Every name in a directory's lower layers, each with the layers that have
/// it, top-most first. One hash probe answers "which layers have NAME".
#[derive(Debug, Default)]
pub(crate) struct LowerListing {
    names: HashMap<OsString, Vec<Hit>>,
    /// Some lower directory holds an xattr whiteout. The kernel hides it
    /// from readdir but counts it in the emptiness check of rmdir and of
    /// rename over a directory, which fail with ENOTEMPTY.
    xwhiteouts: bool,
}

impl LowerListing {
    /// The first layer at or below stack position `from` that has `name`.
    pub fn first_hit(&self, name: &OsStr, from: usize) -> Option<Hit> {
        self.names
            .get(name)?
            .iter()
            .find(|h| h.pos >= from)
            .copied()
    }

    /// Whether stack position `pos` holds a whiteout of `name` (beside a
    /// real entry of that name, in an OCI layer that re-creates it).
    pub fn whiteout_at(&self, name: &OsStr, pos: usize) -> bool {
        self.names.get(name).is_some_and(|hits| {
            hits.iter()
                .any(|h| h.pos == pos && h.kind == EntryKind::Whiteout)
        })
    }

    /// Names visible from the lowers and what they resolve to.
    pub fn visible(&self) -> impl Iterator<Item = (&OsStr, Hit)> {
        self.names.iter().filter_map(|(n, hits)| {
            let h = *hits.first()?;
            (h.kind != EntryKind::Whiteout).then_some((n.as_os_str(), h))
        })
    }

    pub fn has_xwhiteouts(&self) -> bool {
        self.xwhiteouts
    }

    /// Merges the lower directories of a union directory, top-most first,
    /// down to the first one marked opaque in the OCI format. Each is
    /// given as (layer, directory, marked as holding xattr whiteouts).
    pub fn build<'a>(
        lowers: impl Iterator<Item = (u16, BorrowedFd<'a>, bool)>,
        index: &LowerIndex,
    ) -> Result<LowerListing> {
        let mut names: HashMap<OsString, Vec<Hit>> = HashMap::new();
        let mut xwhiteouts = false;
        for (pos, (layer, dir, marked)) in lowers.enumerate() {
            let rec = index.dir(layer, dir, marked)?;
            for (name, kind, ino) in &rec.entries {
                let kind = match *kind {
                    KIND_WHITEOUT => EntryKind::Whiteout,
                    KIND_XWHITEOUT => {
                        xwhiteouts = true;
                        EntryKind::Whiteout
                    }
                    libc::DT_DIR => EntryKind::Dir,
                    t => EntryKind::Other(t),
                };
                let hit = Hit {
                    pos,
                    kind,
                    ino: *ino,
                };
                let hits = names.entry(OsString::from_vec(name.clone())).or_default();
                // Within one layer a real entry comes before its whiteout
                // (an OCI layer may re-create what it deletes below).
                match hits.last() {
                    Some(last) if last.pos == pos && kind != EntryKind::Whiteout => {
                        hits.insert(hits.len() - 1, hit)
                    }
                    _ => hits.push(hit),
                }
            }
            if rec.oci_opaque {
                break;
            }
        }
        Ok(LowerListing { names, xwhiteouts })
    }
}

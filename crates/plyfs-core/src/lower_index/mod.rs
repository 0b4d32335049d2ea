//! The lower index: the entries of each lower layer directory, read once,
//! and the merged listing of a union directory's lowers built from them.
//!
//! Lowers never change under a mount, so a directory read once need not be
//! read again; the records are also saved next to the work directory when
//! the mount ends, so the next mount starts warm. A record is only used
//! while its directory still has the same inode, mtime and ctime (any
//! change to its entries moves both times), and the whole file only for
//! the very same lower layers: it is rebuilt rather than trusted.

mod listing;

use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

pub(crate) use listing::{EntryKind, LowerListing};

use crate::error::{Errno, Result};
use crate::markers::{self, Kind};
use crate::sys::fs;

/// Bumped whenever the format or its meaning changes.
const VERSION: u32 = 3;
/// The file's name in the work directory.
pub const FILE_NAME: &str = "plyfs-lower.index";

/// What a name is in one lower directory, as stored: a `d_type`, or one
/// of these.
const KIND_WHITEOUT: u8 = 0xff;
const KIND_XWHITEOUT: u8 = 0xfe;

/// One lower directory's entries, compactly: a cached tree holds one
/// record per lower directory, and every name of it once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DirRecord {
    layer: u16,
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// The directory holds the OCI opaque marker.
    oci_opaque: bool,
    /// Every name, one after the other.
    names: Vec<u8>,
    /// (end of the name in `names`, d_type or KIND_WHITEOUT /
    /// KIND_XWHITEOUT, d_ino); OCI whiteouts appear under the name they
    /// hide.
    entries: Vec<(u32, u8, u64)>,
}

impl DirRecord {
    /// The entries named `name` (entries are sorted by name, a real entry
    /// before a whiteout of the same name).
    fn find(&self, name: &[u8]) -> std::ops::Range<usize> {
        let n = self.entries.len();
        partition(n, |i| self.name(i) < name)..partition(n, |i| self.name(i) <= name)
    }

    /// Whether the entries are in the order [`DirRecord::find`] needs (a
    /// loaded index is checked, not trusted).
    fn is_sorted(&self) -> bool {
        (1..self.entries.len()).all(|i| self.name(i - 1) <= self.name(i))
    }

    /// The name of entry `i`.
    fn name(&self, i: usize) -> &[u8] {
        let start = match i.checked_sub(1) {
            Some(p) => self.entries.get(p).map_or(0, |e| e.0 as usize),
            None => 0,
        };
        let end = self.entries.get(i).map_or(start, |e| e.0 as usize);
        self.names.get(start..end).unwrap_or_default()
    }
}

/// The first `i` below `n` for which `pred(i)` is false (`pred` is true
/// for a prefix of `0..n`).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

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
        match decode(&bytes, &index.layers) {
            Ok(dirs) => {
                debug!(
                    "lower index: {} directories from {}",
                    dirs.len(),
                    path.display()
                );
                for d in dirs {
                    index.dirs.insert((d.layer, d.dev, d.ino), Arc::new(d));
                }
            }
            Err(Unusable::OtherLayers) => debug!(
                "lower index at {} is for other layers: rebuilding",
                path.display()
            ),
            Err(why) => warn!(
                "lower index at {} unreadable ({why}): rebuilding",
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
        let mut read = markers::read_layer_dir(dir, xwhiteouts, false)?;
        // By name, so that a name is found by bisection (most directories
        // have one lower and need no table of their own); an OCI layer's
        // real entry before its whiteout of the same name.
        read.entries.sort_by(|a, b| {
            let whiteout = |k: &Kind| !matches!(k, Kind::Object(_));
            (a.0.as_bytes(), whiteout(&a.1)).cmp(&(b.0.as_bytes(), whiteout(&b.1)))
        });
        let mut names = Vec::new();
        let mut entries = Vec::with_capacity(read.entries.len());
        for (name, kind, ino) in read.entries {
            let kind = match kind {
                Kind::Whiteout => KIND_WHITEOUT,
                Kind::XWhiteout => KIND_XWHITEOUT,
                Kind::Object(t) => t,
            };
            names.extend_from_slice(name.as_bytes());
            let end = u32::try_from(names.len()).map_err(|_| Errno::EOVERFLOW)?;
            entries.push((end, kind, ino));
        }
        names.shrink_to_fit();
        let rec = Arc::new(DirRecord {
            layer,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime,
            ctime,
            oci_opaque: read.oci_opaque,
            names,
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

/// Why a saved index is not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unusable {
    #[error("{0}")]
    Format(String),
    #[error("saved by another version")]
    Version,
    #[error("for other layers")]
    OtherLayers,
    #[error("a record that no directory read could have made")]
    Forged,
}

/// The records of a saved index for lower layers `layers`, all of them
/// checked: the file lives in the work directory, which whoever owns the
/// upper can write, so nothing in it is trusted. Its names are later
/// looked up with `*at()` calls in the lowers, so a name that is not one
/// single component (`..`, `a/b`, a NUL) would reach outside them; its
/// offsets index its own name buffer. One bad record discards the file.
pub(crate) fn decode(
    bytes: &[u8],
    layers: &[(u64, u64)],
) -> std::result::Result<Vec<DirRecord>, Unusable> {
    // postcard never allocates more than the input holds, whatever a
    // length prefix claims (serde's `cautious` preallocation).
    let f: IndexFile = postcard::from_bytes(bytes).map_err(|e| Unusable::Format(e.to_string()))?;
    if f.version != VERSION {
        return Err(Unusable::Version);
    }
    if f.layers != layers {
        return Err(Unusable::OtherLayers);
    }
    if !f.dirs.iter().all(|d| d.is_sound(layers.len())) {
        return Err(Unusable::Forged);
    }
    Ok(f.dirs)
}

/// A saved index of two small directories of a two-layer stack, as a
/// mount writes it (a seed for the fuzz target).
#[cfg(feature = "fuzzing")]
pub(crate) fn sample() -> Vec<u8> {
    let rec = |layer, names: &[(&str, u8)]| {
        let mut buf = Vec::new();
        let mut entries = Vec::new();
        for (i, (n, kind)) in names.iter().enumerate() {
            buf.extend_from_slice(n.as_bytes());
            entries.push((buf.len() as u32, *kind, 100 + i as u64));
        }
        DirRecord {
            layer,
            dev: 2049,
            ino: 7,
            mtime: (1, 2),
            ctime: (3, 4),
            oci_opaque: false,
            names: buf,
            entries,
        }
    };
    let file = IndexFile {
        version: VERSION,
        layers: vec![(2049, 5), (2049, 6)],
        dirs: vec![
            rec(
                0,
                &[
                    ("a", libc::DT_DIR),
                    ("f", libc::DT_REG),
                    ("w", KIND_WHITEOUT),
                ],
            ),
            rec(
                1,
                &[
                    ("a", libc::DT_DIR),
                    ("w", libc::DT_LNK),
                    ("x", KIND_XWHITEOUT),
                ],
            ),
        ],
    };
    postcard::to_allocvec(&file).unwrap_or_default()
}

impl DirRecord {
    /// Whether this record could come from reading a directory of one of
    /// `nlayers` layers: every name one component, every offset inside
    /// the name buffer and after the one before, every kind known.
    fn is_sound(&self, nlayers: usize) -> bool {
        // Layer numbers count the upper, when there is one, as 0: the
        // lowers are 0..n or 1..=n.
        if usize::from(self.layer) > nlayers {
            return false;
        }
        let mut start = 0usize;
        for &(end, kind, _) in &self.entries {
            let end = end as usize;
            let Some(name) = self.names.get(start..end) else {
                return false;
            };
            if !crate::util::is_component(name) {
                return false;
            }
            let known = matches!(
                kind,
                KIND_WHITEOUT
                    | KIND_XWHITEOUT
                    | libc::DT_UNKNOWN
                    | libc::DT_FIFO
                    | libc::DT_CHR
                    | libc::DT_DIR
                    | libc::DT_BLK
                    | libc::DT_REG
                    | libc::DT_LNK
                    | libc::DT_SOCK
            );
            if !known {
                return false;
            }
            start = end;
        }
        start == self.names.len() && self.is_sorted()
    }
}

//! The lower index: the entries of each lower layer directory, read once.
//!
//! Lowers never change under a mount, so a directory read once need not be
//! read again; the records are also saved next to the work directory when
//! the mount ends, so the next mount starts warm. A record is only used
//! while its directory still has the same inode, mtime and ctime (any
//! change to its entries moves both times), and the whole file only for
//! the very same lower layers: it is rebuilt rather than trusted.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::error::{Errno, Result};
use crate::markers;
use crate::namei::is_xwhiteout;
use crate::sys::fs;

/// Bumped whenever the format or its meaning changes.
const VERSION: u32 = 1;
/// The file's name in the work directory.
pub const FILE_NAME: &str = "plyfs-lower.index";

/// What a name is in one lower directory, as stored.
pub const KIND_WHITEOUT: u8 = 0xff;
/// A whiteout made of a regular file with the `overlay.whiteout` xattr.
pub const KIND_XWHITEOUT: u8 = 0xfe;

/// One lower directory's entries.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirRecord {
    layer: u16,
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// The directory holds the OCI opaque marker.
    pub oci_opaque: bool,
    /// OCI whiteouts appear under the name they hide.
    pub entries: Vec<RecEntry>,
}

/// (name, d_type or KIND_WHITEOUT/KIND_XWHITEOUT, d_ino).
pub type RecEntry = (Vec<u8>, u8, u64);

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
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, path)?;
        debug!("lower index: {n} directories saved to {}", path.display());
        Ok(())
    }

    /// The entries of lower directory `dir` of layer `layer`.
    /// `xwhiteouts`: it is marked as holding xattr whiteouts.
    pub fn dir(&self, layer: u16, dir: BorrowedFd<'_>, xwhiteouts: bool) -> Result<Arc<DirRecord>> {
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
        let (entries, oci_opaque) = read_layer_dir(dir, xwhiteouts)?;
        let rec = Arc::new(DirRecord {
            layer,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime,
            ctime,
            oci_opaque,
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

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }
}

/// Reads one lower directory: every entry with what it is, markers turned
/// into the names they hide.
fn read_layer_dir(dir: BorrowedFd<'_>, xwh: bool) -> Result<(Vec<RecEntry>, bool)> {
    let mut out = Vec::new();
    let mut oci_opaque = false;
    // Entries whose kind d_type alone does not tell.
    let mut unsure: Vec<(OsString, u64)> = Vec::new();
    fs::read_dir(dir.as_fd(), |e| {
        if e.name == markers::OCI_OPAQUE {
            oci_opaque = true;
        } else if let Some(target) = markers::oci_whiteout_target(e.name) {
            out.push((target.as_bytes().to_vec(), KIND_WHITEOUT, 0));
        } else if e.dtype == libc::DT_CHR
            || e.dtype == libc::DT_UNKNOWN
            || (e.dtype == libc::DT_REG && xwh)
        {
            unsure.push((e.name.to_os_string(), e.ino));
        } else {
            out.push((e.name.as_bytes().to_vec(), e.dtype, e.ino));
        }
    })?;
    for (name, ino) in unsure {
        let st = match fs::fstatat(dir, &name) {
            Ok(st) => st,
            Err(e) if e == Errno::ENOENT => continue,
            Err(e) => return Err(e),
        };
        let kind = if markers::is_whiteout(&st) {
            KIND_WHITEOUT
        } else if xwh && is_xwhiteout(dir, OsStr::new(&name), &st)? {
            KIND_XWHITEOUT
        } else {
            crate::readdir::dtype_of(st.st_mode)
        };
        out.push((name.as_bytes().to_vec(), kind, ino));
    }
    Ok((out, oci_opaque))
}

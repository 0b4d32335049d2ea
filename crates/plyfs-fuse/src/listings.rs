//! Directory listings as the kernel reads them: a stream of entries with
//! offsets, the same for readdir and readdirplus. A listing is made at the
//! start of a stream (offset 0) and kept until its end, so that a
//! directory changed in between is read consistently.

use std::sync::Arc;

use dashmap::DashMap;
use plyfs_core::{DirEntry, Errno, Overlay};

pub(crate) struct Listings {
    /// Listings being read, by directory.
    dirs: DashMap<u64, Arc<Vec<DirEntry>>>,
}

impl Listings {
    pub(crate) fn new() -> Listings {
        Listings {
            dirs: DashMap::new(),
        }
    }

    /// Hands the entries of directory `ino` from `offset` on to `add`,
    /// with the offset of the entry after each, until `add` says the
    /// reply is full.
    pub(crate) fn stream(
        &self,
        ov: &Overlay,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry) -> Full,
    ) -> Result<(), Errno> {
        let entries = self.listing(ov, ino, offset)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= entries.len() {
            self.dirs.remove(&ino);
        }
        for (i, e) in entries.iter().enumerate().skip(start) {
            if add((i + 1) as u64, e) == Full::Yes {
                break;
            }
        }
        Ok(())
    }

    fn listing(&self, ov: &Overlay, ino: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        if offset != 0
            && let Some(l) = self.dirs.get(&ino)
        {
            return Ok(l.clone());
        }
        let l = Arc::new(ov.read_dir(ino)?);
        self.dirs.insert(ino, l.clone());
        Ok(l)
    }
}

/// Whether a directory reply can take no more entries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Yes,
    No,
}

impl From<bool> for Full {
    fn from(full: bool) -> Full {
        if full { Full::Yes } else { Full::No }
    }
}

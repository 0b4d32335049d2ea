//! Directory listings as the kernel reads them: a stream of entries with
//! offsets, the same for readdir and readdirplus.
//!
//! An entry's offset is a hash of its name, and a listing is ordered by
//! it, as ext4 orders its hashed directories: where a stream goes on from
//! an offset does not depend on which listing it is read from. Opendir
//! sends no message (the kernel caches listings itself), so several
//! streams of one directory — two `ls` at once, a `find` beside an
//! `rm -r` — cannot each keep a listing of their own; with positions
//! counted in one listing, a stream that went on in another listing made
//! after a change listed names twice and skipped others. With hashed
//! offsets every name present throughout is listed exactly once,
//! whichever listing each part comes from.

use std::ffi::OsStr;
use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use dashmap::DashMap;
use plyfs_core::{DirEntry, Errno, Overlay};

/// A listing: entries with their offsets, in offset order.
type Listing = Arc<Vec<(u64, DirEntry)>>;

pub(crate) struct Listings {
    /// The latest listing of each directory being read.
    dirs: DashMap<u64, Listing>,
}

impl Listings {
    pub(crate) fn new() -> Listings {
        Listings {
            dirs: DashMap::new(),
        }
    }

    /// Hands the entries of directory `ino` after `offset` to `add`, with
    /// each one's offset, until `add` says the reply is full.
    pub(crate) fn stream(
        &self,
        ov: &Overlay,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry) -> Full,
    ) -> Result<(), Errno> {
        let entries = self.listing(ov, ino, offset)?;
        let start = entries.partition_point(|(o, _)| *o <= offset);
        if start >= entries.len() {
            self.dirs.remove(&ino);
        }
        for (o, e) in &entries[start..] {
            if add(*o, e) == Full::Yes {
                break;
            }
        }
        Ok(())
    }

    /// A fresh listing at the start of a stream; the latest one for the
    /// rest (any listing will do, see above).
    fn listing(&self, ov: &Overlay, ino: u64, offset: u64) -> Result<Listing, Errno> {
        if offset != 0
            && let Some(l) = self.dirs.get(&ino)
        {
            return Ok(l.clone());
        }
        let mut l: Vec<(u64, DirEntry)> = ov
            .read_dir(ino)?
            .into_iter()
            .map(|e| (offset_of(&e.name), e))
            .collect();
        l.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
        // Two names of one hash (about one directory in 10⁹ of 100,000
        // names) get neighbouring offsets, so that no offset is ambiguous
        // within a listing.
        for i in 1..l.len() {
            if l[i].0 <= l[i - 1].0 {
                l[i].0 = l[i - 1].0 + 1;
            }
        }
        let l = Arc::new(l);
        self.dirs.insert(ino, l.clone());
        Ok(l)
    }
}

/// `.` and `..` come first (1 and 2); a name's offset is its hash, above
/// those and within the kernel's signed 64-bit offsets. The hasher
/// (SipHash with fixed keys) gives the same value for the life of the
/// process, which is all a stream needs.
fn offset_of(name: &OsStr) -> u64 {
    match name.as_bytes() {
        b"." => 1,
        b".." => 2,
        b => {
            let mut h = std::hash::DefaultHasher::new();
            h.write(b);
            (h.finish() >> 1).max(3)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(offset_of(OsStr::new(".")), 1);
        assert_eq!(offset_of(OsStr::new("..")), 2);
        let a = offset_of(OsStr::new("a"));
        assert!(a >= 3 && a <= i64::MAX as u64);
        assert_eq!(a, offset_of(OsStr::new("a")));
        assert_ne!(a, offset_of(OsStr::new("b")));
    }
}

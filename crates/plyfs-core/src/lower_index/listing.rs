//! The merged listing of a union directory's lowers: every name with the
//! layers that have it, top-most first, so that one hash probe answers
//! "which layers have NAME" however deep the stack is.
//!
//! A cached tree holds one listing per directory and so one slot per lower
//! name: the names themselves stay in the layers' records (shared with the
//! lower index), and a name found in one layer only — nearly all of them —
//! keeps its one hit inline.

use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{DirRecord, KIND_WHITEOUT, KIND_XWHITEOUT, LowerIndex};
use crate::error::Result;

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

/// A hit as kept: entry `idx` of the record at stack position `pos` (a
/// layer index fits in 16 bits); its kind and inode number are read from
/// the record, not copied.
#[derive(Clone, Copy, Debug)]
struct Kept {
    pos: u16,
    idx: u32,
}

/// One name's hits, top-most first; the first also spells the name. Two
/// words: nearly every name is in one layer only and keeps its hit inline
/// (a boxed `Vec` is one word where a boxed slice would be two).
#[derive(Debug)]
enum Slot {
    One(Kept),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Kept>>),
}

impl Slot {
    fn hits(&self) -> &[Kept] {
        match self {
            Slot::One(h) => std::slice::from_ref(h),
            Slot::Many(v) => v,
        }
    }
}

fn entry_kind(kind: u8) -> EntryKind {
    match kind {
        KIND_WHITEOUT | KIND_XWHITEOUT => EntryKind::Whiteout,
        libc::DT_DIR => EntryKind::Dir,
        t => EntryKind::Other(t),
    }
}

/// Above this many lower directories a listing merges them into one table
/// (a lookup is one probe however deep the stack); up to it, each layer's
/// sorted record is bisected in turn and no memory per name is spent.
const MERGE_ABOVE: usize = 4;

/// Every name in a directory's lower layers, each with the layers that have
/// it, top-most first.
#[derive(Debug, Default)]
pub(crate) struct LowerListing {
    /// The layers' records, by stack position.
    records: Vec<Arc<DirRecord>>,
    /// Deep stacks only: every name with its hits.
    table: Option<HashTable<Slot>>,
    hasher: DefaultHashBuilder,
    /// Some lower directory holds an xattr whiteout. The kernel hides it
    /// from readdir but counts it in the emptiness check of rmdir and of
    /// rename over a directory, which fail with ENOTEMPTY.
    xwhiteouts: bool,
}

impl LowerListing {
    fn name_at(records: &[Arc<DirRecord>], k: Kept) -> &[u8] {
        records
            .get(usize::from(k.pos))
            .map_or(&[][..], |r| r.name(k.idx as usize))
    }

    fn name_of<'a>(records: &'a [Arc<DirRecord>], slot: &Slot) -> &'a [u8] {
        slot.hits()
            .first()
            .map_or(&[][..], |&k| Self::name_at(records, k))
    }

    fn hit(&self, k: Kept) -> Hit {
        let (kind, ino) = self
            .records
            .get(usize::from(k.pos))
            .and_then(|r| r.entries.get(k.idx as usize))
            .map_or((EntryKind::Whiteout, 0), |e| (entry_kind(e.1), e.2));
        Hit {
            pos: usize::from(k.pos),
            kind,
            ino,
        }
    }

    /// The merged table's hits of `name` (deep stacks).
    fn table_hits<'a>(&'a self, table: &'a HashTable<Slot>, name: &[u8]) -> &'a [Kept] {
        table
            .find(self.hasher.hash_one(name), |s| {
                Self::name_of(&self.records, s) == name
            })
            .map_or(&[][..], Slot::hits)
    }

    /// The hits of `name` in the records at stack positions `from..below`.
    fn bisect<'a>(
        &'a self,
        name: &'a [u8],
        from: usize,
        below: usize,
    ) -> impl Iterator<Item = Hit> + 'a {
        self.records
            .iter()
            .enumerate()
            .take(below)
            .skip(from)
            .flat_map(move |(pos, r)| {
                r.find(name).map(move |idx| Kept {
                    pos: u16::try_from(pos).unwrap_or(u16::MAX),
                    idx: idx as u32,
                })
            })
            .map(|k| self.hit(k))
    }

    /// The first layer at or below stack position `from` that has `name`.
    pub fn first_hit(&self, name: &OsStr, from: usize) -> Option<Hit> {
        let name = name.as_bytes();
        match &self.table {
            Some(t) => self
                .table_hits(t, name)
                .iter()
                .map(|&k| self.hit(k))
                .find(|h| h.pos >= from),
            None => self.bisect(name, from, self.records.len()).next(),
        }
    }

    /// Whether stack position `pos` holds a whiteout of `name` (beside a
    /// real entry of that name, in an OCI layer that re-creates it).
    pub fn whiteout_at(&self, name: &OsStr, pos: usize) -> bool {
        let name = name.as_bytes();
        let whiteout = |h: Hit| h.pos == pos && h.kind == EntryKind::Whiteout;
        match &self.table {
            Some(t) => self
                .table_hits(t, name)
                .iter()
                .any(|&k| whiteout(self.hit(k))),
            None => self.bisect(name, pos, pos + 1).any(whiteout),
        }
    }

    /// Names visible from the lowers and what they resolve to.
    pub fn visible(&self) -> Box<dyn Iterator<Item = (&OsStr, Hit)> + '_> {
        if let Some(table) = &self.table {
            return Box::new(table.iter().filter_map(|s| {
                let h = self.hit(*s.hits().first()?);
                (h.kind != EntryKind::Whiteout)
                    .then(|| (OsStr::from_bytes(Self::name_of(&self.records, s)), h))
            }));
        }
        // A name counts where it is first found: in the top-most record
        // that has it, at its first entry there.
        Box::new(self.records.iter().enumerate().flat_map(move |(pos, r)| {
            (0..r.entries.len()).filter_map(move |i| {
                let name = r.name(i);
                if i > 0 && r.name(i - 1) == name {
                    return None;
                }
                if self.bisect(name, 0, pos).next().is_some() {
                    return None;
                }
                let h = self.hit(Kept {
                    pos: u16::try_from(pos).unwrap_or(u16::MAX),
                    idx: i as u32,
                });
                (h.kind != EntryKind::Whiteout).then(|| (OsStr::from_bytes(name), h))
            })
        }))
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
        let mut records: Vec<Arc<DirRecord>> = Vec::new();
        for (layer, dir, marked) in lowers {
            let rec = index.dir(layer, dir, marked)?;
            let opaque = rec.oci_opaque;
            records.push(rec);
            if opaque {
                break;
            }
        }
        Ok(Self::from_records(records))
    }

    /// The listing of lower directories whose records are `records`, top
    /// first (none below an OCI-opaque one).
    pub(crate) fn from_records(records: Vec<Arc<DirRecord>>) -> LowerListing {
        let xwhiteouts = records
            .iter()
            .any(|r| r.entries.iter().any(|e| e.1 == KIND_XWHITEOUT));
        let hasher = DefaultHashBuilder::default();
        let table = (records.len() > MERGE_ABOVE).then(|| Self::merge(&records, &hasher));
        LowerListing {
            records,
            table,
            hasher,
            xwhiteouts,
        }
    }

    /// One table of every name of `records` with its hits (records sort
    /// a real entry before a whiteout of the same name, so within a layer
    /// the hits keep that order).
    fn merge(records: &[Arc<DirRecord>], hasher: &DefaultHashBuilder) -> HashTable<Slot> {
        let mut table: HashTable<Slot> = HashTable::new();
        for (pos, rec) in records.iter().enumerate() {
            let pos16 = u16::try_from(pos).unwrap_or(u16::MAX);
            for i in 0..rec.entries.len() {
                let hit = Kept {
                    pos: pos16,
                    idx: i as u32,
                };
                let name = rec.name(i);
                let hash = hasher.hash_one(name);
                match table.find_mut(hash, |s| Self::name_of(records, s) == name) {
                    Some(slot) => {
                        let mut hits = slot.hits().to_vec();
                        hits.push(hit);
                        *slot = Slot::Many(Box::new(hits));
                    }
                    None => {
                        table.insert_unique(hash, Slot::One(hit), |s| {
                            hasher.hash_one(Self::name_of(records, s))
                        });
                    }
                }
            }
        }
        table.shrink_to_fit(|s| hasher.hash_one(Self::name_of(records, s)));
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lower_index::DirRecord;

    /// A sorted record of (name, kind) as `LowerIndex::dir` makes one.
    fn record(layer: u16, mut entries: Vec<(&str, u8)>) -> Arc<DirRecord> {
        entries.sort_by_key(|&(n, k)| (n.as_bytes().to_vec(), k >= KIND_XWHITEOUT));
        let mut names = Vec::new();
        let mut out = Vec::new();
        for (i, (n, k)) in entries.into_iter().enumerate() {
            names.extend_from_slice(n.as_bytes());
            out.push((names.len() as u32, k, 100 * u64::from(layer) + i as u64));
        }
        Arc::new(DirRecord {
            layer,
            dev: 1,
            ino: u64::from(layer),
            mtime: (0, 0),
            ctime: (0, 0),
            oci_opaque: false,
            names,
            entries: out,
        })
    }

    fn listing(records: Vec<Arc<DirRecord>>, merged: bool) -> LowerListing {
        let hasher = DefaultHashBuilder::default();
        let table = merged.then(|| LowerListing::merge(&records, &hasher));
        LowerListing {
            records,
            table,
            hasher,
            xwhiteouts: false,
        }
    }

    /// Bisecting the records answers exactly as the merged table does.
    #[test]
    fn bisection_and_table_agree() {
        const DT_REG: u8 = libc::DT_REG;
        const DT_DIR: u8 = libc::DT_DIR;
        let records = vec![
            record(
                0,
                vec![
                    ("a", DT_REG),
                    ("b", KIND_WHITEOUT),
                    ("c", DT_DIR),
                    ("c", KIND_WHITEOUT),
                    ("zz", DT_REG),
                ],
            ),
            record(
                1,
                vec![
                    ("b", DT_REG),
                    ("c", DT_DIR),
                    ("d", KIND_XWHITEOUT),
                    ("e", DT_DIR),
                    ("", DT_REG),
                ],
            ),
            record(
                2,
                vec![
                    ("a", DT_DIR),
                    ("d", DT_REG),
                    ("e", DT_REG),
                    ("f", DT_REG),
                    ("b", DT_REG),
                ],
            ),
        ];
        let bisected = listing(records.clone(), false);
        let merged = listing(records, true);
        let key = |h: Option<Hit>| h.map(|h| (h.pos, h.kind, h.ino));
        for name in ["a", "b", "c", "d", "e", "f", "zz", "nope", ""] {
            let n = OsStr::new(name);
            for from in 0..4 {
                assert_eq!(
                    key(bisected.first_hit(n, from)),
                    key(merged.first_hit(n, from)),
                    "first hit of {name:?} from {from}"
                );
                assert_eq!(bisected.whiteout_at(n, from), merged.whiteout_at(n, from));
            }
        }
        let visible = |l: &LowerListing| {
            let mut v: Vec<_> = l
                .visible()
                .map(|(n, h)| (n.to_os_string(), h.pos, h.ino))
                .collect();
            v.sort();
            v
        };
        let v = visible(&bisected);
        assert_eq!(v, visible(&merged));
        let names: Vec<_> = v.iter().map(|(n, ..)| n.to_str().unwrap_or("?")).collect();
        assert_eq!(names, ["", "a", "c", "e", "f", "zz"]);
        assert!(bisected.whiteout_at(OsStr::new("c"), 0));
        assert_eq!(
            bisected.first_hit(OsStr::new("c"), 0).map(|h| h.kind),
            Some(EntryKind::Dir)
        );
    }
}

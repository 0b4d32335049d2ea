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

/// Every name in a directory's lower layers, each with the layers that have
/// it, top-most first.
#[derive(Debug, Default)]
pub(crate) struct LowerListing {
    /// The layers' records, by stack position.
    records: Vec<Arc<DirRecord>>,
    table: HashTable<Slot>,
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

    fn hits(&self, name: &OsStr) -> impl Iterator<Item = Hit> + '_ {
        let name = name.as_bytes();
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |s| Self::name_of(&self.records, s) == name)
            .map_or(&[][..], Slot::hits)
            .iter()
            .map(|&k| self.hit(k))
    }

    /// The first layer at or below stack position `from` that has `name`.
    pub fn first_hit(&self, name: &OsStr, from: usize) -> Option<Hit> {
        self.hits(name).find(|h| h.pos >= from)
    }

    /// Whether stack position `pos` holds a whiteout of `name` (beside a
    /// real entry of that name, in an OCI layer that re-creates it).
    pub fn whiteout_at(&self, name: &OsStr, pos: usize) -> bool {
        self.hits(name)
            .any(|h| h.pos == pos && h.kind == EntryKind::Whiteout)
    }

    /// Names visible from the lowers and what they resolve to.
    pub fn visible(&self) -> impl Iterator<Item = (&OsStr, Hit)> {
        self.table.iter().filter_map(|s| {
            let h = self.hit(*s.hits().first()?);
            (h.kind != EntryKind::Whiteout)
                .then(|| (OsStr::from_bytes(Self::name_of(&self.records, s)), h))
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
        let mut records: Vec<Arc<DirRecord>> = Vec::new();
        for (layer, dir, marked) in lowers {
            let rec = index.dir(layer, dir, marked)?;
            let opaque = rec.oci_opaque;
            records.push(rec);
            if opaque {
                break;
            }
        }
        Ok(Self::merge(records))
    }

    /// The listing of lower directories whose records are `records`, top
    /// first (none below an OCI-opaque one).
    pub(crate) fn merge(records: Vec<Arc<DirRecord>>) -> LowerListing {
        let hasher = DefaultHashBuilder::default();
        let mut table: HashTable<Slot> = HashTable::new();
        let mut xwhiteouts = false;
        for (pos, rec) in records.iter().enumerate() {
            let pos16 = u16::try_from(pos).unwrap_or(u16::MAX);
            for (i, &(_, kind, _)) in rec.entries.iter().enumerate() {
                if kind == KIND_XWHITEOUT {
                    xwhiteouts = true;
                }
                let whiteout = entry_kind(kind) == EntryKind::Whiteout;
                let hit = Kept {
                    pos: pos16,
                    idx: i as u32,
                };
                let name = rec.name(i);
                let hash = hasher.hash_one(name);
                let found = table.find_mut(hash, |s| Self::name_of(&records, s) == name);
                match found {
                    Some(slot) => {
                        let mut hits = slot.hits().to_vec();
                        // Within one layer a real entry comes before its
                        // whiteout (an OCI layer may re-create what it
                        // deletes below).
                        match hits.last() {
                            Some(last) if last.pos == pos16 && !whiteout => {
                                hits.insert(hits.len() - 1, hit)
                            }
                            _ => hits.push(hit),
                        }
                        *slot = Slot::Many(Box::new(hits));
                    }
                    None => {
                        table.insert_unique(hash, Slot::One(hit), |s| {
                            hasher.hash_one(Self::name_of(&records, s))
                        });
                    }
                }
            }
        }
        table.shrink_to_fit(|s| hasher.hash_one(Self::name_of(&records, s)));
        LowerListing {
            records,
            table,
            hasher,
            xwhiteouts,
        }
    }
}

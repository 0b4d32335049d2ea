//! The inode table, keyed by the number the mount reports, and the policy
//! that chooses that number.
//!
//! The number a node is known by — to FUSE and in `st_ino` — is the
//! kernel's: the real inode number of the object that defines it (the
//! top-most lower for a merged directory, the copy-up origin for a copied
//! file), mapped per filesystem as the kernel's `xino` does when the layers
//! span several filesystems.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::Name;
use super::{Found, Ino, Node, NodeState, ROOT_INO, Real};
use crate::Overlay;
use crate::error::{Errno, Result};
use crate::layers::Layers;

/// Maps real inode numbers to the numbers the mount reports.
#[derive(Debug)]
pub(crate) struct InoMap {
    /// All layers on one filesystem: real numbers are used as they are.
    samefs: bool,
    /// Bits reserved at the top for the filesystem id (xino).
    fs_bits: u32,
    /// Numbers that did not fit (or would clash with FUSE's root) get one
    /// from a reserved range, remembered for the life of the mount.
    synthetic: DashMap<(u16, u64), Ino>,
    next_synthetic: AtomicU64,
    /// Where the reserved range starts; every number below it that is
    /// not synthetic is a real one.
    base: u64,
    /// One past the largest number the mount may report.
    limit: u64,
}

const SYNTHETIC_BASE: u64 = 0xffff_ff00_0000_0000;
/// With `ino32_t`: a quarter of the 32-bit space, far above the numbers
/// filesystems hand out first.
const SYNTHETIC_BASE_32: u64 = 0xc000_0000;

impl InoMap {
    pub fn new(layers: &Layers, ino32: bool) -> InoMap {
        let nfs = layers.nfs.max(1) as u64;
        let fs_bits = if nfs <= 1 {
            0
        } else {
            64 - (nfs - 1).leading_zeros()
        };
        let (base, limit) = if ino32 {
            (SYNTHETIC_BASE_32, 1 << 32)
        } else {
            (SYNTHETIC_BASE, u64::MAX)
        };
        InoMap {
            samefs: nfs == 1,
            fs_bits,
            synthetic: DashMap::new(),
            next_synthetic: AtomicU64::new(base),
            base,
            limit,
        }
    }

    /// The reported number of real inode `ino` on filesystem `fsid`;
    /// EOVERFLOW once the reserved range is used up (with `ino32_t`, after
    /// a billion objects that do not fit), as stat(2) of a 32-bit program.
    pub fn map(&self, fsid: u16, ino: u64) -> Result<Ino> {
        let direct = if self.samefs || fsid == 0 {
            Some(ino)
        } else if ino >> (64 - self.fs_bits) == 0 {
            Some(ino | (u64::from(fsid) << (64 - self.fs_bits)))
        } else {
            None
        };
        match direct {
            Some(n) if n > ROOT_INO && n < self.base => Ok(n),
            _ => {
                let n = *self
                    .synthetic
                    .entry((fsid, ino))
                    .or_insert_with(|| self.next_synthetic.fetch_add(1, Ordering::Relaxed));
                if n < self.limit {
                    Ok(n)
                } else {
                    Err(Errno::EOVERFLOW)
                }
            }
        }
    }
}

/// All union inodes the kernel currently knows, by number.
#[derive(Debug, Default)]
pub(crate) struct InodeTable {
    nodes: DashMap<Ino, Arc<Node>>,
    /// Nodes in the table, and the most there were since the heap was
    /// last trimmed.
    live: AtomicUsize,
    peak: AtomicUsize,
}

/// Below this many nodes a shrinking table is not worth a heap trim.
const TRIM_FLOOR: usize = 16384;

impl InodeTable {
    pub fn get(&self, ino: Ino) -> Option<Arc<Node>> {
        self.nodes.get(&ino).map(|n| n.clone())
    }

    pub fn insert_root(&self, node: Node) -> Arc<Node> {
        let node = Arc::new(node);
        node.lookups.store(1, Ordering::Relaxed);
        self.nodes.insert(node.ino, node.clone());
        node
    }

    /// Finds the node for `ino` or makes one with `make`, and counts one
    /// lookup, atomically with respect to [`InodeTable::forget`]. An
    /// existing node of another type is a different object: it is replaced
    /// by a new generation, and the kernel's outstanding lookups of the old
    /// one carry over (it will forget them under the same number).
    pub fn lookup_or_insert(
        &self,
        ino: Ino,
        kind: u32,
        make: impl FnOnce(u64) -> Node,
    ) -> Arc<Node> {
        match self.nodes.entry(ino) {
            MapEntry::Occupied(mut o) => {
                if o.get().kind() == kind {
                    o.get().lookups.fetch_add(1, Ordering::Relaxed);
                    o.get().clone()
                } else {
                    let old = o.get();
                    let carried = old.lookups.load(Ordering::Relaxed);
                    let node = Arc::new(make(old.generation() + 1));
                    node.lookups.store(carried + 1, Ordering::Relaxed);
                    o.insert(node.clone());
                    node
                }
            }
            MapEntry::Vacant(v) => {
                let node = Arc::new(make(0));
                node.lookups.store(1, Ordering::Relaxed);
                v.insert(node.clone());
                self.added();
                node
            }
        }
    }

    /// Counts one more kernel lookup of a node found elsewhere (a cache, a
    /// link); `None` if the table holds another node under its number.
    pub fn recount(&self, node: &Arc<Node>) -> Option<Arc<Node>> {
        match self.nodes.entry(node.ino) {
            MapEntry::Occupied(o) if Arc::ptr_eq(o.get(), node) => {
                o.get().lookups.fetch_add(1, Ordering::Relaxed);
                Some(o.get().clone())
            }
            // Known to the union but not (or no longer) to the kernel.
            MapEntry::Vacant(v) => {
                node.lookups.store(1, Ordering::Relaxed);
                v.insert(node.clone());
                self.added();
                Some(node.clone())
            }
            MapEntry::Occupied(_) => None,
        }
    }

    /// Drops `n` lookups; the node goes when none are left. Counts only
    /// change under the table's entry lock, so this cannot race a lookup.
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let removed = match self.nodes.entry(ino) {
            MapEntry::Occupied(o) => {
                let left = o.get().lookups.load(Ordering::Relaxed).saturating_sub(n);
                o.get().lookups.store(left, Ordering::Relaxed);
                if left == 0 {
                    o.remove();
                }
                left == 0
            }
            MapEntry::Vacant(_) => false,
        };
        if removed {
            self.removed();
        }
    }

    fn added(&self) {
        let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    /// When the kernel has forgotten most of what it once held (memory
    /// pressure, drop_caches), the table and the heap give the memory back.
    fn removed(&self) {
        let live = self.live.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= TRIM_FLOOR
            && live < peak / 2
            && self
                .peak
                .compare_exchange(peak, live, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.nodes.shrink_to_fit();
            crate::sys::process::trim_heap();
            tracing::debug!(live, peak, "inode table shrank: heap trimmed");
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

impl Overlay {
    /// Makes (or finds) the node for a resolved object.
    pub(crate) fn node_from(
        &self,
        found: Found,
        parent: Ino,
        name: &OsStr,
        count: bool,
    ) -> Result<Arc<Node>> {
        let ino = self.ino_of(&found)?;
        let kind = found.kind;
        // The name the object has in its layer is usually this one: share
        // the allocation.
        let name: Name = [found.upper.as_ref(), found.lowers.first()]
            .into_iter()
            .flatten()
            .find_map(|r| match r {
                Real::At { name: n, .. } if **n == *name => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_else(|| Name::from(name));
        let make = |generation| {
            Node::new(
                ino,
                generation,
                kind,
                NodeState::from_found(parent, name.clone(), &found),
            )
        };
        let node = if count {
            self.inodes.lookup_or_insert(ino, kind, make)
        } else {
            match self.inodes.get(ino) {
                Some(n) if n.kind() == kind => n,
                _ => Arc::new(make(0)),
            }
        };
        // Remember the latest name: copy-up recreates this path.
        {
            let mut s = node.state.write();
            if s.parent != parent || *s.name != *name {
                s.parent = parent;
                s.name = name;
            }
        }
        Ok(node)
    }

    /// The number the mount reports for a resolved object.
    pub(crate) fn ino_of(&self, f: &Found) -> Result<Ino> {
        let layer_fsid = |r: &Real| self.layers.get(r.layer()).fsid;
        let from_lower = match (&f.upper, f.lowers.first(), &f.lower_stat) {
            (_, Some(l), Some(ls)) if f.kind == libc::S_IFDIR => Some((layer_fsid(l), ls.st_ino)),
            // A copy keeps its origin's number, unless the origin is a hard
            // link that was not indexed (then the copy is a different object).
            (Some(_), Some(l), Some(ls)) if ls.st_nlink <= 1 || f.indexed => {
                Some((layer_fsid(l), ls.st_ino))
            }
            (None, Some(l), Some(ls)) => Some((layer_fsid(l), ls.st_ino)),
            _ => None,
        };
        let (fsid, ino) = from_lower.unwrap_or_else(|| {
            let u = f.upper.as_ref().map_or(0, layer_fsid);
            (u, f.upper_stat.map_or(0, |s| s.st_ino))
        });
        self.inomap.map(fsid, ino)
    }
}

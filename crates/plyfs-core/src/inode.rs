//! Union inodes: which real objects make up each merged object, the inode
//! table keyed by the inode number the mount reports, and attributes.
//!
//! The number a node is known by — to FUSE and in `st_ino` — is the
//! kernel's: the real inode number of the object that defines it (the
//! top-most lower for a merged directory, the copy-up origin for a copied
//! file), mapped per filesystem as the kernel's `xino` does when the layers
//! span several filesystems.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use parking_lot::{Mutex, RwLock};

use crate::error::Result;
use crate::layers::{LayerIdx, Layers};
use crate::markers::NlinkBase;
use crate::readdir::LowerListing;
use crate::sys::fs::{self, Stat};

pub type Ino = u64;
/// FUSE's fixed number for the root directory.
pub const ROOT_INO: Ino = 1;

/// One real object in one layer.
#[derive(Clone, Debug)]
pub enum Real {
    /// A directory, held open (`O_PATH`): lookups below it never re-walk
    /// a path, and it stays valid when it is renamed.
    Dir {
        layer: LayerIdx,
        fd: Arc<OwnedFd>,
        xwhiteouts: bool,
    },
    /// A non-directory, by the descriptor of its parent and its name there:
    /// no descriptor per file is kept.
    At {
        layer: LayerIdx,
        dir: Arc<OwnedFd>,
        name: Arc<OsStr>,
    },
    /// A non-directory held open because its last known name is gone
    /// while the kernel still uses it (unlinked but open, say).
    Pinned { layer: LayerIdx, fd: Arc<OwnedFd> },
}

impl Real {
    pub fn layer(&self) -> LayerIdx {
        match self {
            Real::Dir { layer, .. } | Real::At { layer, .. } | Real::Pinned { layer, .. } => *layer,
        }
    }

    pub fn stat(&self) -> Result<Stat> {
        match self {
            Real::Dir { fd, .. } | Real::Pinned { fd, .. } => fs::fstat(fd.as_fd()),
            Real::At { dir, name, .. } => fs::fstatat(dir.as_fd(), name),
        }
    }

    /// Opens the object for I/O (never following a symlink).
    pub fn open(&self, flags: i32) -> Result<OwnedFd> {
        match self {
            Real::Dir { fd, .. } => fs::openat(fd.as_fd(), OsStr::new("."), flags, 0),
            Real::At { dir, name, .. } => {
                fs::openat(dir.as_fd(), name, flags | libc::O_NOFOLLOW, 0)
            }
            Real::Pinned { fd, .. } => fs::reopen(fd.as_fd(), flags),
        }
    }

    /// `(dir, name)` for `*at` calls on this object. Pinned objects have no
    /// name; they are reached through `/proc/self/fd`, which callers only
    /// use for regular files and directories.
    pub fn at(&self) -> Option<(BorrowedFd<'_>, &OsStr)> {
        match self {
            Real::Dir { fd, .. } => Some((fd.as_fd(), OsStr::new("."))),
            Real::At { dir, name, .. } => Some((dir.as_fd(), name)),
            Real::Pinned { .. } => None,
        }
    }

    pub fn dir_fd(&self) -> Option<&Arc<OwnedFd>> {
        match self {
            Real::Dir { fd, .. } => Some(fd),
            _ => None,
        }
    }

    pub fn xwhiteouts(&self) -> bool {
        matches!(
            self,
            Real::Dir {
                xwhiteouts: true,
                ..
            }
        )
    }

    /// Opens an `O_PATH` descriptor that keeps this object reachable.
    pub fn pin(&self) -> Result<Real> {
        match self {
            Real::At { layer, dir, name } => {
                let fd = fs::openat(dir.as_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
                Ok(Real::Pinned {
                    layer: *layer,
                    fd: Arc::new(fd),
                })
            }
            other => Ok(other.clone()),
        }
    }
}

/// A cached answer of lookup(parent, name).
#[derive(Clone, Debug)]
pub enum Child {
    Positive(Weak<Node>),
    Negative,
}

/// What is known of a union object; guarded by [`Node::state`].
#[derive(Clone, Debug)]
pub struct NodeState {
    /// The name this node was last reached by: used for copy-up (which
    /// must recreate the path in the upper) and for redirects.
    pub parent: Ino,
    pub name: Arc<OsStr>,
    pub upper: Option<Real>,
    /// Directories: the lower directories merged below the upper, top
    /// first. Non-directories: the lower object (data source before
    /// copy-up, origin after).
    pub lowers: Arc<[Real]>,
    /// Stat of `lowers[0]`; lowers never change, so it is read once.
    pub lower_stat: Option<Stat>,
    /// The upper directory's redirect, as stored.
    pub redirect: Option<Vec<u8>>,
    /// The upper directory is marked impure: entries below it may have
    /// origins, so their inode numbers need a lookup.
    pub impure: bool,
    /// The upper directory is opaque.
    pub opaque: bool,
    /// A lower hard link whose copy lives in the index: all its names
    /// share one upper inode.
    pub indexed: bool,
    /// Persistent union nlink for indexed objects ("L+n"/"U+n").
    pub nlink: Option<(NlinkBase, i64)>,
    /// The object has no name left in the union.
    pub unlinked: bool,
}

impl NodeState {
    pub fn real(&self) -> Option<&Real> {
        self.upper.as_ref().or_else(|| self.lowers.first())
    }

    pub fn upper_dir(&self) -> Option<&Arc<OwnedFd>> {
        self.upper.as_ref().and_then(Real::dir_fd)
    }

    /// A directory made of more than one real directory.
    pub fn is_merged_dir(&self) -> bool {
        self.lowers.len() + usize::from(self.upper.is_some()) > 1
    }
}

#[derive(Debug)]
pub struct Node {
    pub ino: Ino,
    pub generation: u64,
    /// File type bits; an object never changes type.
    pub kind: u32,
    /// Lookups the kernel holds (FUSE's nlookup).
    pub lookups: AtomicU64,
    pub state: RwLock<NodeState>,
    /// Serializes copy-up and link-count bookkeeping of this object.
    pub op_lock: Mutex<()>,
    /// Directories: the lookup cache of their entries.
    pub children: RwLock<HashMap<OsString, Child>>,
    /// Directories: their lower entries, read once.
    pub listing: OnceLock<Arc<LowerListing>>,
    /// Directories: bumped on every change of an entry, so that a lookup
    /// that raced with a change does not cache what it found.
    pub dir_version: AtomicU64,
}

impl Node {
    pub fn new(ino: Ino, generation: u64, kind: u32, state: NodeState) -> Node {
        Node {
            ino,
            generation,
            kind,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            op_lock: Mutex::new(()),
            children: RwLock::new(HashMap::new()),
            listing: OnceLock::new(),
            dir_version: AtomicU64::new(0),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }

    pub fn forget_child(&self, name: &OsStr) {
        self.children.write().remove(name);
    }

    pub fn set_child(&self, name: &OsStr, child: &Arc<Node>) {
        self.children
            .write()
            .insert(name.to_os_string(), Child::Positive(Arc::downgrade(child)));
    }

    pub fn bump_version(&self) {
        self.dir_version.fetch_add(1, Ordering::AcqRel);
    }
}

/// Maps real inode numbers to the numbers the mount reports.
#[derive(Debug)]
pub struct InoMap {
    /// All layers on one filesystem: real numbers are used as they are.
    samefs: bool,
    /// Bits reserved at the top for the filesystem id (xino).
    fs_bits: u32,
    /// Numbers that did not fit (or would clash with FUSE's root) get one
    /// from a reserved range, remembered for the life of the mount.
    synthetic: DashMap<(u16, u64), Ino>,
    next_synthetic: AtomicU64,
}

const SYNTHETIC_BASE: u64 = 0xffff_ff00_0000_0000;

impl InoMap {
    pub fn new(layers: &Layers) -> InoMap {
        let nfs = layers.nfs.max(1) as u64;
        let fs_bits = if nfs <= 1 {
            0
        } else {
            64 - (nfs - 1).leading_zeros()
        };
        InoMap {
            samefs: nfs == 1,
            fs_bits,
            synthetic: DashMap::new(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
        }
    }

    /// The reported number of real inode `ino` on filesystem `fsid`.
    pub fn map(&self, fsid: u16, ino: u64) -> Ino {
        let direct = if self.samefs || fsid == 0 {
            Some(ino)
        } else if ino >> (64 - self.fs_bits) == 0 {
            Some(ino | (u64::from(fsid) << (64 - self.fs_bits)))
        } else {
            None
        };
        match direct {
            Some(n) if n > ROOT_INO && n < SYNTHETIC_BASE => n,
            _ => *self
                .synthetic
                .entry((fsid, ino))
                .or_insert_with(|| self.next_synthetic.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

/// All union inodes the kernel currently knows, by number.
#[derive(Debug, Default)]
pub struct InodeTable {
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
                if o.get().kind == kind {
                    o.get().lookups.fetch_add(1, Ordering::Relaxed);
                    o.get().clone()
                } else {
                    let old = o.get();
                    let carried = old.lookups.load(Ordering::Relaxed);
                    let node = Arc::new(make(old.generation + 1));
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

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

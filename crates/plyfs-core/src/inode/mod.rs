//! Union inodes: which real objects make up each merged object. The table
//! of them and the numbers they are known by live in [`table`]; copy-up
//! origins, which those numbers come from, in [`origin`].

pub(crate) mod origin;
mod table;

pub(crate) use table::{InoMap, InodeTable};

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};

use crate::error::Result;
use crate::layers::LayerIdx;
use crate::lower_index::LowerListing;
use crate::markers::{Nlink, StatOverride};
use crate::sys::fs::{self, Stat};

pub type Ino = u64;
/// FUSE's fixed number for the root directory.
pub const ROOT_INO: Ino = 1;

/// One real object in one layer.
#[derive(Clone, Debug)]
pub(crate) enum Real {
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
            // The descriptor already is the object: its /proc/self/fd
            // link must be followed to reach it (with a caller's
            // O_NOFOLLOW it would fail with ELOOP). Only files and
            // directories are pinned and opened.
            Real::Pinned { fd, .. } => fs::reopen(fd.as_fd(), flags & !libc::O_NOFOLLOW),
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

    /// `(dir, name)` for the xattr calls, which also reach a pinned object
    /// (by its descriptor and an empty name).
    pub fn xattr_target(&self) -> (BorrowedFd<'_>, &OsStr) {
        match self {
            Real::Pinned { fd, .. } => (fd.as_fd(), OsStr::new("")),
            Real::Dir { fd, .. } => (fd.as_fd(), OsStr::new(".")),
            Real::At { dir, name, .. } => (dir.as_fd(), name),
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

/// What a name resolves to, before it becomes a node.
#[derive(Debug)]
pub(crate) struct Found {
    pub kind: u32,
    pub upper: Option<Real>,
    pub upper_stat: Option<Stat>,
    pub lowers: Vec<Real>,
    pub lower_stat: Option<Stat>,
    pub opaque: bool,
    pub redirect: Option<Vec<u8>>,
    pub impure: bool,
    pub indexed: bool,
    pub nlink: Option<Nlink>,
    pub upper_ovr: Option<StatOverride>,
    pub lower_ovr: Option<StatOverride>,
    pub data: Option<Real>,
}

/// A cached answer of lookup(parent, name).
#[derive(Clone, Debug)]
pub(crate) enum Child {
    Positive(Weak<Node>),
    Negative,
}

/// What is known of a union object; guarded by [`Node::state`].
#[derive(Clone, Debug)]
pub(crate) struct NodeState {
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
    pub nlink: Option<Nlink>,
    /// The object has no name left in the union.
    pub unlinked: bool,
    /// What the override-stat attribute of the upper object says (in an
    /// override layer): kept here because only plyfs changes it.
    pub upper_ovr: Option<StatOverride>,
    /// Likewise for `lowers[0]`, read once.
    pub lower_ovr: Option<StatOverride>,
    /// Metacopy: where the file's data is, when the object the union shows
    /// has only its metadata (an upper copied up without data, or a lower
    /// whose data is in a layer below or in a data-only layer).
    pub data: Option<Real>,
}

impl NodeState {
    pub fn real(&self) -> Option<&Real> {
        self.upper.as_ref().or_else(|| self.lowers.first())
    }

    /// Where reads of the file's data go.
    pub fn data_source(&self) -> Option<&Real> {
        self.data.as_ref().or_else(|| self.real())
    }

    /// The upper object holds the data too (not a metacopy).
    pub fn data_on_upper(&self) -> bool {
        self.upper.is_some() && self.data.is_none()
    }

    /// The override of the object the union shows.
    pub fn shown_ovr(&self) -> Option<StatOverride> {
        if self.upper.is_some() {
            self.upper_ovr
        } else {
            self.lower_ovr
        }
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
pub(crate) struct Node {
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

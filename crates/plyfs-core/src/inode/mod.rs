//! Union inodes: which real objects make up each merged object. The table
//! of them and the numbers they are known by live in [`table`]; copy-up
//! origins, which those numbers come from, in [`origin`].

mod name;
pub(crate) mod origin;
mod table;

pub(crate) use name::Name;
pub(crate) use table::{InoMap, InodeTable};

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};

use crate::error::{Errno, Result};
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
        name: Name,
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

    /// Opens the object for its data, which only a regular file has. A
    /// layer may hold a FIFO where a regular file was looked up (replaced
    /// since, or shown as a file by a forged override): opening that
    /// would wait for a writer for ever and hold a daemon thread, so the
    /// open does not wait, and anything but a regular file is EIO.
    pub fn open_file(&self, flags: i32) -> Result<OwnedFd> {
        let fd = self.open(flags | libc::O_NONBLOCK)?;
        if fs::fstat(fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EIO);
        }
        if flags & libc::O_NONBLOCK == 0 {
            // Regular files ignore it, but it is the caller's flag to set,
            // and it is passed on with the descriptor. F_SETFL takes only
            // the status flags of `flags`.
            fs::set_status_flags(fd.as_fd(), flags)?;
        }
        Ok(fd)
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

/// The lower objects of a node: none, one (a file's, inline: files are
/// most nodes), or a directory's stack.
#[derive(Clone, Debug, Default)]
pub(crate) enum Lowers {
    #[default]
    None,
    One(Real),
    Many(Arc<[Real]>),
}

impl std::ops::Deref for Lowers {
    type Target = [Real];

    fn deref(&self) -> &[Real] {
        match self {
            Lowers::None => &[],
            Lowers::One(r) => std::slice::from_ref(r),
            Lowers::Many(v) => v,
        }
    }
}

impl From<Vec<Real>> for Lowers {
    fn from(mut v: Vec<Real>) -> Lowers {
        match v.len() {
            0 => Lowers::None,
            1 => v.pop().map_or(Lowers::None, Lowers::One),
            _ => Lowers::Many(v.into()),
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
    pub name: Name,
    pub upper: Option<Real>,
    /// Directories: the lower directories merged below the upper, top
    /// first. Non-directories: the lower object (data source before
    /// copy-up, origin after).
    pub lowers: Lowers,
    /// Link count of `lowers[0]` (0 without a lower); lowers never
    /// change. (Its other attributes are read when asked for: keeping a
    /// whole stat per node would double the memory of a cached tree.)
    pub lower_nlink: u32,
    /// The upper directory is marked impure: entries below it may have
    /// origins, so their inode numbers need a lookup.
    pub impure: bool,
    /// The upper directory is opaque.
    pub opaque: bool,
    /// A lower hard link whose copy lives in the index: all its names
    /// share one upper inode.
    pub indexed: bool,
    /// The object has no name left in the union.
    pub unlinked: bool,
    /// What few nodes have (boxed apart: a cached tree holds many nodes).
    extra: Option<Box<Extra>>,
}

/// The rarer parts of a node's state.
#[derive(Clone, Debug, Default)]
struct Extra {
    /// The upper directory's redirect, as stored.
    redirect: Option<Vec<u8>>,
    /// Persistent union nlink for indexed objects ("L+n"/"U+n").
    nlink: Option<Nlink>,
    /// What the override-stat attribute of the upper object says (in an
    /// override layer): kept here because only plyfs changes it.
    upper_ovr: Option<StatOverride>,
    /// Likewise for `lowers[0]`, read once.
    lower_ovr: Option<StatOverride>,
    /// Metacopy: where the file's data is, when the object the union shows
    /// has only its metadata (an upper copied up without data, or a lower
    /// whose data is in a layer below or in a data-only layer).
    data: Option<Real>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        self.redirect.is_none()
            && self.nlink.is_none()
            && self.upper_ovr.is_none()
            && self.lower_ovr.is_none()
            && self.data.is_none()
    }
}

impl NodeState {
    /// A node's state from what lookup found.
    pub fn from_found(parent: Ino, name: Name, f: &Found) -> NodeState {
        let mut s = NodeState {
            parent,
            name,
            upper: f.upper.clone(),
            lowers: f.lowers.clone().into(),
            lower_nlink: f
                .lower_stat
                .map_or(0, |s| s.st_nlink.min(u64::from(u32::MAX)) as u32),
            impure: f.impure,
            opaque: f.opaque,
            indexed: f.indexed,
            unlinked: false,
            extra: None,
        };
        s.edit(|e| {
            e.redirect = f.redirect.clone();
            e.nlink = f.nlink;
            e.upper_ovr = f.upper_ovr;
            e.lower_ovr = f.lower_ovr;
            e.data = f.data.clone();
        });
        s
    }

    /// Changes the rarer parts, boxing them only while one is set.
    fn edit(&mut self, f: impl FnOnce(&mut Extra)) {
        let mut e = self.extra.take().unwrap_or_default();
        f(&mut e);
        if !e.is_empty() {
            self.extra = Some(e);
        }
    }

    fn extra(&self) -> Option<&Extra> {
        self.extra.as_deref()
    }

    pub fn redirect(&self) -> Option<&Vec<u8>> {
        self.extra()?.redirect.as_ref()
    }

    pub fn set_redirect(&mut self, r: Option<Vec<u8>>) {
        self.edit(|e| e.redirect = r);
    }

    pub fn nlink(&self) -> Option<Nlink> {
        self.extra()?.nlink
    }

    pub fn set_nlink(&mut self, n: Option<Nlink>) {
        self.edit(|e| e.nlink = n);
    }

    pub fn upper_ovr(&self) -> Option<StatOverride> {
        self.extra()?.upper_ovr
    }

    pub fn set_upper_ovr(&mut self, o: Option<StatOverride>) {
        self.edit(|e| e.upper_ovr = o);
    }

    pub fn lower_ovr(&self) -> Option<StatOverride> {
        self.extra()?.lower_ovr
    }

    pub fn data(&self) -> Option<&Real> {
        self.extra()?.data.as_ref()
    }

    pub fn set_data(&mut self, d: Option<Real>) {
        self.edit(|e| e.data = d);
    }

    pub fn real(&self) -> Option<&Real> {
        self.upper.as_ref().or_else(|| self.lowers.first())
    }

    /// Where reads of the file's data go.
    pub fn data_source(&self) -> Option<&Real> {
        self.data().or_else(|| self.real())
    }

    /// The upper object holds the data too (not a metacopy).
    pub fn data_on_upper(&self) -> bool {
        self.upper.is_some() && self.data().is_none()
    }

    /// The override of the object the union shows.
    pub fn shown_ovr(&self) -> Option<StatOverride> {
        if self.upper.is_some() {
            self.upper_ovr()
        } else {
            self.lower_ovr()
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
    /// Bumped when the number is reused for an object of another type
    /// (32 bits: with the type in 16, the node stays small enough for a
    /// smaller heap block).
    generation: u32,
    /// File type bits; an object never changes type.
    kind: u16,
    /// Lookups the kernel holds (FUSE's nlookup).
    pub lookups: AtomicU64,
    pub state: RwLock<NodeState>,
    /// Serializes copy-up and link-count bookkeeping of this object.
    pub op_lock: Mutex<()>,
    /// What only a directory has (most nodes are files: boxed apart).
    dir: Option<Box<DirPart>>,
}

#[derive(Debug, Default)]
struct DirPart {
    /// The lookup cache of its entries; names shared with their nodes.
    /// A negative entry is an empty `Weak` (no allocation: a map entry
    /// stays three words).
    children: RwLock<HashMap<Name, Weak<Node>>>,
    /// Its lower entries, read once.
    listing: OnceLock<Arc<LowerListing>>,
    /// Bumped on every change of an entry, so that a lookup that raced
    /// with a change does not cache what it found.
    version: AtomicU64,
}

impl Node {
    pub fn new(ino: Ino, generation: u64, kind: u32, state: NodeState) -> Node {
        Node {
            ino,
            generation: generation as u32,
            // File type bits (S_IFMT) fit in 16.
            kind: (kind >> 12) as u16,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
            op_lock: Mutex::new(()),
            dir: (kind == libc::S_IFDIR).then(Box::default),
        }
    }

    /// File type bits; an object never changes type.
    pub fn kind(&self) -> u32 {
        u32::from(self.kind) << 12
    }

    pub fn generation(&self) -> u64 {
        u64::from(self.generation)
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    pub fn forget_child(&self, name: &OsStr) {
        if let Some(d) = &self.dir {
            d.children.write().remove(name);
        }
    }

    /// Caches `child` as what `name` leads to.
    pub fn set_child(&self, name: &OsStr, child: &Arc<Node>) {
        self.cache_child(name, Child::Positive(Arc::downgrade(child)), Some(child));
    }

    /// Caches what `name` leads to, unless an entry changed since
    /// [`Node::version`] was `version`.
    pub fn cache_child_since(&self, version: u64, name: &OsStr, child: Option<&Arc<Node>>) {
        if self.version() != version {
            return;
        }
        let c = match child {
            Some(n) => Child::Positive(Arc::downgrade(n)),
            None => Child::Negative,
        };
        self.cache_child(name, c, child);
    }

    fn cache_child(&self, name: &OsStr, c: Child, node: Option<&Arc<Node>>) {
        let Some(d) = &self.dir else {
            return;
        };
        // The node's own name is the key when it is this one: no copy.
        let key = node
            .map(|n| n.state.read().name.clone())
            .filter(|k| **k == *name)
            .unwrap_or_else(|| Name::from(name));
        let stored = match c {
            Child::Positive(w) => w,
            Child::Negative => Weak::new(),
        };
        d.children.write().insert(key, stored);
    }

    /// What the lookup cache says `name` leads to.
    pub fn cached_child(&self, name: &OsStr) -> Option<Child> {
        let w = self.dir.as_ref()?.children.read().get(name).cloned()?;
        Some(if w.ptr_eq(&Weak::new()) {
            Child::Negative
        } else {
            Child::Positive(w)
        })
    }

    pub fn bump_version(&self) {
        if let Some(d) = &self.dir {
            d.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn version(&self) -> u64 {
        self.dir
            .as_ref()
            .map_or(0, |d| d.version.load(Ordering::Acquire))
    }

    /// The cell of a directory's lower listing.
    pub fn listing_cell(&self) -> Option<&OnceLock<Arc<LowerListing>>> {
        self.dir.as_ref().map(|d| &d.listing)
    }
}
#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// A cached tree is mostly nodes: with the reference counts of its
    /// `Arc`, a node of at most 120 bytes takes a 144-byte heap block
    /// (glibc), one byte more and it takes 160 (benches/memory.sh).
    #[test]
    fn a_node_fits_a_144_byte_heap_block() {
        assert!(std::mem::size_of::<super::Node>() <= 120);
        assert!(std::mem::size_of::<super::Real>() <= 24);
    }
}

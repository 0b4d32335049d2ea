//! plyfs-core: the semantics of a union filesystem — layers, lookup,
//! readdir merge, whiteout and opaque markers, copy-up — exactly as the
//! kernel's overlayfs defines them, and nothing of FUSE.
//!
//! [`Overlay`] is the mounted union. Objects are named by the inode number
//! the union reports ([`Ino`]); every operation works on layer directory
//! descriptors with `*at()` calls and never follows a symlink inside a
//! layer.

mod acl;
mod atime;
mod attr;
pub mod changes;
pub mod check;
mod config;
mod copy_up;
mod dir;
mod error;
mod file;
mod fileattr;
/// Entry points of the fuzz targets (`fuzz/`), nothing of the daemon's.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod index;
mod inode;
mod layers;
mod lower_index;
mod markers;
mod metacopy;
mod namei;
mod ownership;
mod prefetch;
pub mod process;
mod readdir;
mod rename;
mod util;
mod xattrs;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use plyfs_sys as sys;

pub use acl::{ACCESS_XATTR, AclEntry, AclKind, AclTag, DEFAULT_XATTR, PosixAcl};
pub use attr::SetAttr;
pub use config::{Config, OverrideStat};
pub use error::{Errno, Result, SetupError};
pub use file::OpenFile;
pub use inode::{Ino, ROOT_INO};
pub use lower_index::FILE_NAME as LOWER_INDEX_FILE;
/// Markers of layers outside a mount (image import and commit).
pub use markers::layer;
pub use readdir::DirEntry;
pub use rename::Renamed;
pub use sys::fs::{SetTime, Stat, StatVfs};

use inode::{Found, InoMap, InodeTable, Node, NodeState, Real};
use layers::Layers;
use markers::Markers;

/// A looked-up object: its number, generation and attributes.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub ino: Ino,
    pub generation: u64,
    pub attr: Stat,
}

/// Who asks: new objects belong to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling process (0: unknown), for what its credentials hold
    /// beyond these ids (supplementary groups).
    pub pid: u32,
    /// The caller's umask where the kernel leaves it to the filesystem
    /// (FUSE_DONT_MASK, with POSIX ACLs): a new object takes it only when
    /// its directory has no default ACL. `None`: the kernel applied it to
    /// the mode already.
    pub umask: Option<u32>,
}

impl Caller {
    pub const ROOT: Caller = Caller {
        uid: 0,
        gid: 0,
        pid: 0,
        umask: None,
    };
}

/// A mounted union of layers.
pub struct Overlay {
    pub(crate) config: Config,
    pub(crate) layers: Layers,
    pub(crate) inodes: InodeTable,
    pub(crate) inomap: InoMap,
    /// What the root reports as st_ino (FUSE knows it as [`ROOT_INO`]).
    root_st_ino: Ino,
    /// Told when plyfs changes attributes behind the kernel's back.
    invalidator: std::sync::OnceLock<Invalidator>,
    /// Entries of lower directories, kept across mounts.
    pub(crate) lower_index: lower_index::LowerIndex,
    /// Warms the lower filesystems' caches ahead of a tree walk; started
    /// on first use, so that the binary can still fork after `new`.
    prefetch: std::sync::OnceLock<Option<prefetch::Prefetcher>>,
    /// A noatime view of the upper, made on first use (see atime.rs).
    noatime_mount: std::sync::OnceLock<Option<std::os::fd::OwnedFd>>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("layers", &self.layers)
            .field("inodes", &self.inodes.len())
            .finish()
    }
}

/// Called with an inode whose attributes changed as a side effect (a
/// directory copied up becomes merged, say), so that a cache of them can
/// be dropped. Runs on the request thread, before the reply.
pub type Invalidator = Box<dyn Fn(Ino) + Send + Sync>;

impl Overlay {
    /// Opens the layers of `config`, checks them, prepares the work
    /// directory and makes the root of the union.
    pub fn new(config: Config) -> std::result::Result<Overlay, SetupError> {
        let layers = Layers::open(&config)?;
        let inomap = InoMap::new(&layers, config.ino32);
        fn layer_err(l: &layers::Layer) -> impl Fn(Errno) -> SetupError + '_ {
            let role = if l.is_upper { "upperdir" } else { "lowerdir" };
            move |errno| SetupError::Layer {
                role,
                path: l.path.clone(),
                errno,
            }
        }
        let mut lowers = Vec::new();
        for (idx, l) in layers.lowers() {
            let m = Markers::read(l.root.as_fd(), OsStr::new(".")).map_err(layer_err(l))?;
            lowers.push(Real::Dir {
                layer: idx,
                fd: l.root.clone(),
                xwhiteouts: m.xwhiteouts,
            });
        }
        let first = layers
            .lowers()
            .next()
            .map(|(_, l)| l)
            .ok_or(SetupError::NoLowers)?;
        let lower_stat = sys::fs::fstat(first.root.as_fd()).map_err(layer_err(first))?;
        let root_st_ino = inomap
            .map(first.fsid, first.root_ino)
            .map_err(layer_err(first))?;
        let (upper, impure) = match layers.upper() {
            Some(u) => {
                let m = Markers::read(u.root.as_fd(), OsStr::new(".")).map_err(layer_err(u))?;
                (
                    Some(Real::Dir {
                        layer: 0,
                        fd: u.root.clone(),
                        xwhiteouts: m.xwhiteouts,
                    }),
                    m.impure,
                )
            }
            None => (None, false),
        };
        let ovr_of = |real: Option<&Real>, l: &layers::Layer| match (real, l.overrides) {
            (Some(r), Some(ns)) => {
                let (dir, name) = r.xattr_target();
                markers::read_override(dir, name, ns).map_err(layer_err(l))
            }
            _ => Ok(None),
        };
        let upper_ovr = match layers.upper() {
            Some(u) => ovr_of(upper.as_ref(), u)?,
            None => None,
        };
        let lower_ovr = ovr_of(lowers.first(), first)?;
        let inodes = InodeTable::default();
        inodes.insert_root(Node::new(
            ROOT_INO,
            0,
            libc::S_IFDIR,
            NodeState::from_found(
                ROOT_INO,
                inode::Name::from(OsStr::new("")),
                &Found {
                    kind: libc::S_IFDIR,
                    upper,
                    upper_stat: None,
                    lowers,
                    lower_stat: Some(lower_stat),
                    opaque: false,
                    redirect: None,
                    impure,
                    indexed: false,
                    nlink: None,
                    upper_ovr,
                    lower_ovr,
                    data: None,
                },
            ),
        ));
        let index_file = layers
            .work
            .as_ref()
            .map(|w| w.path.join(lower_index::FILE_NAME));
        let ids = layers.lowers().map(|(_, l)| (l.dev, l.root_ino)).collect();
        let lower_index = lower_index::LowerIndex::load(index_file, ids);
        Ok(Overlay {
            config,
            layers,
            inodes,
            inomap,
            root_st_ino,
            invalidator: std::sync::OnceLock::new(),
            noatime_mount: std::sync::OnceLock::new(),
            lower_index,
            prefetch: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn prefetcher(&self) -> Option<&prefetch::Prefetcher> {
        self.prefetch
            .get_or_init(prefetch::Prefetcher::start)
            .as_ref()
    }

    /// Refuses a mount point that overlaps a layer (see
    /// `Layers::check_mountpoint`).
    pub fn check_mountpoint(&self, mp: &std::path::Path) -> std::result::Result<(), SetupError> {
        self.layers.check_mountpoint(mp)
    }

    /// How many lower directories the index holds (a statistic).
    pub fn lower_index_dirs(&self) -> usize {
        self.lower_index.len()
    }

    /// Saves the lower index for the next mount (when the mount ends).
    pub fn save_lower_index(&self) -> Result<()> {
        self.lower_index.save()
    }

    /// Installs the hook told about attribute changes plyfs makes on its own.
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.invalidator.set(f);
    }

    pub(crate) fn attr_changed(&self, ino: Ino) {
        if let Some(f) = self.invalidator.get() {
            f(ino);
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The union can be written to.
    pub fn writable(&self) -> bool {
        self.config.writable()
    }

    /// The writer of the marker format this mount uses.
    pub(crate) fn markers(&self) -> &markers::Writer {
        &self.layers.markers
    }

    pub(crate) fn node(&self, ino: Ino) -> Result<Arc<Node>> {
        self.inodes.get(ino).ok_or(Errno::ESTALE)
    }

    /// The st_ino a node reports.
    pub(crate) fn st_ino(&self, node: &Node) -> Ino {
        if node.ino == ROOT_INO {
            self.root_st_ino
        } else {
            node.ino
        }
    }

    /// Drops `n` kernel lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Number of union inodes currently known.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        if node.kind() != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let s = node.state.read();
        match s.real().ok_or(Errno::ESTALE)? {
            Real::Pinned { fd, .. } => sys::fs::readlinkat(fd.as_fd(), OsStr::new("")),
            r => {
                let (dir, name) = r.at().ok_or(Errno::EIO)?;
                sys::fs::readlinkat(dir, name)
            }
        }
    }

    /// Filesystem statistics: the upper's, or the top lower's when there is
    /// no upper. `f_namemax` is the smallest of all layers'.
    pub fn statfs(&self) -> Result<StatVfs> {
        let top = &self.layers.all[0];
        let mut st = sys::fs::fstatvfs(top.root.as_fd())?;
        for l in &self.layers.all[1..] {
            if let Ok(o) = sys::fs::fstatvfs(l.root.as_fd()) {
                st.f_namemax = st.f_namemax.min(o.f_namemax);
            }
        }
        Ok(st)
    }

    /// Fails with EROFS unless the union takes changes.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.writable() {
            Ok(())
        } else {
            Err(Errno::EROFS)
        }
    }
}

//! What a mount is asked to be.

use std::path::PathBuf;

/// The layers and behaviour of one union mount.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// Data-only lower layers, below the others: never looked up by name,
    /// only reached through metacopy redirects (composefs images).
    pub data_lowers: Vec<PathBuf>,
    /// The writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Scratch space on the upper's filesystem, for atomic copy-up.
    pub work: Option<PathBuf>,
    /// Store markers in the `user.*` namespace even where `trusted.*` works, as
    /// the kernel's `userxattr` option does.
    pub userxattr: bool,
    /// Refuse every change even though an upper is given.
    pub read_only: bool,
    /// Skip fsync/fdatasync on the upper ("volatile"): faster, and a crash
    /// may lose recent writes.
    pub volatile: bool,
    /// Keep the ownership, mode and type of objects the daemon cannot give
    /// them (no chown, no mknod) in an override-stat attribute, and report
    /// them through the mount (fuse-overlayfs's `xattr_permissions=`).
    pub override_stat: Option<OverrideStat>,
    /// No extended attributes through the mount (`noxattrs=1`).
    pub no_xattrs: bool,
    /// Directories report a link count of 1 (`static_nlink`).
    pub static_nlink: bool,
    /// Inode numbers fit in 32 bits, for 32-bit programs (`ino32_t`).
    pub ino32: bool,
    /// A change of metadata only (chmod, chown, times, xattrs) copies a
    /// lower file up without its data (`metacopy=on`, as the kernel's).
    pub metacopy: bool,
}

/// Where the override-stat attribute is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideStat {
    /// `xattr_permissions=1`: a namespace only privileged processes can
    /// set (`security.*`).
    Privileged,
    /// `xattr_permissions=2`: the `user.*` namespace, as containers-storage
    /// writes it for rootless containers.
    User,
}

impl Config {
    pub fn writable(&self) -> bool {
        self.upper.is_some() && !self.read_only
    }
}

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
    /// No POSIX ACL semantics (`noacl`): the ACL attributes are stored and
    /// read as any attribute, nothing inherits them and the kernel checks
    /// permissions by the mode alone.
    pub no_acl: bool,
    /// Directories report a link count of 1 (`static_nlink`).
    pub static_nlink: bool,
    /// Inode numbers fit in 32 bits, for 32-bit programs (`ino32_t`).
    pub ino32: bool,
    /// A change of metadata only (chmod, chown, times, xattrs) copies a
    /// lower file up without its data (`metacopy=on`, as the kernel's).
    pub metacopy: bool,
    /// The mount is `noatime`: plyfs's reads of upper files and
    /// directories leave their access times alone (lowers' are never
    /// touched), as the kernel's overlayfs opens real files O_NOATIME and
    /// updates the upper's atime only by the union's rules.
    pub noatime: bool,
    /// The mount is `nodiratime`: listing an upper directory leaves its
    /// access time alone.
    pub nodiratime: bool,
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

    /// Whether the union has POSIX ACLs: enforced by the kernel, kept in
    /// step with modes, inherited (not `noacl`, nor `noxattrs`).
    pub fn posix_acls(&self) -> bool {
        !self.no_acl && !self.no_xattrs
    }

    /// Flags for opening an upper file for I/O: O_NOATIME in a noatime
    /// mount (the system-call wrapper drops it where it is not permitted).
    pub(crate) fn upper_open_flags(&self) -> i32 {
        if self.noatime { libc::O_NOATIME } else { 0 }
    }

    /// Whether reading an upper directory may update its access time.
    pub(crate) fn upper_dir_atime(&self) -> bool {
        !self.noatime && !self.nodiratime
    }
}

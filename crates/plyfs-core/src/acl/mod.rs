//! POSIX ACLs through the union. With FUSE_POSIX_ACL the kernel checks
//! permissions against the ACL it reads from `system.posix_acl_access`,
//! and leaves the rest to the filesystem (fuse.h: "keeping the file mode
//! in sync with the ACL, and inheritance of default ACLs"):
//!
//! - new objects take their parent's default ACL, and the umask only where
//!   there is none (`posix_acl_create`; the kernel does not mask the mode
//!   for us, FUSE_DONT_MASK);
//! - setting an access ACL sets the mode, and chmod the ACL: the upper's
//!   filesystem does both for a real object; an object whose mode lives in
//!   an override attribute (`xattr_permissions`) keeps its ACL's owner,
//!   mask and other entries at its real mode (so the daemon can always
//!   use it) and reports them from the mode the union shows;
//! - a layer without ACL support has no ACLs (ENODATA, as the kernel's
//!   overlayfs answers), never an error for the kernel's permission
//!   checks, which would fail every access of a non-owner; setting one on
//!   an object that lives there is EOPNOTSUPP, as the kernel's overlayfs
//!   asks the object's own filesystem before copying it up.
//!
//! Setting one copies the object up first, as any attribute change. With
//! `noacl` none of this happens: the attributes pass as they are stored.
//! The ids entries name are the layers'; translating them for an id
//! mapping is the FUSE side's business, as for owners.

mod mode;
mod value;

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

pub use value::{Entry as AclEntry, PosixAcl, Tag as AclTag};

use crate::error::{Errno, Result};
use crate::inode::{Node, Real};
use crate::ownership::kept_mode;
use crate::sys::xattr;
use crate::{Caller, Overlay, SetAttr};

/// The attribute names, as the VFS spells them.
pub const ACCESS_XATTR: &str = "system.posix_acl_access";
pub const DEFAULT_XATTR: &str = "system.posix_acl_default";

/// Which of an object's two ACLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AclKind {
    /// Who may do what to the object.
    Access,
    /// What a directory's new entries start with.
    Default,
}

impl AclKind {
    /// The ACL an attribute name is, if any.
    pub fn of(name: &OsStr) -> Option<AclKind> {
        match name.as_encoded_bytes() {
            b"system.posix_acl_access" => Some(AclKind::Access),
            b"system.posix_acl_default" => Some(AclKind::Default),
            _ => None,
        }
    }

    fn xattr(self) -> &'static OsStr {
        OsStr::new(match self {
            AclKind::Access => ACCESS_XATTR,
            AclKind::Default => DEFAULT_XATTR,
        })
    }
}

/// The ACLs a new object starts with (from its parent's default ACL).
#[derive(Clone, Debug, Default)]
pub(crate) struct NewAcls {
    access: Option<PosixAcl>,
    /// Directories pass the default ACL on.
    default: Option<PosixAcl>,
}

impl Overlay {
    /// Whether the union applies ACL semantics (not `noacl`, and
    /// attributes at all).
    pub(crate) fn acls_on(&self) -> bool {
        self.config.posix_acls()
    }

    /// The permission bits and ACLs of a new object of type `kind` asking
    /// for `perm` in the upper directory `udir` (its parent's, copied up):
    /// the parent's default ACL applied, else the umask the kernel left to
    /// us (`None`: it applied it already). Symlinks take neither.
    pub(crate) fn creation_acls(
        &self,
        udir: BorrowedFd<'_>,
        kind: u32,
        perm: u32,
        umask: Option<u32>,
    ) -> Result<(u32, NewAcls)> {
        let masked = perm & !(umask.unwrap_or(0) & 0o777);
        if kind == libc::S_IFLNK || !self.acls_on() {
            return Ok((masked, NewAcls::default()));
        }
        let default = match xattr::get_vec(udir, OsStr::new("."), AclKind::Default.xattr()) {
            Ok(v) => v,
            // No ACLs on the upper's filesystem: none to inherit.
            Err(e) if e == Errno::EOPNOTSUPP => None,
            Err(e) => return Err(e),
        };
        let Some(default) = default
            .map(|v| PosixAcl::parse(&v))
            .transpose()?
            .filter(|d| !d.is_empty())
        else {
            return Ok((masked, NewAcls::default()));
        };
        let (perm, access) = default.inherit(perm)?;
        let default = (kind == libc::S_IFDIR).then_some(default);
        Ok((perm, NewAcls { access, default }))
    }

    /// Gives the new object `name` in `dir` (real mode `real_mode`) the
    /// ACLs it inherits. Its owner, mask and other entries follow the real
    /// mode, which is the one asked for except in an override layer.
    pub(crate) fn set_new_acls(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        real_mode: u32,
        acls: &NewAcls,
    ) -> Result<()> {
        if let Some(a) = &acls.access {
            let value = a.with_mode(real_mode).to_bytes();
            xattr::set(dir, name, AclKind::Access.xattr(), &value, 0)?;
        }
        if let Some(d) = &acls.default {
            xattr::set(dir, name, AclKind::Default.xattr(), &d.to_bytes(), 0)?;
        }
        Ok(())
    }

    /// An ACL of `node` (whose shown object is `real`) into `buf` (empty:
    /// its size).
    pub(crate) fn get_acl(
        &self,
        node: &Node,
        real: &Real,
        kind: AclKind,
        buf: &mut [u8],
    ) -> Result<usize> {
        let (dir, name) = real.xattr_target();
        let value = match xattr::get_vec(dir, name, kind.xattr()) {
            Ok(Some(v)) => v,
            Ok(None) => return Err(Errno::ENODATA),
            Err(e) if e == Errno::EOPNOTSUPP => return Err(Errno::ENODATA),
            Err(e) => return Err(e),
        };
        let shows_override = node.state.read().shown_ovr().is_some();
        let value = if kind == AclKind::Access && shows_override {
            let shown = self.node_attr(node)?.st_mode;
            PosixAcl::parse(&value)?.with_mode(shown).to_bytes()
        } else {
            value
        };
        if buf.is_empty() {
            return Ok(value.len());
        }
        let out = buf.get_mut(..value.len()).ok_or(Errno::ERANGE)?;
        out.copy_from_slice(&value);
        Ok(value.len())
    }

    /// Sets an ACL of `node` for `caller` (the owner or root: the kernel
    /// checked), copying it up first.
    pub(crate) fn set_acl(
        &self,
        node: &Arc<Node>,
        kind: AclKind,
        value: &[u8],
        caller: &Caller,
    ) -> Result<()> {
        let acl = PosixAcl::parse(value)?;
        if kind == AclKind::Default && !node.is_dir() {
            return if acl.is_empty() {
                Ok(())
            } else {
                Err(Errno::EACCES)
            };
        }
        self.check_acl_support(node)?;
        if kind == AclKind::Access {
            self.acl_kills_setgid(node, caller)?;
        }
        self.copy_up_meta(node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let (dir, name) = upper.xattr_target();
        // An empty ACL is none (the VFS removes the attribute for it).
        if acl.is_empty() {
            return match xattr::remove(dir, name, kind.xattr()) {
                Err(e) if e == Errno::ENODATA => Ok(()),
                r => r,
            };
        }
        let kept = node.state.read().upper_ovr().is_some();
        if kind == AclKind::Default || !kept {
            // The upper's filesystem keeps a real object's mode in step.
            return xattr::set(dir, name, kind.xattr(), value, 0);
        }
        // The mode lives in the override: it takes the ACL's bits, and
        // the stored ACL the real mode's.
        let shown = self.node_attr(node)?.st_mode;
        let (mode, extended) = acl.equiv_mode(shown);
        let set = SetAttr {
            mode: Some(mode & 0o7777),
            ..SetAttr::default()
        };
        self.set_kept_owner(node, &upper, &set)?;
        if extended {
            let real = acl.with_mode(kept_mode(node.kind(), mode)).to_bytes();
            xattr::set(dir, name, kind.xattr(), &real, 0)
        } else {
            match xattr::remove(dir, name, kind.xattr()) {
                Err(e) if e == Errno::ENODATA => Ok(()),
                r => r,
            }
        }
    }

    /// An ACL can be set or removed only where the object's layer has
    /// them: the kernel's overlayfs asks the filesystem the object is on
    /// before any copy-up (a lower without ACLs: EOPNOTSUPP, even over an
    /// upper with them).
    pub(crate) fn check_acl_support(&self, node: &Node) -> Result<()> {
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        let (dir, name) = real.xattr_target();
        match xattr::get(dir, name, AclKind::Access.xattr(), &mut []) {
            Err(e) if e == Errno::EOPNOTSUPP => Err(e),
            _ => Ok(()),
        }
    }

    /// Setting or removing an access ACL clears the set-group-ID bit when
    /// the caller is neither in the file's group nor privileged
    /// (`posix_acl_update_mode`; the upper's filesystem sees the daemon,
    /// which is, so the kernel's overlayfs does it first too).
    pub(crate) fn acl_kills_setgid(&self, node: &Arc<Node>, caller: &Caller) -> Result<()> {
        if caller.uid == 0 {
            return Ok(());
        }
        let st = self.node_attr(node)?;
        if st.st_mode & libc::S_ISGID == 0 || crate::process::in_group(caller, st.st_gid) {
            return Ok(());
        }
        let set = SetAttr {
            mode: Some(st.st_mode & 0o7777 & !libc::S_ISGID),
            ..SetAttr::default()
        };
        self.setattr(node.ino, &set, None).map(drop)
    }
}

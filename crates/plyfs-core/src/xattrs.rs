//! Extended attributes through the union: the real object's, minus the
//! union's own markers, which can be neither read nor set through it; none
//! at all in a `noxattrs` mount. Overlay attributes named through the
//! mount (a nested overlay's markers) are stored escaped (markers/).
//! POSIX ACLs have rules of their own (acl/).

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::acl::AclKind;
use crate::error::{Errno, Result};
use crate::inode::{Ino, Real};
use crate::markers;
use crate::sys::xattr;
use crate::{Caller, Overlay};

impl Overlay {
    /// Value of attribute `name`; an empty `buf` asks for its size.
    pub fn getxattr(&self, ino: Ino, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        self.check_xattrs()?;
        let name = real_attr_name(name)?;
        let node = self.node(ino)?;
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        if let Some(kind) = AclKind::of(&name).filter(|_| self.acls_on()) {
            return self.get_acl(&node, &real, kind, buf);
        }
        let (dir, n) = real.xattr_target();
        xattr::get(dir, n, &name, buf)
    }

    /// The NUL-separated names of the attributes users may see.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        self.check_xattrs()?;
        let real = self.real_of(ino)?;
        let (dir, n) = real.xattr_target();
        let list = xattr::list_vec(dir, n)?;
        let mut out = Vec::with_capacity(list.len());
        for n in xattr::split_names(&list) {
            if let Some(shown) = markers::xattr_shown(n.as_bytes()) {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets an attribute for `caller` (copying the object up); `flags`
    /// are XATTR_CREATE / XATTR_REPLACE, which the upper's filesystem
    /// applies.
    pub fn setxattr(
        &self,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: &Caller,
    ) -> Result<()> {
        self.check_xattrs()?;
        let name = real_attr_name(name)?;
        self.check_writable()?;
        let node = self.node(ino)?;
        if let Some(kind) = AclKind::of(&name).filter(|_| self.acls_on()) {
            return self.set_acl(&node, kind, value, caller);
        }
        self.copy_up_meta(&node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let (dir, n) = upper.xattr_target();
        xattr::set(dir, n, &name, value, flags)
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr, caller: &Caller) -> Result<()> {
        self.check_xattrs()?;
        let name = real_attr_name(name)?;
        self.check_writable()?;
        let node = self.node(ino)?;
        // Nothing to copy up for an attribute that is not there.
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        let (dir, n) = real.xattr_target();
        if let Err(e) = xattr::get(dir, n, &name, &mut [])
            && e == Errno::ENODATA
        {
            return Err(e);
        }
        if let Some(kind) = AclKind::of(&name).filter(|_| self.acls_on()) {
            self.check_acl_support(&node)?;
            if kind == AclKind::Access {
                self.acl_kills_setgid(&node, caller)?;
            }
        }
        self.copy_up_meta(&node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        let (dir, n) = upper.xattr_target();
        xattr::remove(dir, n, &name)
    }

    /// `noxattrs`: the answer fuse-overlayfs's users get.
    fn check_xattrs(&self) -> Result<()> {
        if self.config.no_xattrs {
            Err(Errno::EOPNOTSUPP)
        } else {
            Ok(())
        }
    }

    /// The object the union shows for `ino`: its upper, else its lower.
    fn real_of(&self, ino: Ino) -> Result<Real> {
        let node = self.node(ino)?;
        node.state.read().real().cloned().ok_or(Errno::ESTALE)
    }
}

/// The real name of an attribute named through the mount (overlay
/// attributes escaped); the union's own cannot be named. Names must be
/// valid C strings.
fn real_attr_name(name: &OsStr) -> Result<OsString> {
    if name.is_empty() || name.len() > 255 {
        return Err(Errno::ERANGE);
    }
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    markers::xattr_to_real(name).ok_or(Errno::EOPNOTSUPP)
}

//! Extended attributes through the union: the real object's, minus the
//! union's own markers, which can be neither read nor set through it.

use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::{Ino, Real};
use crate::markers;
use crate::sys::xattr;

impl Overlay {
    /// Value of attribute `name`; an empty `buf` asks for its size.
    pub fn getxattr(&self, ino: Ino, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        check_attr_name(name)?;
        let node = self.node(ino)?;
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        match real.at() {
            Some((dir, n)) => xattr::get(dir, n, name, buf),
            None => pinned_path(&real)
                .and_then(|p| ::xattr::get_deref(&p, name).map_err(Errno::from))
                .and_then(|v| match v {
                    None => Err(Errno::ENODATA),
                    Some(v) if buf.is_empty() => Ok(v.len()),
                    Some(v) if v.len() > buf.len() => Err(Errno::ERANGE),
                    Some(v) => {
                        buf[..v.len()].copy_from_slice(&v);
                        Ok(v.len())
                    }
                }),
        }
    }

    /// The NUL-separated names of the attributes users may see.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        let list = match real.at() {
            Some((dir, n)) => xattr::list_vec(dir, n)?,
            None => {
                let mut v = Vec::new();
                for n in ::xattr::list_deref(pinned_path(&real)?).map_err(Errno::from)? {
                    v.extend_from_slice(n.as_bytes());
                    v.push(0);
                }
                v
            }
        };
        let mut out = Vec::with_capacity(list.len());
        for n in xattr::split_names(&list) {
            if !markers::is_internal_xattr(n.as_bytes()) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets an attribute (copying the object up); `flags` are
    /// XATTR_CREATE / XATTR_REPLACE.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        check_attr_name(name)?;
        self.check_writable()?;
        let node = self.node(ino)?;
        self.copy_up(&node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        match upper.at() {
            Some((dir, n)) => xattr::set(dir, n, name, value, flags),
            None => {
                let p = pinned_path(&upper)?;
                let exists = ::xattr::get_deref(&p, name).map_err(Errno::from)?.is_some();
                if flags & xattr::CREATE != 0 && exists {
                    return Err(Errno::EEXIST);
                }
                if flags & xattr::REPLACE != 0 && !exists {
                    return Err(Errno::ENODATA);
                }
                ::xattr::set_deref(&p, name, value).map_err(Errno::from)
            }
        }
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        check_attr_name(name)?;
        self.check_writable()?;
        let node = self.node(ino)?;
        // Nothing to copy up for an attribute that is not there.
        let real = node.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        if let Some((dir, n)) = real.at() {
            match xattr::get(dir, n, name, &mut []) {
                Err(e) if e == Errno::ENODATA => return Err(e),
                _ => {}
            }
        }
        self.copy_up(&node)?;
        let upper = node.state.read().upper.clone().ok_or(Errno::EIO)?;
        match upper.at() {
            Some((dir, n)) => xattr::remove(dir, n, name),
            None => ::xattr::remove_deref(pinned_path(&upper)?, name).map_err(Errno::from),
        }
    }
}

/// Markers are the union's business; names must be valid C strings.
fn check_attr_name(name: &OsStr) -> Result<()> {
    if markers::is_internal_xattr(name.as_bytes()) {
        return Err(Errno::EOPNOTSUPP);
    }
    if name.is_empty() || name.len() > 255 {
        return Err(Errno::ERANGE);
    }
    CString::new(name.as_bytes())
        .map(drop)
        .map_err(|_| Errno::EINVAL)
}

/// `/proc/self/fd/N` of a pinned object: the xattr calls that follow it
/// reach the object itself.
fn pinned_path(real: &Real) -> Result<std::path::PathBuf> {
    match real {
        Real::Pinned { fd, .. } => {
            Ok(format!("/proc/self/fd/{}", crate::sys::fs::raw(&fd.as_fd())).into())
        }
        _ => Err(Errno::EIO),
    }
}

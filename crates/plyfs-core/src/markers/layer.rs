//! Markers of a layer outside any mount, for tools that build layers from
//! image archives and read uppers back into them (plyfs-image): OCI
//! whiteout names, the kernel's whiteouts and opaque attributes a layer
//! is converted to, the override-stat attribute a rootless layer keeps
//! ownership and device types in, and the metacopy mark of an upper file.
//! The spelling of every one of them stays in this module.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;

use super::{
    Attr, OCI_OPAQUE, OverrideNs, StatOverride, XattrNs, oci_whiteout_name, oci_whiteout_target,
};
use crate::error::{Errno, Result};
use crate::sys::fs::{self, Stat};
use crate::sys::xattr;

/// What a name in an OCI layer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OciName<'a> {
    /// `.wh.NAME`: hides NAME of the layers below.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: its directory hides the layers below.
    Opaque,
    /// Any other name, including other `.wh.` names (reserved: such an
    /// object can never be shown through a union).
    Plain,
}

/// Classifies a name of an OCI layer tar.
pub fn oci_name(name: &OsStr) -> OciName<'_> {
    if name == OCI_OPAQUE {
        OciName::Opaque
    } else if let Some(t) = oci_whiteout_target(name) {
        OciName::Whiteout(t)
    } else {
        OciName::Plain
    }
}

/// The OCI whiteout name of `name` (`.wh.NAME`).
pub fn oci_whiteout(name: &OsStr) -> OsString {
    oci_whiteout_name(name)
}

/// The OCI opaque marker's name (`.wh..wh..opq`).
pub fn oci_opaque() -> &'static OsStr {
    OsStr::new(OCI_OPAQUE)
}

/// Attribute names that belong to a union and never to a layer's content
/// (overlay markers, override-stat values): an image must not bring them
/// in, and a committed layer must not carry them out.
pub fn is_union_xattr(name: &OsStr) -> bool {
    super::is_internal_xattr(name.as_encoded_bytes())
}

/// Owner, mode, type and device of an object as an image says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with the set-ID and sticky bits.
    pub mode: u32,
    /// `S_IFMT` bits.
    pub kind: u32,
    pub rdev: u64,
}

impl From<Ownership> for StatOverride {
    fn from(o: Ownership) -> StatOverride {
        StatOverride {
            uid: o.uid,
            gid: o.gid,
            mode: o.mode & 0o7777,
            kind: Some(o.kind),
            rdev: o.rdev,
        }
    }
}

/// How a layer being built writes what a plain directory cannot hold
/// without privileges. `rootless`: ownership and device types go to
/// containers-storage's `user.containers.override_stat` (which plyfs and
/// fuse-overlayfs report through a mount), and converted markers to
/// `user.overlay.*` (what the kernel reads with `userxattr`); otherwise
/// real owners and devices, and `trusted.overlay.*` markers.
#[derive(Clone, Copy, Debug)]
pub struct LayerWriter {
    ns: XattrNs,
    overrides: Option<OverrideNs>,
}

impl LayerWriter {
    pub fn new(rootless: bool) -> LayerWriter {
        if rootless {
            LayerWriter {
                ns: XattrNs::User,
                overrides: Some(OverrideNs::Containers),
            }
        } else {
            LayerWriter {
                ns: XattrNs::Trusted,
                overrides: None,
            }
        }
    }

    /// Whether ownership and device types are kept in an attribute.
    pub fn keeps_overrides(&self) -> bool {
        self.overrides.is_some()
    }

    /// Records `own` for `name` in `dir` (`"."`: `dir` itself). The layer's
    /// root must carry one too, which is what makes the layer an override
    /// layer for whoever mounts it. A symlink cannot carry a `user.*`
    /// attribute: it keeps its real owner (as with fuse-overlayfs).
    pub fn set_ownership(&self, dir: BorrowedFd<'_>, name: &OsStr, own: Ownership) -> Result<()> {
        let Some(ns) = self.overrides else {
            return Ok(());
        };
        let value = StatOverride::from(own).format();
        match xattr::set(dir, name, ns.name(), &value, 0) {
            Err(e) if e == Errno::EPERM && own.kind == libc::S_IFLNK => Ok(()),
            r => r,
        }
    }

    /// A kernel whiteout (char 0/0) for `name` in `dir`, which any user may
    /// make since Linux 5.8.
    pub fn kernel_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        fs::mknodat(dir, name, libc::S_IFCHR, 0)
    }

    /// Marks directory `name` in `dir` opaque, as the kernel reads it.
    pub fn set_opaque(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        xattr::set(dir, name, self.ns.name(Attr::Opaque), b"y", 0)
    }
}

/// The override value of `name` in `dir` under the attribute the layer
/// root `root` carries (if it carries one): what a mount reports.
pub fn layer_override_ns(root: BorrowedFd<'_>) -> Result<Option<LayerOverrides>> {
    Ok(super::Markers::read(root, OsStr::new("."))?
        .override_ns()
        .map(LayerOverrides))
}

/// The override-stat attribute a layer's objects carry.
#[derive(Clone, Copy, Debug)]
pub struct LayerOverrides(OverrideNs);

impl LayerOverrides {
    /// `st` as a mount reports it: with the object's override applied.
    pub fn apply(&self, dir: BorrowedFd<'_>, name: &OsStr, st: &mut Stat) -> Result<()> {
        if let Some(o) = super::read_override(dir, name, self.0)? {
            o.apply(st);
        }
        Ok(())
    }
}

/// Whether an upper file is a metacopy (its data is still in a lower).
pub fn is_metacopy(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    for attr in ["trusted.overlay.metacopy", "user.overlay.metacopy"] {
        match xattr::get(dir, name, OsStr::new(attr), &mut []) {
            Ok(_) => return Ok(true),
            Err(e) if e == Errno::ENODATA || e == Errno::EOPNOTSUPP || e == Errno::EPERM => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

//! Markers read raw, for checking an upper offline (`plyfs check`): every
//! `overlay.*` and override-stat attribute of one object with its value as
//! stored, whether or not it parses, and the few verbs a repair needs. A
//! mount reads markers through [`super::Markers`], which drops what it
//! cannot use; a check must see exactly that.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use super::{
    Attr, Nlink, OverrideNs, Redirect, StatOverride, TRUSTED_PREFIX, USER_PREFIX, XattrNs,
};
use crate::error::{Errno, Result};
use crate::sys::xattr;

/// What one stored attribute is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RawKind {
    Opaque,
    Redirect,
    Origin,
    Impure,
    Nlink,
    Whiteout,
    Metacopy,
    Override(OverrideNs),
}

/// One union attribute of an object, as stored.
#[derive(Clone, Debug)]
pub(crate) struct RawMarker {
    /// The attribute's full name (what a repair removes).
    pub attr: OsString,
    pub kind: RawKind,
    /// The namespace of an `overlay.*` attribute (`None` for overrides).
    pub ns: Option<XattrNs>,
    pub value: Vec<u8>,
}

/// The union attributes of `name` in `dir` (`"."`: `dir` itself), raw.
/// Escaped attributes (`overlay.overlay.*`, set through a mount) are the
/// user's, and other `overlay.*` names are none the kernel knows: both are
/// left out. A filesystem without attributes has none.
pub(crate) fn read_raw(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<RawMarker>> {
    let list = match xattr::list_vec(dir, name) {
        Ok(l) => l,
        Err(e) if e == Errno::EOPNOTSUPP => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for attr in xattr::split_names(&list) {
        let b = attr.as_bytes();
        let (kind, ns) = if let Some(o) = OverrideNs::of_name(b) {
            (RawKind::Override(o), None)
        } else {
            let (ns, suffix) = if let Some(s) = b.strip_prefix(TRUSTED_PREFIX) {
                (XattrNs::Trusted, s)
            } else if let Some(s) = b.strip_prefix(USER_PREFIX) {
                (XattrNs::User, s)
            } else {
                continue;
            };
            let kind = match suffix {
                b"opaque" => RawKind::Opaque,
                b"redirect" => RawKind::Redirect,
                b"origin" => RawKind::Origin,
                b"impure" => RawKind::Impure,
                b"nlink" => RawKind::Nlink,
                b"whiteout" => RawKind::Whiteout,
                b"metacopy" => RawKind::Metacopy,
                _ => continue,
            };
            (kind, Some(ns))
        };
        // Gone since the listing: nothing to check.
        let Some(value) = xattr::get_vec(dir, name, attr)? else {
            continue;
        };
        out.push(RawMarker {
            attr: attr.to_os_string(),
            kind,
            ns,
            value,
        });
    }
    Ok(out)
}

/// Removes one attribute that [`read_raw`] found.
pub(crate) fn remove_raw(dir: BorrowedFd<'_>, name: &OsStr, m: &RawMarker) -> Result<()> {
    match xattr::remove(dir, name, &m.attr) {
        Err(e) if e == Errno::ENODATA => Ok(()),
        r => r,
    }
}

/// Marks directory `dir` impure in `ns`: its entries' inode numbers must
/// be looked up (they carry origins). Only ever a hint to readers.
pub(crate) fn set_impure(dir: BorrowedFd<'_>, ns: XattrNs) -> Result<()> {
    xattr::set(dir, OsStr::new("."), ns.name(Attr::Impure), b"y", 0)
}

/// Marks directory `dir` as holding xattr whiteouts, in `ns`.
pub(crate) fn set_xwhiteouts(dir: BorrowedFd<'_>, ns: XattrNs) -> Result<()> {
    xattr::set(dir, OsStr::new("."), ns.name(Attr::Opaque), b"x", 0)
}

impl RawMarker {
    /// Why the kernel (or plyfs) would refuse or misread this value;
    /// `None` when it reads right.
    pub fn defect(&self) -> Option<&'static str> {
        match self.kind {
            // The kernel fails the lookup with EINVAL; plyfs also refuses
            // `.` and `..` components, which could lead out of the layers.
            RawKind::Redirect => Redirect::parse(&self.value)
                .is_err()
                .then_some("a redirect that does not parse (the lookup fails)"),
            // The kernel falls back to the real count; so does plyfs.
            RawKind::Nlink => Nlink::parse(&self.value)
                .is_none()
                .then_some("a persistent link count that does not parse"),
            RawKind::Origin => crate::inode::origin::OriginFh::decode(&self.value)
                .is_none()
                .then_some("an origin that does not decode (the kernel fails the lookup with EIO)"),
            RawKind::Metacopy => (!metacopy_value_ok(&self.value))
                .then_some("a metacopy mark the kernel cannot read (it fails with EIO)"),
            RawKind::Override(_) => StatOverride::parse(&self.value).is_none().then_some(
                "an override-stat value that does not parse (the real owner and mode show)",
            ),
            RawKind::Opaque => (!matches!(self.value.first(), Some(b'y' | b'x')))
                .then_some("an opaque value other than y or x (ignored)"),
            RawKind::Impure | RawKind::Whiteout => None,
        }
    }

    /// `overlay.opaque=y`.
    pub fn is_opaque(&self) -> bool {
        self.kind == RawKind::Opaque && self.value.first() == Some(&b'y')
    }

    /// `overlay.opaque=x`: the directory holds xattr whiteouts.
    pub fn marks_xwhiteouts(&self) -> bool {
        self.kind == RawKind::Opaque && self.value.first() == Some(&b'x')
    }
}

/// The kernel's `struct ovl_metacopy`: empty, or a header of version 0
/// whose length byte is the value's length (4 bytes, plus a digest of at
/// most 64).
fn metacopy_value_ok(v: &[u8]) -> bool {
    const MIN: usize = 4;
    const MAX: usize = MIN + 64;
    v.is_empty() || ((MIN..=MAX).contains(&v.len()) && v[0] == 0 && usize::from(v[1]) == v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metacopy_values() {
        assert!(metacopy_value_ok(b""));
        assert!(metacopy_value_ok(&[0, 4, 0, 0]));
        assert!(!metacopy_value_ok(&[0, 5, 0, 0]));
        assert!(!metacopy_value_ok(&[1, 4, 0, 0]));
        assert!(!metacopy_value_ok(b"y"));
    }

    #[test]
    fn defects() {
        let m = |kind, v: &[u8]| RawMarker {
            attr: OsString::new(),
            kind,
            ns: Some(XattrNs::Trusted),
            value: v.to_vec(),
        };
        assert!(m(RawKind::Redirect, b"a/b").defect().is_some());
        assert!(m(RawKind::Redirect, b"/a/b").defect().is_none());
        assert!(m(RawKind::Nlink, b"U+1").defect().is_none());
        assert!(m(RawKind::Nlink, b"U+x").defect().is_some());
        assert!(m(RawKind::Origin, b"junk").defect().is_some());
        assert!(m(RawKind::Opaque, b"y").defect().is_none());
        assert!(m(RawKind::Opaque, b"n").defect().is_some());
        assert!(
            m(RawKind::Override(OverrideNs::Containers), b"0:0:0644:file")
                .defect()
                .is_none()
        );
        assert!(
            m(RawKind::Override(OverrideNs::Containers), b"0:0")
                .defect()
                .is_some()
        );
    }
}

//! On-disk markers: whiteouts, opaque directories, redirects and the other
//! `overlay.*` attributes. This module is the only one that knows how any
//! of them is spelled: it reads every format plyfs meets in a layer (the
//! kernel's `trusted.overlay.*` and `user.overlay.*`, char 0/0 and xattr
//! whiteouts, OCI `.wh.` files, override-stat attributes) and, through
//! [`Writer`], writes the one format the mount was set up with.

pub(crate) mod audit;
mod entries;
pub mod layer;
mod stat_override;
mod value;
mod write;

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Errno, Result};
use crate::sys::fs::{self, Stat};
use crate::sys::xattr;
use crate::util::exists;

pub(crate) use entries::{Kind, read_layer_dir};
pub(crate) use stat_override::{OverrideNs, StatOverride};
pub(crate) use value::{Nlink, NlinkBase, Redirect};
pub(crate) use write::Writer;

/// OCI whiteout: `.wh.NAME` hides NAME.
const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker: its directory hides everything below it.
const OCI_OPAQUE: &str = ".wh..wh..opq";

const TRUSTED_PREFIX: &[u8] = b"trusted.overlay.";
const USER_PREFIX: &[u8] = b"user.overlay.";

/// Which `*.overlay.` namespace a mount writes its markers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

/// The attributes overlayfs keeps under `overlay.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    Opaque,
    Redirect,
    Origin,
    Impure,
    Nlink,
    Whiteout,
    Metacopy,
}

impl XattrNs {
    /// The full attribute name, e.g. `trusted.overlay.opaque`.
    fn name(self, a: Attr) -> &'static OsStr {
        let s: &'static str = match (self, a) {
            (XattrNs::Trusted, Attr::Opaque) => "trusted.overlay.opaque",
            (XattrNs::Trusted, Attr::Redirect) => "trusted.overlay.redirect",
            (XattrNs::Trusted, Attr::Origin) => "trusted.overlay.origin",
            (XattrNs::Trusted, Attr::Impure) => "trusted.overlay.impure",
            (XattrNs::Trusted, Attr::Nlink) => "trusted.overlay.nlink",
            (XattrNs::Trusted, Attr::Whiteout) => "trusted.overlay.whiteout",
            (XattrNs::Trusted, Attr::Metacopy) => "trusted.overlay.metacopy",
            (XattrNs::User, Attr::Opaque) => "user.overlay.opaque",
            (XattrNs::User, Attr::Redirect) => "user.overlay.redirect",
            (XattrNs::User, Attr::Origin) => "user.overlay.origin",
            (XattrNs::User, Attr::Impure) => "user.overlay.impure",
            (XattrNs::User, Attr::Nlink) => "user.overlay.nlink",
            (XattrNs::User, Attr::Whiteout) => "user.overlay.whiteout",
            (XattrNs::User, Attr::Metacopy) => "user.overlay.metacopy",
        };
        OsStr::new(s)
    }

    pub fn label(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.*",
            XattrNs::User => "user.overlay.*",
        }
    }
}

/// Attribute names that belong to the union itself: never shown through
/// the mount, never settable through it. The override-stat attributes are
/// among them whether or not the mount reads them: what they say shows in
/// stat, and setting one would change an owner behind the kernel's checks.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(TRUSTED_PREFIX)
        || name.starts_with(USER_PREFIX)
        || OverrideNs::of_name(name).is_some()
}

/// The kernel's escape of overlay attributes set through a union (for
/// nested overlays): `trusted.overlay.X` set through the mount is stored
/// as `trusted.overlay.overlay.X` on the real object, and read back (and
/// listed) as `trusted.overlay.X`; the same for `user.overlay.`. An
/// escaped attribute is no marker of this union: a union whose layers
/// live inside this one sees it as its own.
const ESCAPE: &[u8] = b"overlay.";

/// The real name of an attribute named through the mount; `None` for the
/// names the union keeps to itself (override-stat), which cannot be.
pub fn xattr_to_real(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    if OverrideNs::of_name(b).is_some() {
        return None;
    }
    let prefix = [TRUSTED_PREFIX, USER_PREFIX]
        .into_iter()
        .find(|p| b.starts_with(p));
    Some(match prefix {
        Some(p) => {
            let mut v = p.to_vec();
            v.extend_from_slice(ESCAPE);
            v.extend_from_slice(&b[p.len()..]);
            std::os::unix::ffi::OsStringExt::from_vec(v)
        }
        None => name.to_os_string(),
    })
}

/// The name a real attribute shows as through the mount: escaped ones
/// unescaped, the union's own markers none.
pub fn xattr_shown(real: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    for p in [TRUSTED_PREFIX, USER_PREFIX] {
        if let Some(rest) = real.strip_prefix(p) {
            let escaped = rest.strip_prefix(ESCAPE)?;
            let mut v = p.to_vec();
            v.extend_from_slice(escaped);
            return Some(std::borrow::Cow::Owned(v));
        }
    }
    if OverrideNs::of_name(real).is_some() {
        return None;
    }
    Some(std::borrow::Cow::Borrowed(real))
}

/// A kernel-format whiteout: a character device 0/0.
pub fn is_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Names that read back as markers and so cannot be user objects.
pub fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OCI_WHITEOUT_PREFIX)
}

/// `.wh.NAME` → `Some(NAME)` for OCI whiteouts (the opaque marker excluded).
fn oci_whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b.starts_with(OCI_WHITEOUT_PREFIX)
        && name != OCI_OPAQUE
        && b.len() > OCI_WHITEOUT_PREFIX.len()
    {
        Some(OsStr::from_bytes(&b[OCI_WHITEOUT_PREFIX.len()..]))
    } else {
        None
    }
}

/// `.wh.NAME` for a name.
fn oci_whiteout_name(name: &OsStr) -> OsString {
    let mut v = OCI_WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    std::os::unix::ffi::OsStringExt::from_vec(v)
}

/// An OCI whiteout `.wh.NAME` stands beside `name` in `dir`.
pub(crate) fn has_oci_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    exists(dir, &oci_whiteout_name(name))
}

/// Directory `dir` holds the OCI opaque marker.
pub(crate) fn has_oci_opaque(dir: BorrowedFd<'_>) -> Result<bool> {
    exists(dir, OsStr::new(OCI_OPAQUE))
}

/// The object `name` (with stat `st`) is itself a whiteout: a char 0/0,
/// or an xattr whiteout (a zero-size regular file with `overlay.whiteout`;
/// the kernel's lookup takes one for a whiteout whether or not its
/// directory is marked as holding any).
pub(crate) fn is_whiteout_at(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<bool> {
    Ok(is_whiteout(st) || is_xwhiteout(dir, name, st)?)
}

/// An xattr whiteout (see [`is_whiteout_at`]).
pub(crate) fn is_xwhiteout(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> Result<bool> {
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
        return Ok(false);
    }
    Ok(Markers::read(dir, name)?.whiteout)
}

/// What occupies a name in an upper directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UpperSlot {
    Empty,
    /// A whiteout in its place: a char 0/0, or an xattr whiteout.
    Whiteout,
    Dir,
    Other,
}

pub(crate) fn upper_slot(udir: BorrowedFd<'_>, name: &OsStr) -> Result<UpperSlot> {
    match fs::fstatat(udir, name) {
        Ok(st) if is_whiteout_at(udir, name, &st)? => Ok(UpperSlot::Whiteout),
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(UpperSlot::Dir),
        Ok(_) => Ok(UpperSlot::Other),
        Err(e) if e == Errno::ENOENT => Ok(UpperSlot::Empty),
        Err(e) => Err(e),
    }
}

/// The overlay attributes of one object in one layer, read in both
/// namespaces (a layer may come from a rootless tool or from the kernel).
#[derive(Clone, Debug, Default)]
pub(crate) struct Markers {
    /// `overlay.opaque` = "y".
    pub opaque: bool,
    /// `overlay.opaque` = "x": the directory holds xattr whiteouts.
    pub xwhiteouts: bool,
    pub redirect: Option<Vec<u8>>,
    pub origin: Option<Vec<u8>>,
    pub impure: bool,
    pub nlink: Option<Nlink>,
    /// `overlay.whiteout` is set (an xattr whiteout if it is an empty file).
    pub whiteout: bool,
    /// `overlay.metacopy` is set: a file copied up without its data, which
    /// still comes from a lower (found by name, or by the file's redirect).
    pub metacopy: bool,
    /// Override-stat attributes, by [`OverrideNs::ALL`] position: present
    /// or not, and their value if it parses.
    overrides: [Option<Option<StatOverride>>; 3],
}

impl Markers {
    /// Reads the markers of `name` in `dir` (`"."`: the directory itself;
    /// `""`: the object `dir` refers to). One listxattr answers the common
    /// case of an object without any.
    pub fn read(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Markers> {
        let list = match xattr::list_vec(dir, name) {
            Ok(l) => l,
            // A filesystem without xattrs holds no markers.
            Err(e) if e == Errno::EOPNOTSUPP => return Ok(Markers::default()),
            Err(e) => return Err(e),
        };
        let mut m = Markers::default();
        for attr in xattr::split_names(&list) {
            m.take(attr.as_bytes(), || xattr::get_vec(dir, name, attr))?;
        }
        Ok(m)
    }

    /// Takes in one attribute named `attr`, whose value `value` reads (not
    /// at all for names that are no marker; `None`: gone meanwhile). Values
    /// are read as the kernel reads them: the one-byte flags (`opaque`,
    /// `impure`) count only when they are exactly that byte, as the kernel
    /// reads them into a one-byte buffer (a longer value does not fit).
    pub fn take(
        &mut self,
        attr: &[u8],
        value: impl FnOnce() -> Result<Option<Vec<u8>>>,
    ) -> Result<()> {
        if let Some(ns) = OverrideNs::of_name(attr) {
            // Present is what marks a layer root; a value the daemon
            // may not read (user.* needs read permission) is none.
            let v = value().ok().flatten();
            self.overrides[ns as usize] = Some(v.and_then(|v| StatOverride::parse(&v)));
            return Ok(());
        }
        let trusted = attr.starts_with(TRUSTED_PREFIX);
        let suffix = if let Some(s) = attr.strip_prefix(TRUSTED_PREFIX) {
            s
        } else if let Some(s) = attr.strip_prefix(USER_PREFIX) {
            s
        } else {
            return Ok(());
        };
        let value = || -> Result<Vec<u8>> { Ok(value()?.unwrap_or_default()) };
        // The trusted namespace wins when both carry one.
        match suffix {
            b"opaque" => match value()?.as_slice() {
                b"y" => self.opaque = true,
                b"x" => self.xwhiteouts = true,
                _ => {}
            },
            b"redirect" if self.redirect.is_none() || trusted => self.redirect = Some(value()?),
            b"origin" if self.origin.is_none() || trusted => self.origin = Some(value()?),
            b"impure" => self.impure = value()? == b"y",
            b"nlink" if self.nlink.is_none() || trusted => self.nlink = Nlink::parse(&value()?),
            b"whiteout" => self.whiteout = true,
            b"metacopy" => self.metacopy = true,
            _ => {}
        }
        Ok(())
    }

    /// The first override-stat attribute present, in the order
    /// fuse-overlayfs looks for one on a layer root.
    pub fn override_ns(&self) -> Option<OverrideNs> {
        OverrideNs::ALL
            .into_iter()
            .find(|&ns| self.overrides[ns as usize].is_some())
    }

    /// The override stored under `ns`, if one is there and reads right.
    pub fn stat_override(&self, ns: OverrideNs) -> Option<StatOverride> {
        self.overrides[ns as usize].flatten()
    }
}

/// The override of `name` in `dir` stored under `ns` (one getxattr: a
/// layer's objects carry the name its root does). An object the daemon
/// may not read the attributes of, or a value that does not parse, has
/// none: its real attributes stand.
pub(crate) fn read_override(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    ns: OverrideNs,
) -> Result<Option<StatOverride>> {
    match xattr::get_vec(dir, name, ns.name()) {
        Ok(Some(v)) => {
            let o = StatOverride::parse(&v);
            if o.is_none() {
                tracing::debug!(?name, "unreadable override-stat value ignored");
            }
            Ok(o)
        }
        Ok(None) => Ok(None),
        Err(e) if e == Errno::EOPNOTSUPP || e == Errno::EACCES || e == Errno::EPERM => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names() {
        assert_eq!(
            oci_whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(oci_whiteout_target(OsStr::new(OCI_OPAQUE)), None);
        assert_eq!(oci_whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(oci_whiteout_target(OsStr::new("foo")), None);
        assert_eq!(oci_whiteout_name(OsStr::new("a")), ".wh.a");
        assert!(is_reserved_name(OsStr::new(".wh.x")));
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.overlay.redirect"));
        assert!(!is_internal_xattr(b"user.foo"));
        assert!(is_internal_xattr(b"user.containers.override_stat"));
        assert!(is_internal_xattr(b"security.fuseoverlayfs.override_stat"));
        assert!(is_internal_xattr(b"user.fuseoverlayfs.override_stat"));
        assert!(!is_internal_xattr(b"user.containers.other"));
        let real = |n: &str| xattr_to_real(OsStr::new(n)).map(|r| r.into_string().unwrap());
        assert_eq!(
            real("trusted.overlay.opaque").unwrap(),
            "trusted.overlay.overlay.opaque"
        );
        assert_eq!(real("user.overlay.x").unwrap(), "user.overlay.overlay.x");
        assert_eq!(real("user.other").unwrap(), "user.other");
        assert_eq!(real("user.containers.override_stat"), None);
        let shown = |n: &str| xattr_shown(n.as_bytes()).map(|s| s.to_vec());
        assert_eq!(shown("trusted.overlay.opaque"), None);
        assert_eq!(
            shown("trusted.overlay.overlay.opaque").unwrap(),
            b"trusted.overlay.opaque"
        );
        assert_eq!(
            shown("user.overlay.overlay.overlay.a").unwrap(),
            b"user.overlay.overlay.a"
        );
        assert_eq!(
            shown("security.capability").unwrap(),
            b"security.capability"
        );
        assert_eq!(shown("security.fuseoverlayfs.override_stat"), None);
    }
}

//! On-disk markers: whiteouts, opaque directories, redirects and the other
//! `overlay.*` attributes, in every format plyfs reads (kernel, `user.*`,
//! OCI `.wh.` files) and the one it writes.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Errno, Result};
use crate::sys::fs::Stat;
use crate::sys::xattr;

/// OCI whiteout: `.wh.NAME` hides NAME.
pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI opaque marker: its directory hides everything below it.
pub const OCI_OPAQUE: &str = ".wh..wh..opq";

pub const TRUSTED_PREFIX: &[u8] = b"trusted.overlay.";
pub const USER_PREFIX: &[u8] = b"user.overlay.";

/// Which `*.overlay.` namespace a mount writes its markers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

/// The attributes overlayfs keeps under `overlay.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attr {
    Opaque,
    Redirect,
    Origin,
    Impure,
    Nlink,
    Whiteout,
}

impl XattrNs {
    pub fn prefix(self) -> &'static [u8] {
        match self {
            XattrNs::Trusted => TRUSTED_PREFIX,
            XattrNs::User => USER_PREFIX,
        }
    }

    /// The full attribute name, e.g. `trusted.overlay.opaque`.
    pub fn name(self, a: Attr) -> &'static OsStr {
        let s: &'static str = match (self, a) {
            (XattrNs::Trusted, Attr::Opaque) => "trusted.overlay.opaque",
            (XattrNs::Trusted, Attr::Redirect) => "trusted.overlay.redirect",
            (XattrNs::Trusted, Attr::Origin) => "trusted.overlay.origin",
            (XattrNs::Trusted, Attr::Impure) => "trusted.overlay.impure",
            (XattrNs::Trusted, Attr::Nlink) => "trusted.overlay.nlink",
            (XattrNs::Trusted, Attr::Whiteout) => "trusted.overlay.whiteout",
            (XattrNs::User, Attr::Opaque) => "user.overlay.opaque",
            (XattrNs::User, Attr::Redirect) => "user.overlay.redirect",
            (XattrNs::User, Attr::Origin) => "user.overlay.origin",
            (XattrNs::User, Attr::Impure) => "user.overlay.impure",
            (XattrNs::User, Attr::Nlink) => "user.overlay.nlink",
            (XattrNs::User, Attr::Whiteout) => "user.overlay.whiteout",
        };
        OsStr::new(s)
    }
}

/// Attribute names that belong to the union itself: never shown through
/// the mount, never settable through it.
pub fn is_internal_xattr(name: &[u8]) -> bool {
    name.starts_with(TRUSTED_PREFIX) || name.starts_with(USER_PREFIX)
}

/// A kernel-format whiteout: a character device 0/0.
pub fn is_whiteout(st: &Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// `.wh.NAME` → `Some(NAME)` for OCI whiteouts (the opaque marker excluded).
pub fn oci_whiteout_target(name: &OsStr) -> Option<&OsStr> {
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

/// Names that read back as markers and so cannot be user objects.
pub fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(OCI_WHITEOUT_PREFIX)
}

/// `.wh.NAME` for a name.
pub fn oci_whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut v = OCI_WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    std::os::unix::ffi::OsStringExt::from_vec(v)
}

/// The overlay attributes of one object in one layer, read in both
/// namespaces (a layer may come from a rootless tool or from the kernel).
#[derive(Clone, Debug, Default)]
pub struct Markers {
    /// `overlay.opaque` = "y".
    pub opaque: bool,
    /// `overlay.opaque` = "x": the directory holds xattr whiteouts.
    pub xwhiteouts: bool,
    pub redirect: Option<Vec<u8>>,
    pub origin: Option<Vec<u8>>,
    pub impure: bool,
    pub nlink: Option<Vec<u8>>,
    /// `overlay.whiteout` is set (an xattr whiteout if its directory says so).
    pub whiteout: bool,
}

impl Markers {
    /// Reads the markers of `name` in `dir` (`"."`: the directory itself).
    /// One listxattr answers the common case of an object without any.
    pub fn read(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Markers> {
        let list = match xattr::list_vec(dir, name) {
            Ok(l) => l,
            // A filesystem without xattrs holds no markers.
            Err(e) if e == Errno::EOPNOTSUPP => return Ok(Markers::default()),
            Err(e) => return Err(e),
        };
        let mut m = Markers::default();
        for attr in xattr::split_names(&list) {
            let b = attr.as_bytes();
            let suffix = if let Some(s) = b.strip_prefix(TRUSTED_PREFIX) {
                s
            } else if let Some(s) = b.strip_prefix(USER_PREFIX) {
                s
            } else {
                continue;
            };
            let value =
                || -> Result<Vec<u8>> { Ok(xattr::get_vec(dir, name, attr)?.unwrap_or_default()) };
            match suffix {
                b"opaque" => match value()?.first() {
                    Some(b'y') => m.opaque = true,
                    Some(b'x') => m.xwhiteouts = true,
                    _ => {}
                },
                // The trusted namespace wins when both carry one.
                b"redirect" if m.redirect.is_none() || b.starts_with(TRUSTED_PREFIX) => {
                    m.redirect = Some(value()?)
                }
                b"origin" if m.origin.is_none() || b.starts_with(TRUSTED_PREFIX) => {
                    m.origin = Some(value()?)
                }
                b"impure" => m.impure = value()?.first() == Some(&b'y'),
                b"nlink" if m.nlink.is_none() || b.starts_with(TRUSTED_PREFIX) => {
                    m.nlink = Some(value()?)
                }
                b"whiteout" => m.whiteout = true,
                _ => {}
            }
        }
        Ok(m)
    }
}

/// A validated directory redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// Another name in the same parent directory.
    Relative(Vec<u8>),
    /// Path components from the layer roots.
    Absolute(Vec<Vec<u8>>),
}

impl Redirect {
    /// Checks a redirect the way the kernel does, and refuses `.`/`..`
    /// components, which the kernel refuses at lookup: a redirect must
    /// never lead outside the layers.
    pub fn parse(raw: &[u8]) -> Result<Redirect> {
        if raw.is_empty() || raw.len() >= libc::PATH_MAX as usize || raw.contains(&0) {
            return Err(Errno::EINVAL);
        }
        let ok = |c: &[u8]| !c.is_empty() && c != b"." && c != b".." && c.len() <= 255;
        if raw[0] == b'/' {
            let comps: Vec<Vec<u8>> = raw[1..].split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            if comps.iter().all(|c| ok(c)) {
                return Ok(Redirect::Absolute(comps));
            }
            // "/" alone would redirect to a layer root, which no rename makes.
            Err(Errno::EINVAL)
        } else if !raw.contains(&b'/') && ok(raw) {
            Ok(Redirect::Relative(raw.to_vec()))
        } else {
            Err(Errno::EINVAL)
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Redirect::Relative(n) => n.clone(),
            Redirect::Absolute(c) => {
                let mut v = Vec::new();
                for comp in c {
                    v.push(b'/');
                    v.extend_from_slice(comp);
                }
                v
            }
        }
    }
}

/// Parses the kernel's persistent link count, "L+n"/"U-n": the union's
/// nlink relative to the lower or the upper inode's.
pub fn parse_nlink(raw: &[u8]) -> Option<(NlinkBase, i64)> {
    let base = match raw.first()? {
        b'L' => NlinkBase::Lower,
        b'U' => NlinkBase::Upper,
        _ => return None,
    };
    let rest = std::str::from_utf8(&raw[1..]).ok()?.trim_end_matches('\0');
    if !rest.starts_with(['+', '-']) {
        return None;
    }
    let diff: i64 = rest.parse().ok()?;
    Some((base, diff))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NlinkBase {
    Lower,
    Upper,
}

pub fn format_nlink(base: NlinkBase, diff: i64) -> Vec<u8> {
    let c = match base {
        NlinkBase::Lower => 'L',
        NlinkBase::Upper => 'U',
    };
    format!("{c}{diff:+}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_forms() {
        assert_eq!(
            Redirect::parse(b"d").unwrap(),
            Redirect::Relative(b"d".to_vec())
        );
        assert_eq!(
            Redirect::parse(b"/a/b").unwrap(),
            Redirect::Absolute(vec![b"a".to_vec(), b"b".to_vec()])
        );
        for bad in [
            &b""[..],
            b"/",
            b"//a",
            b"/a//b",
            b"/a/",
            b"a/b",
            b"..",
            b"/a/../b",
            b"/./a",
        ] {
            assert!(
                Redirect::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(Redirect::parse(b"/x/y").unwrap().to_bytes(), b"/x/y");
    }

    #[test]
    fn nlink_roundtrip() {
        assert_eq!(parse_nlink(b"U+0"), Some((NlinkBase::Upper, 0)));
        assert_eq!(parse_nlink(b"L-2"), Some((NlinkBase::Lower, -2)));
        assert_eq!(parse_nlink(b"X+1"), None);
        assert_eq!(parse_nlink(b"U1"), None);
        assert_eq!(format_nlink(NlinkBase::Upper, -1), b"U-1");
        assert_eq!(format_nlink(NlinkBase::Lower, 0), b"L+0");
    }

    #[test]
    fn oci_names() {
        assert_eq!(
            oci_whiteout_target(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(oci_whiteout_target(OsStr::new(OCI_OPAQUE)), None);
        assert_eq!(oci_whiteout_target(OsStr::new(".wh.")), None);
        assert_eq!(oci_whiteout_target(OsStr::new("foo")), None);
        assert!(is_reserved_name(OsStr::new(".wh.x")));
        assert!(is_internal_xattr(b"trusted.overlay.opaque"));
        assert!(is_internal_xattr(b"user.overlay.redirect"));
        assert!(!is_internal_xattr(b"user.foo"));
    }
}

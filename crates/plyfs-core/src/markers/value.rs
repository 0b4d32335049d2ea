//! The values of the markers that carry one: directory redirects and the
//! persistent link count. Both come from disk, so both are checked the way
//! the kernel checks them; a forged value is refused, never trusted.

use crate::error::{Errno, Result};

/// A validated directory redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// Another name in the same parent directory.
    Relative(Vec<u8>),
    /// Path components from the layer roots.
    Absolute(Vec<Vec<u8>>),
}

impl Redirect {
    /// Reads a redirect the way the kernel does (`ovl_get_redirect_xattr`
    /// and the lookups that follow it), so that a forged value gives the
    /// kernel's answer: the value is a C string (it ends at a NUL); an
    /// empty one, an absolute one with an empty component (`/`, `//a`,
    /// `/a/`) and a relative one holding a `/` are EINVAL; a `.` or `..`
    /// component, or an empty name, is EACCES (the kernel's lookup of one
    /// refuses it: a redirect never leads out of, or up within, a layer).
    /// Neither the length nor the number of components is limited, as in
    /// the kernel: a component too long for a name is simply found in no
    /// layer, and a walk ends at the first component a layer lacks.
    pub fn parse(raw: &[u8]) -> Result<Redirect> {
        if raw.is_empty() {
            return Err(Errno::EINVAL);
        }
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        let lookup_refuses = |c: &[u8]| c.is_empty() || c == b"." || c == b"..";
        if let Some(rest) = raw.strip_prefix(b"/") {
            let comps: Vec<Vec<u8>> = rest.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
            if comps.iter().any(Vec::is_empty) {
                return Err(Errno::EINVAL);
            }
            if comps.iter().any(|c| lookup_refuses(c)) {
                return Err(Errno::EACCES);
            }
            Ok(Redirect::Absolute(comps))
        } else if raw.contains(&b'/') {
            Err(Errno::EINVAL)
        } else if lookup_refuses(raw) {
            Err(Errno::EACCES)
        } else {
            Ok(Redirect::Relative(raw.to_vec()))
        }
    }

    pub fn is_absolute(raw: &[u8]) -> bool {
        raw.first() == Some(&b'/')
    }

    /// The stored form of an absolute redirect to `comps`.
    pub fn absolute(comps: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in comps {
            v.push(b'/');
            v.extend_from_slice(c);
        }
        v
    }
}

/// What a persistent link count is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NlinkBase {
    Lower,
    Upper,
}

/// The kernel's persistent link count of an indexed hard link, "L+n" or
/// "U-n": the union's count as a difference to the lower or the upper
/// inode's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Nlink {
    pub base: NlinkBase,
    pub diff: i64,
}

impl Nlink {
    /// Reads a stored count as the kernel's `ovl_get_nlink` does: at most
    /// 12 bytes (a longer value does not fit its buffer), a C string, `L`
    /// or `U`, a sign, then an `int` in decimal as `kstrtoint` reads it
    /// (one trailing newline allowed). `None` for anything else: the
    /// kernel then falls back to the real count, and so do readers here.
    pub fn parse(raw: &[u8]) -> Option<Nlink> {
        if raw.len() > 12 {
            return None;
        }
        let raw = raw.split(|&b| b == 0).next()?;
        let base = match raw.first()? {
            b'L' => NlinkBase::Lower,
            b'U' => NlinkBase::Upper,
            _ => return None,
        };
        let rest = raw.get(1..)?;
        let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
        let (negative, digits) = match rest.split_first()? {
            (b'+', d) => (false, d),
            (b'-', d) => (true, d),
            _ => return None,
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // At most 10 digits fit in 12 bytes: no overflow in an i64.
        let magnitude: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        let diff = if negative { -magnitude } else { magnitude };
        // The kernel reads it as an int.
        i32::try_from(diff).ok()?;
        Some(Nlink { base, diff })
    }

    pub fn format(&self) -> Vec<u8> {
        let c = match self.base {
            NlinkBase::Lower => 'L',
            NlinkBase::Upper => 'U',
        };
        format!("{c}{:+}", self.diff).into_bytes()
    }

    /// The union's count, given the lower and upper inodes' own counts (0
    /// once every name is gone); `None` when the stored difference leads
    /// out of range (a corrupt or forged value, which the kernel also
    /// refuses: the caller falls back to the real count).
    pub fn union_count(&self, lower: u64, upper: u64) -> Option<u64> {
        let basis = match self.base {
            NlinkBase::Lower => lower,
            NlinkBase::Upper => upper,
        };
        let n = i64::try_from(basis).ok()?.checked_add(self.diff)?;
        // The kernel adds in an int: a sum past i32::MAX is corrupt.
        (0..=i64::from(i32::MAX)).contains(&n).then_some(n as u64)
    }

    /// The value that makes the union's count `union` while the upper
    /// inode's own is `upper`; `None` when no stored value can say it.
    pub fn relative_to_upper(union: u64, upper: u64) -> Option<Nlink> {
        let diff = i64::try_from(union)
            .ok()?
            .checked_sub(i64::try_from(upper).ok()?)?;
        i32::try_from(diff).ok()?;
        Some(Nlink {
            base: NlinkBase::Upper,
            diff,
        })
    }
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
        // As the kernel answers: EINVAL for what it calls an invalid
        // redirect, EACCES for a name its lookup refuses.
        for (bad, errno) in [
            (&b""[..], Errno::EINVAL),
            (b"/", Errno::EINVAL),
            (b"//a", Errno::EINVAL),
            (b"/a//b", Errno::EINVAL),
            (b"/a/", Errno::EINVAL),
            (b"a/b", Errno::EINVAL),
            (b"..", Errno::EACCES),
            (b".", Errno::EACCES),
            (b"/a/../b", Errno::EACCES),
            (b"/./a", Errno::EACCES),
            (b"/../../etc", Errno::EACCES),
            (b"\0a", Errno::EACCES),
        ] {
            assert_eq!(
                Redirect::parse(bad),
                Err(errno),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A C string: what follows a NUL is not part of it.
        assert_eq!(
            Redirect::parse(b"/e\0/../x").unwrap(),
            Redirect::Absolute(vec![b"e".to_vec()])
        );
        assert_eq!(
            Redirect::parse(b"d\0").unwrap(),
            Redirect::Relative(b"d".to_vec())
        );
        // No limit on length or depth, nor on a component's length (such
        // a name is in no layer).
        let deep: Vec<u8> = b"/a".repeat(10_000);
        assert!(matches!(Redirect::parse(&deep), Ok(Redirect::Absolute(c)) if c.len() == 10_000));
        let long = [b"/".to_vec(), vec![b'b'; 300]].concat();
        assert!(Redirect::parse(&long).is_ok());
        assert_eq!(Redirect::absolute(&[b"x".to_vec(), b"y".to_vec()]), b"/x/y");
    }

    #[test]
    fn nlink_roundtrip() {
        let n = |base, diff| Some(Nlink { base, diff });
        assert_eq!(Nlink::parse(b"U+0"), n(NlinkBase::Upper, 0));
        assert_eq!(Nlink::parse(b"L-2"), n(NlinkBase::Lower, -2));
        assert_eq!(Nlink::parse(b"X+1"), None);
        assert_eq!(Nlink::parse(b"U1"), None);
        // The kernel's kstrtoint: a NUL ends the value, one newline may.
        assert_eq!(Nlink::parse(b"U+3\0junk"), n(NlinkBase::Upper, 3));
        assert_eq!(Nlink::parse(b"L-1\n"), n(NlinkBase::Lower, -1));
        for bad in [
            &b"L+9223372036854775807"[..],
            b"L+000000000001",
            b"L++1",
            b"L+-1",
            b"L-+1",
            b"L+",
            b"L+ 1",
            b"L+1\n\n",
            b"L+0x10",
            b"L",
            b"",
            b"\0L+1",
        ] {
            assert_eq!(Nlink::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let upper = |diff| Nlink {
            base: NlinkBase::Upper,
            diff,
        };
        assert_eq!(upper(-1).format(), b"U-1");
        assert_eq!(
            Nlink {
                base: NlinkBase::Lower,
                diff: 0
            }
            .format(),
            b"L+0"
        );
    }

    /// Forged values never wrap, panic or give a count of zero or less.
    #[test]
    fn nlink_out_of_range_is_corrupt() {
        assert_eq!(Nlink::parse(b"U+99999999999999999999"), None);
        assert_eq!(Nlink::parse(b"U+4294967296"), None);
        let max = Nlink::parse(b"U+2147483647").unwrap();
        assert_eq!(max.union_count(1, u64::MAX), None);
        assert_eq!(max.union_count(1, u32::MAX as u64), None);
        assert_eq!(max.union_count(1, 1), None);
        assert_eq!(max.union_count(1, 0), Some(2147483647));
        let min = Nlink::parse(b"L-2147483648").unwrap();
        assert_eq!(min.union_count(1, 1), None);
        assert_eq!(Nlink::parse(b"L-1").unwrap().union_count(1, 5), Some(0));
        assert_eq!(Nlink::parse(b"L-2").unwrap().union_count(1, 5), None);
        assert_eq!(Nlink::parse(b"L+1").unwrap().union_count(2, 5), Some(3));
        assert_eq!(Nlink::relative_to_upper(3, 1).unwrap().diff, 2);
        assert_eq!(Nlink::relative_to_upper(u64::MAX, 0), None);
        assert_eq!(Nlink::relative_to_upper(0, 1 << 40), None);
    }
}

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
    pub fn parse(raw: &[u8]) -> Option<Nlink> {
        let base = match raw.first()? {
            b'L' => NlinkBase::Lower,
            b'U' => NlinkBase::Upper,
            _ => return None,
        };
        let rest = std::str::from_utf8(&raw[1..]).ok()?.trim_end_matches('\0');
        if !rest.starts_with(['+', '-']) {
            return None;
        }
        // The kernel reads it as an int.
        let diff: i32 = rest.parse().ok()?;
        Some(Nlink {
            base,
            diff: i64::from(diff),
        })
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
        (0..=i64::from(u32::MAX)).contains(&n).then_some(n as u64)
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
        assert_eq!(Redirect::absolute(&[b"x".to_vec(), b"y".to_vec()]), b"/x/y");
    }

    #[test]
    fn nlink_roundtrip() {
        let n = |base, diff| Some(Nlink { base, diff });
        assert_eq!(Nlink::parse(b"U+0"), n(NlinkBase::Upper, 0));
        assert_eq!(Nlink::parse(b"L-2"), n(NlinkBase::Lower, -2));
        assert_eq!(Nlink::parse(b"X+1"), None);
        assert_eq!(Nlink::parse(b"U1"), None);
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
        assert_eq!(max.union_count(1, 1), Some(2147483648));
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

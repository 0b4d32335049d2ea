//! How an ACL and a mode agree, as the VFS keeps them agreeing
//! (fs/posix_acl.c): the owner, group-class and other bits of the mode are
//! the ACL's owner, mask (or group, without a mask) and other entries.
//! With FUSE_POSIX_ACL that is the daemon's job; these are the kernel's
//! three rules, on plain values.

use super::value::{PosixAcl, Tag};
use crate::error::{Errno, Result};

const RWX: u32 = 0o777;

impl PosixAcl {
    /// `posix_acl_equiv_mode`: the mode `mode` becomes with this ACL as
    /// its access ACL (type and set-ID bits kept), and whether the ACL
    /// says more than a mode can (named entries, a mask), so that it must
    /// be stored.
    pub fn equiv_mode(&self, mode: u32) -> (u32, bool) {
        let mut bits = 0;
        let mut extended = false;
        for e in &self.entries {
            let p = u32::from(e.perm & 7);
            match e.tag {
                Tag::UserObj => bits |= p << 6,
                Tag::GroupObj => bits |= p << 3,
                Tag::Other => bits |= p,
                // Sorted after the group entry: the mask wins.
                Tag::Mask => {
                    bits = (bits & !0o070) | (p << 3);
                    extended = true;
                }
                Tag::User | Tag::Group => extended = true,
            }
        }
        ((mode & !RWX) | bits, extended)
    }

    /// `posix_acl_create_masq`: a parent's default ACL applied to a new
    /// object asking for `mode`. Returns the object's mode and its access
    /// ACL, `None` when a mode says it all.
    pub fn inherit(&self, mode: u32) -> Result<(u32, Option<PosixAcl>)> {
        let mut acl = self.clone();
        let mut m = mode & RWX;
        let (mut group_obj, mut mask) = (None, None);
        let mut extended = false;
        for (i, e) in acl.entries.iter_mut().enumerate() {
            match e.tag {
                Tag::UserObj => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= (u32::from(e.perm) << 6) | !0o700;
                }
                Tag::User | Tag::Group => extended = true,
                Tag::GroupObj => group_obj = Some(i),
                Tag::Other => {
                    e.perm &= (m & 7) as u16;
                    m &= u32::from(e.perm) | !0o007;
                }
                Tag::Mask => {
                    mask = Some(i);
                    extended = true;
                }
            }
        }
        // The mask bounds the group class when there is one, else the
        // group entry does (the kernel's EIO: a default ACL without one is
        // not something a filesystem hands out).
        let g = mask.or(group_obj).ok_or(Errno::EIO)?;
        let e = &mut acl.entries[g];
        e.perm &= ((m >> 3) & 7) as u16;
        m &= (u32::from(e.perm) << 3) | !0o070;
        let mode = (mode & !RWX) | (m & RWX);
        Ok((mode, extended.then_some(acl)))
    }

    /// `posix_acl_chmod`: the ACL after its object's mode became `mode`
    /// (owner, mask or group, and other entries follow the mode; named
    /// entries stay).
    pub fn with_mode(&self, mode: u32) -> PosixAcl {
        let mut acl = self.clone();
        let has_mask = acl.entries.iter().any(|e| e.tag == Tag::Mask);
        for e in &mut acl.entries {
            let perm = match e.tag {
                Tag::UserObj => (mode >> 6) & 7,
                Tag::Mask => (mode >> 3) & 7,
                Tag::GroupObj if !has_mask => (mode >> 3) & 7,
                Tag::Other => mode & 7,
                _ => continue,
            };
            e.perm = perm as u16;
        }
        acl
    }
}

#[cfg(test)]
mod tests {
    use super::super::value::Entry;
    use super::*;

    fn acl(text: &[(Tag, u16, u32)]) -> PosixAcl {
        PosixAcl {
            entries: text
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    fn perms(a: &PosixAcl) -> Vec<u16> {
        a.entries.iter().map(|e| e.perm).collect()
    }

    const N: u32 = u32::MAX;

    #[test]
    fn equivalent_and_extended_acls() {
        let plain = acl(&[
            (Tag::UserObj, 6, N),
            (Tag::GroupObj, 4, N),
            (Tag::Other, 0, N),
        ]);
        assert_eq!(plain.equiv_mode(0o102777), (0o102640, false));
        let masked = acl(&[
            (Tag::UserObj, 7, N),
            (Tag::User, 7, 1001),
            (Tag::GroupObj, 7, N),
            (Tag::Mask, 5, N),
            (Tag::Other, 1, N),
        ]);
        assert_eq!(masked.equiv_mode(0o100000), (0o100751, true));
    }

    #[test]
    fn inheritance_as_posix_acl_create() {
        // default: user::rwx user:1001:rwx group::r-x mask::rwx other::r-x
        let d = acl(&[
            (Tag::UserObj, 7, N),
            (Tag::User, 7, 1001),
            (Tag::GroupObj, 5, N),
            (Tag::Mask, 7, N),
            (Tag::Other, 5, N),
        ]);
        // A file asking 0666: the mode is the request masked by the ACL,
        // named entries stay, the mask follows the group bits asked for.
        let (mode, a) = d.inherit(0o100666).unwrap();
        assert_eq!(mode, 0o100664);
        assert_eq!(perms(&a.unwrap()), [6, 7, 5, 6, 4]);
        // Set-ID bits are not the ACL's business.
        assert_eq!(d.inherit(0o42777).unwrap().0, 0o42775);
        // Without named entries or a mask nothing needs storing.
        let plain = acl(&[
            (Tag::UserObj, 7, N),
            (Tag::GroupObj, 0, N),
            (Tag::Other, 0, N),
        ]);
        assert_eq!(plain.inherit(0o100644).unwrap(), (0o100600, None));
        // A default ACL without a group entry is not one.
        let broken = acl(&[(Tag::UserObj, 7, N), (Tag::Other, 0, N)]);
        assert_eq!(broken.inherit(0o644), Err(Errno::EIO));
    }

    #[test]
    fn chmod_moves_the_mask() {
        let a = acl(&[
            (Tag::UserObj, 6, N),
            (Tag::User, 7, 1001),
            (Tag::GroupObj, 4, N),
            (Tag::Mask, 7, N),
            (Tag::Other, 4, N),
        ]);
        assert_eq!(perms(&a.with_mode(0o640)), [6, 7, 4, 4, 0]);
        let plain = acl(&[
            (Tag::UserObj, 6, N),
            (Tag::GroupObj, 4, N),
            (Tag::Other, 4, N),
        ]);
        assert_eq!(perms(&plain.with_mode(0o751)), [7, 5, 1]);
        // A mode made from an ACL gives the ACL back.
        let (mode, _) = a.equiv_mode(0o100000);
        assert_eq!(a.with_mode(mode), a);
    }
}

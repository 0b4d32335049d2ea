//! The value of a POSIX ACL attribute (`system.posix_acl_access`,
//! `system.posix_acl_default`) as the kernel hands it across the xattr
//! interface: a little-endian version-2 header, then 8-byte entries of tag,
//! permissions and id (`include/uapi/linux/posix_acl_xattr.h`).
//!
//! Values come from the kernel (a request) or from a layer's filesystem,
//! so they are normally well formed; parsing is still total, because a
//! daemon must never trust bytes it did not make: whatever does not read
//! as an ACL is EINVAL, never a panic. Order is not required (the kernel
//! hands a daemon in a user namespace entries whose ids it cannot name as
//! -1, out of order): entries are put in the kernel's order as they are
//! read.

use crate::error::{Errno, Result};

/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
const HEADER_LEN: usize = 4;
const ENTRY_LEN: usize = 8;
/// `ACL_UNDEFINED_ID`: the id of entries that name nobody.
const UNDEFINED_ID: u32 = u32::MAX;
/// More entries than fit in the largest value the VFS passes (64 KiB) is
/// not an ACL.
const MAX_ENTRIES: usize = (65536 - HEADER_LEN) / ENTRY_LEN;

/// What an entry is about, in the kernel's order (entries are sorted by
/// tag, then by id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    /// The file's owner (the mode's owner bits).
    UserObj,
    /// A named user.
    User,
    /// The file's group (the mode's group bits when there is no mask).
    GroupObj,
    /// A named group.
    Group,
    /// The most the named entries and the group may get (the mode's group
    /// bits when present).
    Mask,
    /// Everybody else (the mode's other bits).
    Other,
}

impl Tag {
    fn from_raw(raw: u16) -> Option<Tag> {
        Some(match raw {
            0x01 => Tag::UserObj,
            0x02 => Tag::User,
            0x04 => Tag::GroupObj,
            0x08 => Tag::Group,
            0x10 => Tag::Mask,
            0x20 => Tag::Other,
            _ => return None,
        })
    }

    fn raw(self) -> u16 {
        match self {
            Tag::UserObj => 0x01,
            Tag::User => 0x02,
            Tag::GroupObj => 0x04,
            Tag::Group => 0x08,
            Tag::Mask => 0x10,
            Tag::Other => 0x20,
        }
    }

    /// Whether the entry names a user or group by id.
    pub fn is_named(self) -> bool {
        matches!(self, Tag::User | Tag::Group)
    }
}

/// One entry: `perm` is read 4, write 2, execute 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: Tag,
    pub perm: u16,
    /// The uid (`User`) or gid (`Group`); nothing for the others.
    pub id: u32,
}

/// A whole ACL. Empty is a valid value: the kernel reads it as "no ACL".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PosixAcl {
    pub entries: Vec<Entry>,
}

impl PosixAcl {
    /// Reads an attribute value; anything malformed is EINVAL.
    pub fn parse(raw: &[u8]) -> Result<PosixAcl> {
        let (header, body) = raw.split_at_checked(HEADER_LEN).ok_or(Errno::EINVAL)?;
        if le32(header) != Some(VERSION) || body.len() % ENTRY_LEN != 0 {
            return Err(Errno::EINVAL);
        }
        if body.len() / ENTRY_LEN > MAX_ENTRIES {
            return Err(Errno::EINVAL);
        }
        let entries = body
            .chunks_exact(ENTRY_LEN)
            .map(|e| {
                let tag = le16(&e[0..2])
                    .and_then(Tag::from_raw)
                    .ok_or(Errno::EINVAL)?;
                let perm = le16(&e[2..4]).ok_or(Errno::EINVAL)?;
                let id = le32(&e[4..8]).ok_or(Errno::EINVAL)?;
                Ok(Entry {
                    tag,
                    perm,
                    id: if tag.is_named() { id } else { UNDEFINED_ID },
                })
            })
            .collect::<Result<Vec<Entry>>>()?;
        let mut acl = PosixAcl { entries };
        acl.check()?;
        acl.sort();
        Ok(acl)
    }

    /// The attribute value, in the kernel's layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.entries.len());
        v.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            v.extend_from_slice(&e.tag.raw().to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            let id = if e.tag.is_named() { e.id } else { UNDEFINED_ID };
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `posix_acl_valid`'s rules but order: permissions within rwx;
    /// exactly one owner, group and other entry; a mask when anything is
    /// named, at most one.
    fn check(&self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let mut count = [0usize; 6];
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return Err(Errno::EINVAL);
            }
            count[e.tag as usize] += 1;
        }
        let [user_obj, user, group_obj, group, mask, other] = count;
        let named = user + group > 0;
        if user_obj != 1 || group_obj != 1 || other != 1 || mask > 1 || (named && mask == 0) {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// The kernel's order: by tag, named entries by id.
    fn sort(&mut self) {
        self.entries.sort_by_key(|e| (e.tag, e.id));
    }

    /// The same ACL with the ids of named entries translated (an id
    /// mapping); `None` from `uid`/`gid` (no mapping) is EINVAL. Entries
    /// are put back in the kernel's order, which a mapping may change.
    pub fn map_ids(
        &self,
        uid: impl Fn(u32) -> Option<u32>,
        gid: impl Fn(u32) -> Option<u32>,
    ) -> Result<PosixAcl> {
        let entries = self
            .entries
            .iter()
            .map(|e| {
                let id = match e.tag {
                    Tag::User => uid(e.id).ok_or(Errno::EINVAL)?,
                    Tag::Group => gid(e.id).ok_or(Errno::EINVAL)?,
                    _ => e.id,
                };
                Ok(Entry { id, ..*e })
            })
            .collect::<Result<Vec<Entry>>>()?;
        let mut acl = PosixAcl { entries };
        acl.sort();
        Ok(acl)
    }
}

fn le16(b: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

fn le32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: Tag, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    /// `user::rw- user:1001:r-- group::r-- group:50:rwx mask::rwx other::---`
    fn sample() -> PosixAcl {
        PosixAcl {
            entries: vec![
                e(Tag::UserObj, 6, UNDEFINED_ID),
                e(Tag::User, 4, 1001),
                e(Tag::GroupObj, 4, UNDEFINED_ID),
                e(Tag::Group, 7, 50),
                e(Tag::Mask, 7, UNDEFINED_ID),
                e(Tag::Other, 0, UNDEFINED_ID),
            ],
        }
    }

    #[test]
    fn round_trip_in_the_kernels_layout() {
        let bytes = sample().to_bytes();
        assert_eq!(bytes.len(), 4 + 6 * 8);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        // user:1001:r--
        assert_eq!(&bytes[12..20], &[0x02, 0, 4, 0, 0xe9, 0x03, 0, 0]);
        assert_eq!(PosixAcl::parse(&bytes).unwrap(), sample());
        // A header alone is the empty ACL.
        assert_eq!(PosixAcl::parse(&[2, 0, 0, 0]).unwrap(), PosixAcl::default());
    }

    #[test]
    fn malformed_values_are_einval() {
        let good = sample().to_bytes();
        let einval = |v: &[u8]| assert_eq!(PosixAcl::parse(v), Err(Errno::EINVAL), "{v:?}");
        einval(&[]);
        einval(&[2, 0, 0]);
        einval(&[1, 0, 0, 0]);
        einval(&good[..good.len() - 1]);
        let mut bad_tag = good.clone();
        bad_tag[4] = 0x40;
        einval(&bad_tag);
        let mut bad_perm = good.clone();
        bad_perm[6] = 8;
        einval(&bad_perm);
        // A second owner, a missing mask, a missing owner.
        let mut twice = sample();
        twice.entries.insert(1, e(Tag::UserObj, 4, UNDEFINED_ID));
        einval(&twice.to_bytes());
        let mut no_mask = sample();
        no_mask.entries.remove(4);
        einval(&no_mask.to_bytes());
        let mut no_owner = sample();
        no_owner.entries.remove(0);
        einval(&no_owner.to_bytes());
        // Ids of unnamed entries are not looked at.
        let mut odd_id = good.clone();
        odd_id[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(PosixAcl::parse(&odd_id).unwrap(), sample());
    }

    #[test]
    fn out_of_order_entries_are_sorted() {
        // As the kernel hands them to a daemon in a user namespace: an id
        // it cannot name is -1, before the others of its tag.
        let mut v = sample();
        v.entries.insert(1, e(Tag::User, 6, UNDEFINED_ID));
        v.entries.swap(0, 5);
        let acl = PosixAcl::parse(&v.to_bytes()).unwrap();
        let tags: Vec<(Tag, u32)> = acl.entries.iter().map(|e| (e.tag, e.id)).collect();
        assert_eq!(
            tags,
            [
                (Tag::UserObj, UNDEFINED_ID),
                (Tag::User, 1001),
                (Tag::User, UNDEFINED_ID),
                (Tag::GroupObj, UNDEFINED_ID),
                (Tag::Group, 50),
                (Tag::Mask, UNDEFINED_ID),
                (Tag::Other, UNDEFINED_ID),
            ]
        );
    }

    #[test]
    fn no_input_panics() {
        // Every short value, and a few thousand pseudo-random ones built
        // from valid entries with bytes flipped (xorshift, fixed seed).
        for len in 0..64 {
            for fill in [0u8, 1, 2, 0x20, 0xff] {
                let _ = PosixAcl::parse(&vec![fill; len]);
            }
        }
        let good = sample().to_bytes();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut v = good.clone();
            let len = (next() as usize) % (v.len() + 9);
            v.resize(len, (next() & 0xff) as u8);
            for _ in 0..(next() % 4) {
                if !v.is_empty() {
                    let i = (next() as usize) % v.len();
                    v[i] = (next() & 0xff) as u8;
                }
            }
            if let Ok(acl) = PosixAcl::parse(&v) {
                assert_eq!(PosixAcl::parse(&acl.to_bytes()).unwrap(), acl);
            }
        }
        assert!(PosixAcl::parse(&vec![2; 70_000]).is_err());
    }

    #[test]
    fn ids_map_and_stay_sorted() {
        let m = sample()
            .map_ids(|u| Some(if u == 1001 { 5 } else { u }), |g| Some(g + 1))
            .unwrap();
        let named: Vec<(Tag, u32)> = m
            .entries
            .iter()
            .filter(|e| e.tag.is_named())
            .map(|e| (e.tag, e.id))
            .collect();
        assert_eq!(named, [(Tag::User, 5), (Tag::Group, 51)]);
        assert_eq!(m.entries[0].id, UNDEFINED_ID);
        // Two users that swap order under the mapping are sorted again.
        let mut two = sample();
        two.entries.insert(2, e(Tag::User, 1, 2000));
        let swapped = two
            .map_ids(|u| Some(if u == 2000 { 10 } else { u }), Some)
            .unwrap();
        assert_eq!(PosixAcl::parse(&swapped.to_bytes()).unwrap(), swapped);
        assert_eq!(
            sample().map_ids(|_| None, Some),
            Err(Errno::EINVAL),
            "an id without a mapping cannot be stored"
        );
    }
}

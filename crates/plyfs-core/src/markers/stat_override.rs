//! The override-stat attribute: the owner, mode and type an object has in
//! the union when the real object cannot carry them (a daemon without
//! CAP_CHOWN or CAP_MKNOD), in the form containers-storage writes it —
//! `UID:GID:0MODE:TYPE` — and fuse-overlayfs's older `UID:GID:MODE`.
//! Values come from disk, so parsing refuses anything it cannot read
//! exactly; the real object's attributes then stand.

use std::ffi::OsStr;

use crate::sys::fs::Stat;

/// The attribute names an override may be stored under. A layer uses one,
/// chosen by what its root carries (or, for the upper, by the mount's
/// `xattr_permissions=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideNs {
    /// `security.fuseoverlayfs.override_stat` (`xattr_permissions=1`):
    /// only privileged processes can set it.
    Privileged,
    /// `user.containers.override_stat` (`xattr_permissions=2`), what
    /// containers-storage writes for rootless containers.
    Containers,
    /// `user.fuseoverlayfs.override_stat`, what older fuse-overlayfs wrote.
    Fuse,
}

impl OverrideNs {
    /// In the order fuse-overlayfs looks for them on a layer root.
    pub const ALL: [OverrideNs; 3] = [
        OverrideNs::Privileged,
        OverrideNs::Containers,
        OverrideNs::Fuse,
    ];

    pub fn name(self) -> &'static OsStr {
        OsStr::new(match self {
            OverrideNs::Privileged => "security.fuseoverlayfs.override_stat",
            OverrideNs::Containers => "user.containers.override_stat",
            OverrideNs::Fuse => "user.fuseoverlayfs.override_stat",
        })
    }

    pub fn of_name(name: &[u8]) -> Option<OverrideNs> {
        Self::ALL
            .into_iter()
            .find(|ns| ns.name().as_encoded_bytes() == name)
    }
}

/// One override value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatOverride {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits with set-user-ID, set-group-ID and sticky.
    pub mode: u32,
    /// File type bits (`S_IFMT`); `None` when the value does not say (the
    /// older three-field form), and the real type stands.
    pub kind: Option<u32>,
    /// Device number, for character and block devices.
    pub rdev: u64,
}

impl StatOverride {
    /// What a real object's own attributes say, as an override.
    pub fn from_stat(st: &Stat) -> StatOverride {
        StatOverride {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind: Some(st.st_mode & libc::S_IFMT),
            rdev: st.st_rdev,
        }
    }

    /// Parses `UID:GID:MODE[:TYPE]`. MODE is octal; in the three-field
    /// form it may carry the type bits too. A device type may carry more
    /// `-` parts after its numbers (containers-storage keeps them for
    /// later use).
    pub fn parse(raw: &[u8]) -> Option<StatOverride> {
        // Tools written in C may store the terminating NUL.
        let s = std::str::from_utf8(raw).ok()?.trim_end_matches('\0');
        let mut fields = s.split(':');
        // (uid_t)-1 is no owner (chown(2) reads it as "unchanged"): a
        // value naming it is as unreadable as one that does not parse.
        let id = |f: &str| decimal(f).filter(|&n| n != u32::MAX);
        let uid = id(fields.next()?)?;
        let gid = id(fields.next()?)?;
        let raw_mode = octal(fields.next()?)?;
        let typ = fields.next();
        if fields.next().is_some() {
            return None;
        }
        let (kind, rdev) = match typ {
            Some(t) => {
                if raw_mode & !0o7777 != 0 {
                    return None;
                }
                let (k, r) = parse_type(t)?;
                (Some(k), r)
            }
            None => {
                let k = raw_mode & libc::S_IFMT;
                if raw_mode & !(0o7777 | libc::S_IFMT) != 0 || (k != 0 && !known_kind(k)) {
                    return None;
                }
                ((k != 0).then_some(k), 0)
            }
        };
        Some(StatOverride {
            uid,
            gid,
            mode: raw_mode & 0o7777,
            kind,
            rdev,
        })
    }

    /// The stored form: as containers-storage formats it (`%d:%d:%04o:%s`),
    /// or the three-field form when the type is not known.
    pub fn format(&self) -> Vec<u8> {
        let (uid, gid, mode) = (self.uid, self.gid, self.mode & 0o7777);
        let typ = match self.kind {
            None => return format!("{uid}:{gid}:{mode:04o}").into_bytes(),
            Some(libc::S_IFDIR) => "dir".to_string(),
            Some(libc::S_IFLNK) => "symlink".to_string(),
            Some(libc::S_IFIFO) => "pipe".to_string(),
            Some(libc::S_IFSOCK) => "socket".to_string(),
            Some(libc::S_IFBLK) => format!("block-{}-{}", major(self.rdev), minor(self.rdev)),
            Some(libc::S_IFCHR) => format!("char-{}-{}", major(self.rdev), minor(self.rdev)),
            Some(_) => "file".to_string(),
        };
        format!("{uid}:{gid}:{mode:04o}:{typ}").into_bytes()
    }

    /// Reports `st` as this override says (see [`StatOverride::reported`]).
    pub fn apply(&self, st: &mut Stat) {
        st.st_uid = self.uid;
        st.st_gid = self.gid;
        (st.st_mode, st.st_rdev) = self.reported(st.st_mode, st.st_rdev);
    }

    /// Mode and device number reported for a real object with `mode` and
    /// `rdev`. The type is taken only where the real object is a regular
    /// file standing in for something without content (a device, a pipe,
    /// a socket): a directory or symlink cannot be faked, and a real one is
    /// never reported as something else.
    pub fn reported(&self, mode: u32, rdev: u64) -> (u32, u64) {
        let real = mode & libc::S_IFMT;
        match self.kind {
            Some(k @ (libc::S_IFCHR | libc::S_IFBLK)) if real == libc::S_IFREG => {
                (k | (self.mode & 0o7777), self.rdev)
            }
            Some(k @ (libc::S_IFIFO | libc::S_IFSOCK)) if real == libc::S_IFREG => {
                (k | (self.mode & 0o7777), 0)
            }
            _ => (real | (self.mode & 0o7777), rdev),
        }
    }

    /// The `d_type` an entry of real type `dtype` is listed with.
    pub fn dtype(&self, dtype: u8) -> u8 {
        let (mode, _) = self.reported(u32::from(dtype) << 12, 0);
        ((mode & libc::S_IFMT) >> 12) as u8
    }
}

fn decimal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn octal(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

fn known_kind(k: u32) -> bool {
    matches!(
        k,
        libc::S_IFREG
            | libc::S_IFDIR
            | libc::S_IFLNK
            | libc::S_IFIFO
            | libc::S_IFSOCK
            | libc::S_IFCHR
            | libc::S_IFBLK
    )
}

fn parse_type(t: &str) -> Option<(u32, u64)> {
    let simple = match t {
        "file" => Some(libc::S_IFREG),
        "dir" => Some(libc::S_IFDIR),
        "symlink" => Some(libc::S_IFLNK),
        "pipe" => Some(libc::S_IFIFO),
        "socket" => Some(libc::S_IFSOCK),
        _ => None,
    };
    if let Some(k) = simple {
        return Some((k, 0));
    }
    let mut parts = t.split('-');
    let kind = match parts.next()? {
        "block" => libc::S_IFBLK,
        "char" => libc::S_IFCHR,
        _ => return None,
    };
    // Only numbers the kernel's dev_t holds (a 12-bit major, a 20-bit
    // minor): the kernel gets a device number in 32 bits (FUSE's `rdev`,
    // mknod's), and a larger one cut to fit would name another device
    // (major 4097 is major 1: /dev/mem).
    let maj = decimal(parts.next()?).filter(|&m| m < 1 << 12)?;
    let min = decimal(parts.next()?).filter(|&m| m < 1 << 20)?;
    Some((kind, libc::makedev(maj, min)))
}

fn major(dev: u64) -> u32 {
    libc::major(dev)
}

fn minor(dev: u64) -> u32 {
    libc::minor(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ovr(uid: u32, gid: u32, mode: u32, kind: u32, rdev: u64) -> StatOverride {
        StatOverride {
            uid,
            gid,
            mode,
            kind: Some(kind),
            rdev,
        }
    }

    /// containers-storage's own test vectors, both ways.
    #[test]
    fn containers_storage_vectors() {
        let cases = [
            (
                ovr(1000, 1011, 0o644, libc::S_IFREG, 0),
                "1000:1011:0644:file",
            ),
            (
                ovr(1001, 1012, 0o755, libc::S_IFDIR, 0),
                "1001:1012:0755:dir",
            ),
            (
                ovr(1002, 1013, 0o777, libc::S_IFLNK, 0),
                "1002:1013:0777:symlink",
            ),
            (
                ovr(1003, 1014, 0o666, libc::S_IFIFO, 0),
                "1003:1014:0666:pipe",
            ),
            (
                ovr(1004, 1015, 0o700, libc::S_IFSOCK, 0),
                "1004:1015:0700:socket",
            ),
            (
                ovr(1005, 1016, 0o600, libc::S_IFBLK, libc::makedev(8, 0)),
                "1005:1016:0600:block-8-0",
            ),
            (
                ovr(1006, 1017, 0o600, libc::S_IFCHR, libc::makedev(1, 3)),
                "1006:1017:0600:char-1-3",
            ),
            (
                ovr(1012, 1022, 0o4755, libc::S_IFREG, 0),
                "1012:1022:4755:file",
            ),
            (
                ovr(1013, 1023, 0o2755, libc::S_IFREG, 0),
                "1013:1023:2755:file",
            ),
            (
                ovr(1014, 1024, 0o1777, libc::S_IFREG, 0),
                "1014:1024:1777:file",
            ),
            (
                ovr(1042, 1052, 0o001, libc::S_IFREG, 0),
                "1042:1052:0001:file",
            ),
        ];
        for (value, text) in cases {
            assert_eq!(String::from_utf8(value.format()).unwrap(), text);
            assert_eq!(StatOverride::parse(text.as_bytes()), Some(value), "{text}");
        }
    }

    #[test]
    fn other_spellings() {
        let setuid = ovr(0, 0, 0o4755, libc::S_IFREG, 0);
        // A leading zero before the set-ID digit reads the same.
        assert_eq!(StatOverride::parse(b"0:0:04755:file"), Some(setuid));
        assert_eq!(StatOverride::parse(b"0:0:04755:file\0"), Some(setuid));
        assert_eq!(
            StatOverride::parse(b"1000:1001:0600:block-5-6-option_from_the_future"),
            Some(ovr(1000, 1001, 0o600, libc::S_IFBLK, libc::makedev(5, 6)))
        );
        // fuse-overlayfs's older form, with and without type bits.
        assert_eq!(
            StatOverride::parse(b"10:20:755"),
            Some(StatOverride {
                uid: 10,
                gid: 20,
                mode: 0o755,
                kind: None,
                rdev: 0
            })
        );
        assert_eq!(
            StatOverride::parse(b"10:20:40755"),
            Some(ovr(10, 20, 0o755, libc::S_IFDIR, 0))
        );
        assert_eq!(
            String::from_utf8(StatOverride::parse(b"10:20:755").unwrap().format()).unwrap(),
            "10:20:0755"
        );
    }

    #[test]
    fn refused() {
        for bad in [
            &b""[..],
            b"1000:1001",
            b"invalid:1001:0644:file",
            b"1:2:0644:disk-1-2",
            b"1:2:0644:block800",
            b"1:2:0644:block-abc-0",
            b"1:2:0644:char-1-xyz",
            b"1:2:0648:file",
            b"-1:2:0644:file",
            b"1:2:100644:file",
            b"4294967296:0:0644:file",
            b"4294967295:0:0644:file",
            b"0:4294967295:0644:file",
            b"+1:2:0644:file",
            b"1:2:0o644:file",
            b"1:2:07777777777777:file",
            b"1:2:0644:char-4097-1",
            b"1:2:0644:block-1-1048576",
            b"1:2:0644:char-4294967295-4294967295",
            b"1:2:0644:file:extra",
            b"1:2:170644",
        ] {
            assert_eq!(
                StatOverride::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn applied_to_a_stat() {
        let dev = ovr(0, 6, 0o620, libc::S_IFCHR, libc::makedev(4, 1));
        assert_eq!(
            dev.reported(libc::S_IFREG | 0o600, 0),
            (libc::S_IFCHR | 0o620, libc::makedev(4, 1))
        );
        // A real directory stays one whatever the value says.
        let file = ovr(1, 1, 0o1777, libc::S_IFREG, 0);
        assert_eq!(
            file.reported(libc::S_IFDIR | 0o700, 0),
            (libc::S_IFDIR | 0o1777, 0)
        );
        let untyped = StatOverride { kind: None, ..file };
        assert_eq!(untyped.reported(libc::S_IFREG, 0).0, libc::S_IFREG | 0o1777);
        assert_eq!(
            ovr(0, 0, 0o600, libc::S_IFBLK, 0).dtype(libc::DT_REG),
            libc::DT_BLK
        );
        assert_eq!(
            ovr(0, 0, 0o600, libc::S_IFDIR, 0).dtype(libc::DT_REG),
            libc::DT_REG
        );
    }
}

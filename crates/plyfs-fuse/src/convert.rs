//! Translating between plyfs-core's types and fuser's: the one place where
//! errno values cross.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use plyfs_core::{Errno, SetTime, Stat};

pub fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.raw())
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, nsec as u32)
    }
}

pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// `d_type` to a file type (readdir).
pub fn dtype_file_type(dtype: u8) -> FileType {
    file_type(u32::from(dtype) << 12)
}

/// A stat as FUSE attributes. Its `st_ino` is also the number FUSE knows
/// the object by, except for the root, which FUSE calls 1 whatever it
/// reports.
pub fn attr(st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        // FUSE carries the kernel's 32-bit encoding, which is the low half
        // of glibc's for every number the kernel can have (major < 2^12,
        // minor < 2^20). Anything else would alias another device when
        // cut: none at all instead (the core refuses such values anyway).
        rdev: u32::try_from(st.st_rdev).unwrap_or(0),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Attributes of nothing: with inode 0, an entry reply caches a miss.
pub fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

pub fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At {
                sec: d.as_secs() as i64,
                nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                SetTime::At { sec, nsec }
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for (s, n) in [(0i64, 0i64), (1_700_000_000, 123), (-5, 250_000_000)] {
            let t = time(s, n);
            assert_eq!(
                set_time(Some(TimeOrNow::SpecificTime(t))),
                Some(SetTime::At { sec: s, nsec: n })
            );
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(file_type(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(dtype_file_type(libc::DT_LNK), FileType::Symlink);
        assert_eq!(errno(Errno::ENOENT).code(), libc::ENOENT);
    }
}

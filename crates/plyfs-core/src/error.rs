//! Errors. Filesystem operations fail with an [`Errno`], exactly the value
//! the caller of the syscall will see; setting up a mount fails with a
//! [`SetupError`] that reads as one line for the user.

use std::path::PathBuf;

pub use plyfs_sys::{Errno, Result};

/// Why a mount cannot be set up. Each variant renders as one line that
/// names the offending path and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("no lower layer given (lowerdir= is empty)")]
    NoLowers,
    #[error("{role} {path}: {errno}")]
    Layer {
        role: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("{role} {path} is not a directory")]
    NotADirectory { role: &'static str, path: PathBuf },
    #[error("{role} {path} is not readable: {errno}")]
    Unreadable {
        role: &'static str,
        path: PathBuf,
        errno: Errno,
    },
    #[error("upperdir {upper} and workdir {work} must be given together")]
    UpperWithoutWork { upper: String, work: String },
    #[error("{inner} {inner_path} is inside {outer} {outer_path}; layers must not overlap")]
    Overlap {
        inner: &'static str,
        inner_path: PathBuf,
        outer: &'static str,
        outer_path: PathBuf,
    },
    #[error(
        "workdir {work} is on another filesystem than upperdir {upper}; both must be on the same filesystem"
    )]
    WorkOtherFs { work: PathBuf, upper: PathBuf },
    #[error("{role} {path} is in use by another mount; one union per upper and work directory")]
    InUse { role: &'static str, path: PathBuf },
    #[error("{what} {path} and the mount point {mountpoint} overlap; the union would reach itself")]
    MountpointOverlap {
        what: &'static str,
        path: PathBuf,
        mountpoint: PathBuf,
    },
    #[error("upperdir {0} is on a read-only filesystem")]
    UpperReadOnly(PathBuf),
    #[error("workdir {path}: {what}: {errno}")]
    Workdir {
        path: PathBuf,
        what: &'static str,
        errno: Errno,
    },
}

//! The errno a filesystem operation fails with: exactly the value the
//! caller of the syscall will see.

use std::fmt;

/// An errno value as returned to the user of the mount.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(pub const $name: Errno = Errno(libc::$name);)*
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    EIO,
    EBADF,
    EAGAIN,
    ENOMEM,
    EACCES,
    EBUSY,
    EEXIST,
    EXDEV,
    ENODEV,
    ENOTDIR,
    EISDIR,
    EINVAL,
    EMFILE,
    ENOSPC,
    EROFS,
    EMLINK,
    ERANGE,
    ENAMETOOLONG,
    ENOSYS,
    ENOTEMPTY,
    ELOOP,
    ENODATA,
    EOPNOTSUPP,
    ENOTTY,
    ESTALE,
    EOVERFLOW,
    EFBIG,
    ENXIO,
    ENOTSUP,
    ETXTBSY,
    EINTR,
    E2BIG,
    ENOTCONN,
);

impl Errno {
    pub const fn from_raw(raw: i32) -> Errno {
        Errno(raw)
    }

    pub const fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // std renders "Message (os error N)"; users want the message only.
        let full = std::io::Error::from_raw_os_error(self.0).to_string();
        let msg = full.split(" (os error").next().unwrap_or(&full);
        f.write_str(msg)
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.0)
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

pub type Result<T, E = Errno> = std::result::Result<T, E>;

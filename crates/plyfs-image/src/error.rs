//! Errors: each renders as one line that names what failed (the archive,
//! the blob, the entry) and why.

use std::path::PathBuf;

use plyfs_core::Errno;
use plyfs_core::changes::ChangesError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {errno}", path.display())]
    Sys { path: PathBuf, errno: Errno },
    #[error("archive {archive}: {what}")]
    Archive { archive: String, what: String },
    #[error("blob {digest}: {what}")]
    Blob { digest: String, what: String },
    #[error("blob {blob}: entry {entry:?}: {what}")]
    Entry {
        blob: String,
        entry: String,
        what: String,
    },
    #[error("no image named {0} in the store (plyfs image ls lists them)")]
    NoImage(String),
    #[error("store {}: {what}", path.display())]
    Store { path: PathBuf, what: String },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Changes(#[from] ChangesError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

impl<T> IoContext<T> for std::result::Result<T, Errno> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|errno| Error::Sys {
            path: path.into(),
            errno,
        })
    }
}

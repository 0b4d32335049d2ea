//! What a mount is asked to be.

use std::path::PathBuf;

/// The layers and behaviour of one union mount.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
    /// The writable layer; `None` makes the mount read-only.
    pub upper: Option<PathBuf>,
    /// Scratch space on the upper's filesystem, for atomic copy-up.
    pub work: Option<PathBuf>,
    /// Store markers in the `user.*` namespace even where `trusted.*` works, as
    /// the kernel's `userxattr` option does.
    pub userxattr: bool,
    /// Refuse every change even though an upper is given.
    pub read_only: bool,
    /// Skip fsync/fdatasync on the upper ("volatile"): faster, and a crash
    /// may lose recent writes.
    pub volatile: bool,
}

impl Config {
    pub fn writable(&self) -> bool {
        self.upper.is_some() && !self.read_only
    }
}

//! plyfs-fuse: a `fuser::Filesystem` over plyfs-core. It translates
//! requests and replies and owns what is FUSE's business: file handles,
//! kernel cache timeouts and coherence, directory listing streams,
//! passthrough.

mod acl;
mod answers;
mod coherence;
mod convert;
mod dispatch;
mod handles;
mod ids;
mod ioctls;
mod listings;
mod mount;
mod passthrough;
mod xattrs;

use std::sync::Arc;
use std::time::Duration;

use plyfs_core::Overlay;

pub use ids::{IdMap, IdMapError, IdMapping, IdRange};
pub use mount::{MountError, MountSpec, Mounted, Unmounter, mount};

/// How the kernel may cache what plyfs tells it.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// How long the kernel may trust entries and attributes.
    pub timeout: Duration,
    /// Request threads.
    pub threads: usize,
    /// Hand open files to the kernel (FUSE passthrough) where allowed.
    pub passthrough: bool,
    /// Let the kernel cache writes (FUSE writeback cache) when passthrough
    /// is not in use: the kernel allows one or the other.
    pub writeback: bool,
    /// How the ids stored in the layers show through the mount.
    pub ids: IdMapping,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            timeout: Duration::from_secs(1_000_000_000),
            threads: default_threads(),
            passthrough: true,
            writeback: true,
            ids: IdMapping::default(),
        }
    }
}

/// One request thread per CPU. More threads than CPUs keep requests
/// moving while one blocks in a long copy-up, but every thread waiting in
/// `read(/dev/fuse)` is a candidate for the kernel to wake, usually on
/// another CPU than the caller's, and serial metadata work pays that
/// wake-up per request: on 2 CPUs, 2 threads instead of 4 took the
/// harness's untar from 7.0 to 5.4 s and its cold lookup misses from 0.27
/// to 0.18 s (README, Performance).
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 16)
}

/// The union as a FUSE filesystem.
pub(crate) struct PlyFs {
    ov: Arc<Overlay>,
    opts: FuseOptions,
    handles: handles::Handles,
    listings: listings::Listings,
    coherence: coherence::Coherence,
    /// The kernel enforces POSIX ACLs and leaves the umask to us
    /// (negotiated at init).
    posix_acl: bool,
}

impl PlyFs {
    pub(crate) fn new(
        ov: Arc<Overlay>,
        opts: FuseOptions,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> PlyFs {
        PlyFs {
            ov,
            opts,
            handles: handles::Handles::new(),
            listings: listings::Listings::new(),
            coherence: coherence::Coherence::new(notifier),
            posix_acl: false,
        }
    }
}

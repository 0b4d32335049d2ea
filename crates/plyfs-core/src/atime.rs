//! Access times in a `noatime` union: plyfs's own opens carry O_NOATIME
//! (config.rs, the sys wrappers), but with FUSE passthrough the kernel
//! reopens a backing file with the caller's flags on the path plyfs gave
//! it, so its reads would touch the upper's atime by the upper's mount
//! rules. A backing file opened through a private noatime mount of the
//! upper never does, as the kernel's overlayfs never touches a real file
//! it reads for a noatime union.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};

use crate::Overlay;
use crate::inode::Real;
use crate::sys::{handle, mounts};

impl Overlay {
    /// `real` (an upper object) opened with `flags` through the upper's
    /// noatime mount; `None` where the mount is not noatime, or where it
    /// cannot be done (no CAP_SYS_ADMIN, a filesystem without handles):
    /// then the caller opens it as usual.
    pub(crate) fn open_upper_noatime(&self, real: &Real, flags: i32) -> Option<OwnedFd> {
        if !self.config.noatime {
            return None;
        }
        let mount = self
            .noatime_mount
            .get_or_init(|| {
                let root = self.layers.upper()?;
                mounts::noatime_clone(root.root.as_fd())
                    .inspect_err(|e| tracing::debug!("no noatime view of the upper: {e}"))
                    .ok()
            })
            .as_ref()?;
        let h = match (real.at(), real) {
            (Some((dir, name)), _) => handle::name_to_handle_at(dir, name),
            (None, Real::Pinned { fd, .. }) => {
                handle::name_to_handle_at(fd.as_fd(), OsStr::new(""))
            }
            (None, _) => return None,
        }
        .inspect_err(|e| tracing::debug!("no handle for a noatime open: {e}"))
        .ok()?;
        handle::open_by_handle_at(mount.as_fd(), &h, flags)
            .inspect_err(|e| tracing::debug!("no noatime open by handle: {e}"))
            .ok()
    }
}

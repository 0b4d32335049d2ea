//! POSIX ACLs at the FUSE boundary: asking the kernel to enforce them
//! (FUSE_POSIX_ACL, which also leaves the umask to us: FUSE_DONT_MASK, so
//! that a default ACL can replace it), the umask handed to the core, and
//! the ids inside ACL attribute values, translated as the owners are
//! (`uidmapping=`, `gidmapping=`, `squash_to_*`).

use std::borrow::Cow;
use std::ffi::OsStr;

use fuser::{KernelConfig, Request};
use plyfs_core::{AclKind, Caller, Errno, PosixAcl};

use crate::PlyFs;

/// The id the kernel puts in an ACL for one the reader's user namespace
/// cannot name.
const UNNAMEABLE: u32 = u32::MAX;

impl PlyFs {
    /// At init: ACLs where the union has them and the kernel offers both
    /// flags (without FUSE_DONT_MASK the kernel would apply the umask even
    /// under a default ACL). Returns whether they are on.
    pub(crate) fn negotiate_acls(&self, config: &mut KernelConfig) -> bool {
        use fuser::InitFlags as F;
        let want = F::FUSE_POSIX_ACL | F::FUSE_DONT_MASK;
        self.ov.config().posix_acls()
            && config.capabilities().contains(want)
            && config.add_capabilities(want).is_ok()
    }

    /// The creator of a new object: the caller, with the umask of the
    /// request when the kernel left applying it to us.
    pub(crate) fn creator(&self, req: &Request, umask: u32) -> Caller {
        Caller {
            umask: self.posix_acl.then_some(umask),
            ..self.caller(req)
        }
    }

    /// An attribute value read from the layers as the mount shows it: the
    /// ids an ACL names translated like owners (an id without a mapping
    /// shows as the overflow id).
    ///
    /// A daemon in a user namespace reads an id its namespace cannot name
    /// as -1, which the kernel's FUSE refuses (EINVAL for the whole ACL,
    /// and so for every permission check that needs it). No caller can
    /// have such an id (only processes of the namespace may use the
    /// mount), so the entry naming it is left out.
    pub(crate) fn xattr_to_mount<'a>(
        &self,
        name: &OsStr,
        value: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, Errno> {
        let ids = &self.opts.ids;
        if AclKind::of(name).is_none() {
            return Ok(Cow::Borrowed(value));
        }
        let mut acl = match PosixAcl::parse(value) {
            Ok(acl) => acl,
            // Without a mapping to apply, the kernel judges the value.
            Err(_) if ids.is_identity() => return Ok(Cow::Borrowed(value)),
            Err(e) => return Err(e),
        };
        let nameable = acl.entries.len();
        acl.entries
            .retain(|e| !(e.tag.is_named() && e.id == UNNAMEABLE));
        if ids.is_identity() && acl.entries.len() == nameable {
            return Ok(Cow::Borrowed(value));
        }
        let acl = acl.map_ids(|u| Some(ids.uid_to_mount(u)), |g| Some(ids.gid_to_mount(g)))?;
        Ok(Cow::Owned(acl.to_bytes()))
    }

    /// An attribute value a request sets, as the layers store it: an ACL
    /// naming an id without a mapping cannot be stored (EINVAL, as chown).
    pub(crate) fn xattr_to_disk<'a>(
        &self,
        name: &OsStr,
        value: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, Errno> {
        let ids = &self.opts.ids;
        if AclKind::of(name).is_none() || ids.is_identity() {
            return Ok(Cow::Borrowed(value));
        }
        let acl =
            PosixAcl::parse(value)?.map_ids(|u| ids.uids.to_disk(u), |g| ids.gids.to_disk(g))?;
        Ok(Cow::Owned(acl.to_bytes()))
    }
}

//! Copy-up origins: the kernel's on-disk file handle format (`struct
//! ovl_fb`), used for origin markers and for index entry names, so that
//! an upper written by plyfs means the same to the kernel and back; and
//! finding the lower object an upper copy came from, whose inode number
//! and link count the copy keeps.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use super::Name;
use super::{Found, Node, NodeState, Real};
use crate::Overlay;
use crate::error::{Errno, Result};
use crate::lower_index::EntryKind;
use crate::sys::fs::{self, Stat};
use crate::sys::handle::{self, FileHandle};
use crate::util;

const VERSION: u8 = 0;
const MAGIC: u8 = 0xfb;
const HEADER: usize = 5 + 16;
const FLAG_BIG_ENDIAN: u8 = 1 << 0;
const FLAG_ANY_ENDIAN: u8 = 1 << 1;
const FLAG_PATH_UPPER: u8 = 1 << 2;
const FLAGS_ALL: u8 = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
const FLAG_CPU_ENDIAN: u8 = if cfg!(target_endian = "big") {
    FLAG_BIG_ENDIAN
} else {
    0
};

/// A decoded `ovl_fb`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OriginFh {
    /// As stored: the kernel names index entries by the handle's bytes,
    /// flags included, so a decoded handle encodes to what it was.
    pub flags: u8,
    pub uuid: [u8; 16],
    pub handle: FileHandle,
}

impl OriginFh {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.handle.bytes.len());
        v.push(VERSION);
        v.push(MAGIC);
        v.push((HEADER + self.handle.bytes.len()) as u8);
        v.push(self.flags);
        v.push(self.handle.handle_type as u8);
        v.extend_from_slice(&self.uuid);
        v.extend_from_slice(&self.handle.bytes);
        v
    }

    /// Parses an origin marker's value; `None` for anything the kernel
    /// would not accept either.
    pub fn decode(raw: &[u8]) -> Option<OriginFh> {
        if raw.len() < HEADER || raw.len() > 255 {
            return None;
        }
        let (version, magic, len, flags, ftype) = (raw[0], raw[1], raw[2], raw[3], raw[4]);
        if version != VERSION || magic != MAGIC || len as usize != raw.len() {
            return None;
        }
        if flags & !FLAGS_ALL != 0 || flags & FLAG_PATH_UPPER != 0 {
            return None;
        }
        if flags & FLAG_ANY_ENDIAN == 0 && flags & FLAG_BIG_ENDIAN != FLAG_CPU_ENDIAN {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&raw[5..HEADER]);
        Some(OriginFh {
            flags,
            uuid,
            handle: FileHandle {
                handle_type: ftype as i32,
                bytes: raw[HEADER..].to_vec(),
            },
        })
    }

    /// The name of this object's entry in the index directory: the
    /// lowercase hex of the encoded handle, as the kernel names it.
    pub fn index_name(&self) -> String {
        self.encode().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Overlay {
    /// An upper non-directory with an origin marker: find the lower object
    /// it was copied from, for its inode number and link count.
    pub(crate) fn attach_origin(
        &self,
        found: &mut Found,
        parent: &Node,
        pstate: &NodeState,
        name: &OsStr,
        raw: &[u8],
    ) -> Result<()> {
        let Some(fh) = OriginFh::decode(raw) else {
            return Ok(());
        };
        let mut origin: Option<(Real, Stat)> = None;
        // Copied in place: the lower at the same name is usually the origin,
        // recognised by comparing handles (no privilege needed).
        if let Some(listing) = (!pstate.lowers.is_empty())
            .then(|| self.listing(parent, pstate))
            .transpose()?
            && let Some(hit) = listing.first_hit(name, 0)
            && matches!(hit.kind, EntryKind::Other(_))
            && let Some(Real::Dir { layer, fd, .. }) = pstate.lowers.get(hit.pos)
            && self.layers.get(*layer).uuid.unwrap_or_default() == fh.uuid
            && handle::name_to_handle_at(fd.as_fd(), name).is_ok_and(|h| h == fh.handle)
        {
            let st = fs::fstatat(fd.as_fd(), name)?;
            origin = Some((
                Real::At {
                    layer: *layer,
                    dir: fd.clone(),
                    name: Name::from(name),
                },
                st,
            ));
        }
        // Moved since: decode the handle on the filesystem with that UUID.
        if origin.is_none() {
            let mut candidates = self
                .layers
                .lowers()
                .filter(|(_, l)| l.uuid == Some(fh.uuid));
            let first = candidates.next();
            let ambiguous = candidates.any(|(_, l)| Some(l.dev) != first.map(|(_, f)| f.dev));
            // open_by_handle_at wants a real (not O_PATH) descriptor on the
            // filesystem.
            if let (Some((idx, layer)), false) = (first, ambiguous)
                && let Ok(mount_fd) = fs::openat(
                    layer.root.as_fd(),
                    OsStr::new("."),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                    0,
                )
                && let Ok(fd) =
                    handle::open_by_handle_at(mount_fd.as_fd(), &fh.handle, libc::O_PATH)
            {
                let st = fs::fstat(fd.as_fd())?;
                origin = Some((
                    Real::Pinned {
                        layer: idx,
                        fd: Arc::new(fd),
                    },
                    st,
                ));
            }
        }
        let Some((real, st)) = origin else {
            return Ok(());
        };
        if util::kind(st.st_mode) != found.kind {
            // The kernel decodes a directory only inside its layer (else
            // the origin is none: ignored), and fails the lookup with
            // ESTALE for an origin of another type ("invalid origin").
            if let Real::Pinned { layer, fd } = &real
                && util::is_dir(st.st_mode)
                && !util::is_beneath(fd.as_fd(), self.layers.get(*layer).root.as_fd())?
            {
                return Ok(());
            }
            return Err(Errno::ESTALE);
        }
        if st.st_nlink > 1
            && let Some(ust) = &found.upper_stat
        {
            found.indexed = self.is_index_entry(&fh, ust);
        }
        found.lowers = vec![real];
        found.lower_stat = Some(st);
        Ok(())
    }

    /// Marks `found` as the index entry of its origin when it is one: a
    /// metacopy copy of a hard link, whose origin was found by name.
    pub(crate) fn note_indexed(&self, found: &mut Found, raw: &[u8]) {
        if let (Some(fh), Some(ls), Some(ust)) =
            (OriginFh::decode(raw), &found.lower_stat, &found.upper_stat)
            && ls.st_nlink > 1
        {
            found.indexed = self.is_index_entry(&fh, ust);
        }
    }

    /// The kernel-format handle of a lower object, as the origin marker
    /// records it; `None` when the filesystem cannot make one.
    pub(crate) fn origin_fh(&self, real: &Real) -> Result<Option<OriginFh>> {
        let layer = self.layers.get(real.layer());
        let h = match (real.at(), real) {
            (Some((dir, name)), _) => handle::name_to_handle_at(dir, name),
            (None, Real::Pinned { fd, .. }) => {
                handle::name_to_handle_at(fd.as_fd(), OsStr::new(""))
            }
            (None, _) => return Ok(None),
        };
        match h {
            Ok(handle) => Ok(Some(OriginFh {
                flags: FLAG_CPU_ENDIAN,
                uuid: layer.uuid.unwrap_or_default(),
                handle,
            })),
            Err(e) if e == Errno::EOPNOTSUPP || e == Errno::EOVERFLOW => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernel_bytes() {
        // Read off an upper the kernel wrote on an ext4 with a null UUID.
        let kernel = hex("00fb1d0001000000000000000000000000000000001c00990095012592");
        let fh = OriginFh::decode(&kernel).unwrap();
        assert_eq!(fh.handle.handle_type, 1);
        assert_eq!(fh.handle.bytes.len(), 8);
        assert_eq!(fh.encode(), kernel);
        assert_eq!(
            fh.index_name(),
            "00fb1d0001000000000000000000000000000000001c00990095012592"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(OriginFh::decode(b"").is_none());
        let mut k = hex("00fb1d0001000000000000000000000000000000001c00990095012592");
        k[2] = 0x1c;
        assert!(OriginFh::decode(&k).is_none());
        k[2] = 0x1d;
        k[1] = 0xfa;
        assert!(OriginFh::decode(&k).is_none());
        // Decodable on any endianness: kept as it was (the index name is
        // the stored bytes' hex).
        k[1] = 0xfb;
        k[3] = FLAG_ANY_ENDIAN;
        assert_eq!(OriginFh::decode(&k).unwrap().encode(), k);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}

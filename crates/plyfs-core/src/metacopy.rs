//! Metacopy, as the kernel's `metacopy=on`: a file whose metadata changed
//! is copied up without its data, marked as such, and its data still comes
//! from a lower — the one of the same name below, or the one its redirect
//! names, possibly in a data-only layer (`lowerdir=L1:L2::DATA`), which no
//! lookup by name ever reaches. The first open for writing copies the data
//! into the upper file and drops the mark.
//!
//! A redirect is followed only inside this mount's layers, component by
//! component without following symlinks, so a forged one cannot expose a
//! file outside them.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use tracing::debug;

use crate::Overlay;
use crate::copy_up::{copy_data, open_lower};
use crate::error::{Errno, Result};
use crate::inode::Name;
use crate::inode::{Found, Node, NodeState, Real};
use crate::layers::LayerIdx;
use crate::markers::{Markers, Redirect};
use crate::namei::Cursor;
use crate::sys::fs::{self, Stat};
use crate::util;

impl Overlay {
    /// Whether lower files marked metacopy are followed to their data (as
    /// the kernel does with `metacopy=on`; data-only layers need it).
    fn follows_lower_metacopy(&self) -> bool {
        self.config.metacopy || self.layers.data_layers().next().is_some()
    }

    /// A lower regular file marked metacopy: where its data is (`None`
    /// inside: by name in the layers below). `None` for any other file.
    pub(crate) fn lower_metacopy(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &Stat,
    ) -> Result<Option<Option<Redirect>>> {
        if !self.follows_lower_metacopy() || util::kind(st.st_mode) != libc::S_IFREG {
            return Ok(None);
        }
        let m = Markers::read(dir, name)?;
        if !m.metacopy {
            return Ok(None);
        }
        Ok(Some(
            m.redirect.as_deref().map(Redirect::parse).transpose()?,
        ))
    }

    /// An upper file marked metacopy: finds the lower it was copied from
    /// (its metadata's origin, which also gives its inode number) and the
    /// file its data is in. Upper metacopy files are followed whatever the
    /// mount's own `metacopy=` says: the kernel may have written them.
    pub(crate) fn attach_metacopy_data(
        &self,
        found: &mut Found,
        parent: &Node,
        pstate: &NodeState,
        name: &OsStr,
        redirect: Option<Vec<u8>>,
    ) -> Result<()> {
        let (cursor, path) = match redirect.as_deref().map(Redirect::parse).transpose()? {
            Some(Redirect::Absolute(comps)) => (
                Cursor::Root {
                    layer: self.layers.first_lower as LayerIdx,
                    comps: comps.clone(),
                },
                Some(comps),
            ),
            Some(Redirect::Relative(r)) => (
                Cursor::Parent {
                    pos: 0,
                    name: OsString::from_vec(r),
                },
                None,
            ),
            None => (
                Cursor::Parent {
                    pos: 0,
                    name: name.to_os_string(),
                },
                None,
            ),
        };
        let by_name = matches!(cursor, Cursor::Parent { .. });
        let mut lower = if by_name && pstate.lowers.is_empty() {
            Default::default()
        } else {
            self.resolve_lowers(parent, pstate, cursor, false)?
        };
        let Some(meta) = lower.nondir.take() else {
            // Redirected straight into a data-only layer.
            let data = match &path {
                Some(p) => self.find_data(p)?,
                None => None,
            };
            let data = data.ok_or_else(|| no_data(name))?;
            found.lower_stat = Some(data.stat()?);
            found.lowers = vec![data.clone()];
            found.data = Some(data);
            return Ok(());
        };
        // Its data is a regular file's, never a symlink's or a device's
        // (a forged redirect may name one): the kernel finds no data
        // then, and neither does plyfs, so nothing is read through it.
        if lower.first_stat.map(|s| util::kind(s.st_mode)) != Some(libc::S_IFREG) {
            return Err(no_data(name));
        }
        let data = if lower.chasing {
            lower.data.take().ok_or_else(|| no_data(name))?
        } else {
            meta.clone()
        };
        found.lower_stat = lower.first_stat;
        found.lowers = vec![meta];
        found.data = Some(data);
        Ok(())
    }

    /// The regular file at the absolute path `comps` in the first
    /// data-only layer that has one. Nothing in such a layer is a marker,
    /// and nothing is followed.
    pub(crate) fn find_data(&self, comps: &[Vec<u8>]) -> Result<Option<Real>> {
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(None);
        };
        'layer: for (idx, layer) in self.layers.data_layers() {
            let mut cur = layer.root.clone();
            for c in dirs {
                let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
                match fs::openat(cur.as_fd(), OsStr::from_bytes(c), flags, 0) {
                    Ok(fd) => cur = Arc::new(fd),
                    Err(e) if is_absent(e) => continue 'layer,
                    Err(e) => return Err(e),
                }
            }
            let name = OsStr::from_bytes(last);
            match fs::fstatat(cur.as_fd(), name) {
                Ok(st) if util::kind(st.st_mode) == libc::S_IFREG => {
                    return Ok(Some(Real::At {
                        layer: idx,
                        dir: cur,
                        name: Name::from(name),
                    }));
                }
                Ok(_) => continue,
                Err(e) if is_absent(e) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Gives a metacopy upper file its data: copied from the lower into
    /// the (sparse, full-size) upper file itself, flushed, then the mark
    /// goes — the one step that makes the upper's data the file's. A crash
    /// before it leaves a file that still reads from its lower, as the
    /// kernel's does; hard links of it keep sharing the one inode.
    pub(crate) fn copy_up_data(&self, node: &Node) -> Result<()> {
        if node.state.read().data_on_upper() || node.state.read().upper.is_none() {
            return Ok(());
        }
        let _guard = node.op_lock.lock();
        let state = node.state.read().clone();
        let (Some(upper), Some(data)) = (&state.upper, state.data()) else {
            return Ok(());
        };
        debug!(ino = node.ino, "copy-up of metacopy data");
        let size = upper.stat()?.st_size.max(0) as u64;
        let dst = open_for_writing(upper)?;
        let src = open_lower(data)?;
        if let Err(e) = copy_data(src.as_fd(), dst.as_fd(), size) {
            // The file is still a metacopy and reads from its lower: give
            // back the blocks the failed copy took (on a full upper, all
            // that was left), rather than keep them until a retry.
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            let _ = fs::fallocate(dst.as_fd(), punch, 0, size);
            return Err(e);
        }
        if !self.config.volatile {
            fs::fsync(dst.as_fd(), false)?;
        }
        let (dir, name) = upper.xattr_target();
        self.markers().clear_metacopy(dir, name)?;
        node.state.write().set_data(None);
        self.attr_changed(node.ino);
        Ok(())
    }

    /// Copies a node up with its data: a full copy-up, or the data of a
    /// metacopy file. Before anything writes data, truncates, or gives the
    /// file a second name.
    pub(crate) fn copy_up_full(&self, node: &Arc<Node>) -> Result<()> {
        self.copy_up(node)?;
        self.copy_up_data(node)
    }

    /// Whether a change of metadata only may copy `node` up without its
    /// data (`metacopy=on`, a regular file, an upper that can hold the
    /// marks).
    pub(crate) fn wants_metacopy(&self, node: &Node) -> bool {
        self.config.metacopy
            && node.kind() == libc::S_IFREG
            && self.markers().has_metacopy()
            && node.state.read().upper.is_none()
    }
}

/// Opens an upper file to copy data into. A daemon without the privilege
/// to override modes (rootless) lends itself write permission for the
/// time of the open, as the kernel's copy-up does with the mounter's.
fn open_for_writing(upper: &Real) -> Result<std::os::fd::OwnedFd> {
    match upper.open(libc::O_WRONLY) {
        Err(e) if e == Errno::EACCES => {
            let (dir, name) = upper.at().ok_or(e)?;
            let mode = fs::fstatat(dir, name)?.st_mode & 0o7777;
            fs::fchmodat(dir, name, mode | 0o200)?;
            let fd = upper.open(libc::O_WRONLY);
            fs::fchmodat(dir, name, mode)?;
            fd
        }
        r => r,
    }
}

fn is_absent(e: Errno) -> bool {
    e == Errno::ENOENT || e == Errno::ENOTDIR || e == Errno::ENAMETOOLONG || e == Errno::ELOOP
}

fn no_data(name: &OsStr) -> Errno {
    debug!(?name, "metacopy file without data below it");
    Errno::EIO
}

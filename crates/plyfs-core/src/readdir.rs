//! Reading union directories: the merged view readdir returns (the upper's
//! entries over the lowers' listing), and whether a directory is empty.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::{Ino, Node, NodeState, Real};
use crate::lower_index::{EntryKind, LowerListing};
use crate::markers::{self, Kind};

/// One entry of a union directory as readdir returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: Ino,
    /// `d_type`.
    pub dtype: u8,
}

impl Overlay {
    /// The lower listing of `node`, built on first use.
    pub(crate) fn listing(&self, node: &Node, state: &NodeState) -> Result<Arc<LowerListing>> {
        let cell = node.listing_cell().ok_or(Errno::ENOTDIR)?;
        if let Some(l) = cell.get() {
            return Ok(l.clone());
        }
        let mut dirs = Vec::with_capacity(state.lowers.len());
        for real in state.lowers.iter() {
            let fd = real.dir_fd().ok_or(Errno::EIO)?;
            dirs.push((real.layer(), fd.as_fd(), real.xwhiteouts()));
        }
        let built = Arc::new(LowerListing::build(dirs.into_iter(), &self.lower_index)?);
        Ok(cell.get_or_init(|| built).clone())
    }

    /// Whether rmdir, or a rename over it, may remove directory `node`:
    /// nothing listed, and no xattr whiteout below (the kernel counts them).
    pub(crate) fn is_empty_dir(&self, node: &Arc<Node>) -> Result<bool> {
        if self.read_dir_node(node)?.len() > 2 {
            return Ok(false);
        }
        let state = node.state.read().clone();
        if state.lowers.is_empty() || state.opaque {
            return Ok(true);
        }
        Ok(!self.listing(node, &state)?.has_xwhiteouts())
    }

    /// The entries of union directory `ino`, with `.` and `..`.
    pub fn read_dir(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let node = self.node(ino)?;
        let entries = self.read_dir_node(&node)?;
        // Every entry is about to be looked up (READDIRPLUS): have their
        // lower inodes read in the background meanwhile.
        if entries.len() > 64
            && let Some(p) = self.prefetcher()
        {
            let lowers = node.state.read().lowers.clone();
            let lowers: &[Real] = &lowers;
            for fd in lowers.iter().filter_map(Real::dir_fd) {
                p.offer(fd, std::ffi::OsStr::new("."));
            }
        }
        Ok(entries)
    }

    pub(crate) fn read_dir_node(&self, node: &Arc<Node>) -> Result<Vec<DirEntry>> {
        let node = node.clone();
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let state = node.state.read().clone();
        let mut out = Vec::new();
        out.push(DirEntry {
            name: ".".into(),
            ino: self.st_ino(&node),
            dtype: libc::DT_DIR,
        });
        let parent_ino = if node.ino == crate::inode::ROOT_INO {
            self.st_ino(&node)
        } else {
            self.inodes
                .get(state.parent)
                .map_or(state.parent, |p| self.st_ino(&p))
        };
        out.push(DirEntry {
            name: "..".into(),
            ino: parent_ino,
            dtype: libc::DT_DIR,
        });

        // Names the upper decides: present there, or whited out there.
        let mut decided: HashSet<OsString> = HashSet::new();
        let mut opaque = state.opaque;
        let listing = if state.lowers.is_empty() {
            None
        } else {
            Some(self.listing(&node, &state)?)
        };
        if let Some(upper) = &state.upper
            && let Some(udir) = upper.dir_fd()
        {
            // Xattr whiteouts hide among the empty files of directories
            // marked to hold them, and of any this mount may have marked.
            let xwh = upper.xwhiteouts() || self.markers().writes_xwhiteouts();
            let read = markers::read_layer_dir(udir.as_fd(), xwh, self.config.upper_dir_atime())?;
            opaque |= read.oci_opaque;
            let mut upper = Vec::with_capacity(read.entries.len());
            for (name, kind, ino) in read.entries {
                match kind {
                    Kind::Object(dtype) => upper.push((name, ino, dtype)),
                    Kind::Whiteout | Kind::XWhiteout => {
                        decided.insert(name);
                    }
                }
            }
            for (name, real_ino, dtype) in upper {
                // The number readdir reports must be stat's: copies keep
                // their origin's number and merged directories their top
                // lower's, which only a lookup tells.
                let needs_lookup = state.impure
                    || (dtype == libc::DT_DIR
                        && listing.as_ref().is_some_and(|l| {
                            l.first_hit(&name, 0)
                                .is_some_and(|h| h.kind == EntryKind::Dir)
                        }));
                let ino = if needs_lookup {
                    match self.peek_ino(&node, &name) {
                        Ok(i) => i,
                        Err(e) if e == Errno::ENOENT => continue,
                        Err(e) => return Err(e),
                    }
                } else {
                    self.inomap.map(self.layers.get(0).fsid, real_ino)?
                };
                let dtype = self.listed_dtype(0, udir.as_fd(), &name, dtype)?;
                decided.insert(name.clone());
                out.push(DirEntry { name, ino, dtype });
            }
        }
        if !opaque && let Some(listing) = listing {
            let mut prefetch = self.prefetcher();
            for (name, hit) in listing.visible() {
                if decided.contains(name) || markers::is_reserved_name(name) {
                    continue;
                }
                let Some(lower) = state.lowers.get(hit.pos) else {
                    continue;
                };
                let layer = lower.layer();
                let dtype = match (hit.kind, lower.dir_fd()) {
                    (EntryKind::Dir, _) => libc::DT_DIR,
                    (EntryKind::Other(t), Some(dir)) => {
                        self.listed_dtype(layer, dir.as_fd(), name, t)?
                    }
                    (EntryKind::Other(t), None) => t,
                    (EntryKind::Whiteout, _) => continue,
                };
                if dtype == libc::DT_DIR
                    && let (Some(p), Some(parent)) =
                        (prefetch, state.lowers.get(hit.pos).and_then(Real::dir_fd))
                    && !p.offer(parent, name)
                {
                    prefetch = None;
                }
                let ino = self.inomap.map(self.layers.get(layer).fsid, hit.ino)?;
                out.push(DirEntry {
                    name: name.to_os_string(),
                    ino,
                    dtype,
                });
            }
        }
        Ok(out)
    }
}

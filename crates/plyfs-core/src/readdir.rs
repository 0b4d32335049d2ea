//! Reading union directories: the merged listing of a directory's lower
//! layers (built once, since lowers never change, and used by lookup as an
//! index) and the merged view readdir returns.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::{Ino, Node, NodeState, Real};
use crate::lower_index::{KIND_WHITEOUT, KIND_XWHITEOUT, LowerIndex};
use crate::markers;
use crate::sys::fs;

/// What a name is in one lower directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Whiteout,
    Dir,
    /// Anything else, with its `d_type`.
    Other(u8),
}

/// A name found in one layer of a directory's lower stack.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    /// Position in the directory's lower stack (0 = top-most lower).
    pub pos: usize,
    pub kind: EntryKind,
    /// The real inode number (`d_ino`) in that layer.
    pub ino: u64,
}

/// Every name in a directory's lower layers, each with the layers that have
/// it, top-most first. One hash probe answers "which layers have NAME".
#[derive(Debug, Default)]
pub struct LowerListing {
    names: HashMap<OsString, Vec<Hit>>,
    /// Some lower directory holds an xattr whiteout. The kernel hides it
    /// from readdir but counts it in the emptiness check of rmdir and of
    /// rename over a directory, which fail with ENOTEMPTY.
    xwhiteouts: bool,
}

impl LowerListing {
    /// The first layer at or below stack position `from` that has `name`.
    pub fn first_hit(&self, name: &OsStr, from: usize) -> Option<Hit> {
        self.names
            .get(name)?
            .iter()
            .find(|h| h.pos >= from)
            .copied()
    }

    /// Names visible from the lowers and what they resolve to.
    pub fn visible(&self) -> impl Iterator<Item = (&OsStr, Hit)> {
        self.names.iter().filter_map(|(n, hits)| {
            let h = *hits.first()?;
            (h.kind != EntryKind::Whiteout).then_some((n.as_os_str(), h))
        })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn has_xwhiteouts(&self) -> bool {
        self.xwhiteouts
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Merges the lower directories of a union directory, top-most first,
    /// down to the first one marked opaque in the OCI format.
    pub fn build(lowers: &[Real], index: &LowerIndex) -> Result<LowerListing> {
        let mut names: HashMap<OsString, Vec<Hit>> = HashMap::new();
        let mut xwhiteouts = false;
        for (pos, real) in lowers.iter().enumerate() {
            let Some(dir) = real.dir_fd() else {
                return Err(Errno::EIO);
            };
            let rec = index.dir(real.layer(), dir.as_fd(), real.xwhiteouts())?;
            for (name, kind, ino) in &rec.entries {
                let kind = match *kind {
                    KIND_WHITEOUT => EntryKind::Whiteout,
                    KIND_XWHITEOUT => {
                        xwhiteouts = true;
                        EntryKind::Whiteout
                    }
                    libc::DT_DIR => EntryKind::Dir,
                    t => EntryKind::Other(t),
                };
                let hit = Hit {
                    pos,
                    kind,
                    ino: *ino,
                };
                let hits = names.entry(OsString::from_vec(name.clone())).or_default();
                // Within one layer a real entry comes before its whiteout
                // (an OCI layer may re-create what it deletes below).
                match hits.last() {
                    Some(last) if last.pos == pos && kind != EntryKind::Whiteout => {
                        hits.insert(hits.len() - 1, hit)
                    }
                    _ => hits.push(hit),
                }
            }
            if rec.oci_opaque {
                break;
            }
        }
        Ok(LowerListing { names, xwhiteouts })
    }
}

/// `d_type` for a mode.
pub fn dtype_of(mode: u32) -> u8 {
    ((mode & libc::S_IFMT) >> 12) as u8
}

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
        if let Some(l) = node.listing.get() {
            return Ok(l.clone());
        }
        let built = Arc::new(LowerListing::build(&state.lowers, &self.lower_index)?);
        Ok(node.listing.get_or_init(|| built).clone())
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
        self.read_dir_node(&node)
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
        let mut decided: HashMap<OsString, ()> = HashMap::new();
        let mut opaque = state.opaque;
        let listing = if state.lowers.is_empty() {
            None
        } else {
            Some(self.listing(&node, &state)?)
        };
        if let Some(udir) = state.upper_dir() {
            let mut upper = Vec::new();
            let mut chr = Vec::new();
            fs::read_dir(udir.as_fd(), |e| {
                if e.name == markers::OCI_OPAQUE {
                    opaque = true;
                } else if let Some(t) = markers::oci_whiteout_target(e.name) {
                    decided.insert(t.to_os_string(), ());
                } else if e.dtype == libc::DT_CHR || e.dtype == libc::DT_UNKNOWN {
                    chr.push((e.name.to_os_string(), e.ino));
                } else {
                    upper.push((e.name.to_os_string(), e.ino, e.dtype));
                }
            })?;
            for (name, ino) in chr {
                let st = match fs::fstatat(udir.as_fd(), &name) {
                    Ok(st) => st,
                    Err(e) if e == Errno::ENOENT => continue,
                    Err(e) => return Err(e),
                };
                if markers::is_whiteout(&st) {
                    decided.insert(name, ());
                } else {
                    upper.push((name, ino, dtype_of(st.st_mode)));
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
                    self.inomap.map(self.layers.get(0).fsid, real_ino)
                };
                decided.insert(name.clone(), ());
                out.push(DirEntry { name, ino, dtype });
            }
        }
        if !opaque && let Some(listing) = listing {
            let mut prefetch = self.prefetcher();
            for (name, hit) in listing.visible() {
                if decided.contains_key(name) || markers::is_reserved_name(name) {
                    continue;
                }
                let Some(layer) = state.lowers.get(hit.pos).map(Real::layer) else {
                    continue;
                };
                let dtype = match hit.kind {
                    EntryKind::Dir => libc::DT_DIR,
                    EntryKind::Other(t) => t,
                    EntryKind::Whiteout => continue,
                };
                if dtype == libc::DT_DIR
                    && let (Some(p), Some(parent)) =
                        (prefetch, state.lowers.get(hit.pos).and_then(Real::dir_fd))
                    && !p.offer(parent, name)
                {
                    prefetch = None;
                }
                let ino = self.inomap.map(self.layers.get(layer).fsid, hit.ino);
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

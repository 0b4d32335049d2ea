//! Lookup: resolving a name in a union directory, top-down through the
//! layers, exactly as the kernel's overlayfs resolves it.
//!
//! The upper is probed directly (it changes); the lowers are answered from
//! the parent's [`LowerListing`] (they never change), so a miss costs one
//! hash probe however deep the stack is. Redirects, opaque directories and
//! whiteouts in every format are honoured on the way.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use crate::Overlay;
use crate::error::{Errno, Result};
use crate::inode::Name;
use crate::inode::{Child, Found, Ino, Node, NodeState, Real};
use crate::layers::LayerIdx;
use crate::lower_index::EntryKind;
use crate::markers::{self, Markers, Redirect};
use crate::sys::fs::{self, Stat};
use crate::util;

/// Where lookup in the lower layers continues.
pub(crate) enum Cursor {
    /// `name` in the parent's lower stack, from stack position `pos`.
    Parent { pos: usize, name: OsString },
    /// An absolute path from the layer roots, from layer `layer` down.
    Root {
        layer: LayerIdx,
        comps: Vec<Vec<u8>>,
    },
}

/// The lowers' part of a lookup.
#[derive(Default)]
pub(crate) struct LowerPart {
    pub dirs: Vec<Real>,
    pub nondir: Option<Real>,
    pub first_stat: Option<Stat>,
    /// A whiteout ended the search before anything was found.
    pub whited_out: bool,
    /// `nondir` is a metacopy file: the search went on for its data.
    pub chasing: bool,
    /// ... and found it here.
    pub data: Option<Real>,
    /// ... by this absolute path (a redirect), which the data-only layers
    /// are searched for when the others do not have it.
    pub data_path: Option<Vec<Vec<u8>>>,
}

const DIR_FLAGS: i32 = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;

impl Overlay {
    /// Resolves `name` in directory `parent` and counts a kernel lookup of
    /// the result.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<crate::Entry> {
        let pnode = self.node(parent)?;
        let node = self.lookup_node(&pnode, name)?;
        let attr = self.node_attr(&node)?;
        Ok(crate::Entry {
            ino: node.ino,
            generation: node.generation(),
            attr,
        })
    }

    /// Lookup for internal use: the node of `name` in `parent`, counted as a
    /// kernel lookup only when `count` (callers that reply to the kernel).
    pub(crate) fn lookup_node(&self, parent: &Arc<Node>, name: &OsStr) -> Result<Arc<Node>> {
        self.find_node(parent, name, true)
    }

    pub(crate) fn find_node(
        &self,
        parent: &Arc<Node>,
        name: &OsStr,
        count: bool,
    ) -> Result<Arc<Node>> {
        if !parent.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        util::check_name(name)?;
        if markers::is_reserved_name(name) {
            return Err(Errno::ENOENT);
        }
        // The lookup cache: a live node, or a known miss.
        let cached = parent.cached_child(name);
        match cached {
            Some(Child::Negative) => return Err(Errno::ENOENT),
            Some(Child::Positive(w)) => {
                if let Some(n) = w.upgrade() {
                    if !count {
                        return Ok(n);
                    }
                    // Count the lookup through the table so that it cannot
                    // race with forget; a node no longer in it is stale.
                    if let Some(live) = self.inodes.recount(&n) {
                        return Ok(live);
                    }
                }
            }
            None => {}
        }
        let version = parent.version();
        let pstate = parent.state.read().clone();
        let found = self.resolve(parent, &pstate, name)?;
        let Some(found) = found else {
            parent.cache_child_since(version, name, None);
            return Err(Errno::ENOENT);
        };
        // Found nodes are not cached as children: the kernel keeps its
        // own entries (with no timeout) and asks again only after it
        // dropped the inode too, so an entry per name would cost the memory
        // of every cached inode for the rare hit. Objects plyfs makes or
        // moves itself are cached by their operation.
        self.node_from(found, parent.ino, name, count)
    }

    /// The inode number `name` would have, without making it known to the
    /// kernel (readdir's `d_ino`).
    pub(crate) fn peek_ino(&self, parent: &Arc<Node>, name: &OsStr) -> Result<Ino> {
        if let Some(Child::Positive(w)) = parent.cached_child(name)
            && let Some(n) = w.upgrade()
        {
            return Ok(n.ino);
        }
        let pstate = parent.state.read().clone();
        let found = self.resolve(parent, &pstate, name)?.ok_or(Errno::ENOENT)?;
        self.ino_of(&found)
    }

    /// Resolves `name` in `parent`: `None` when it does not exist in the
    /// union (absent or whited out).
    pub(crate) fn resolve(
        &self,
        parent: &Node,
        pstate: &NodeState,
        name: &OsStr,
    ) -> Result<Option<Found>> {
        let mut found = Found {
            kind: 0,
            upper: None,
            upper_stat: None,
            lowers: Vec::new(),
            lower_stat: None,
            opaque: false,
            redirect: None,
            impure: false,
            indexed: false,
            nlink: None,
            upper_ovr: None,
            lower_ovr: None,
            data: None,
        };
        let mut cursor = Some(Cursor::Parent {
            pos: 0,
            name: name.to_os_string(),
        });
        let mut origin_raw = None;
        let mut metacopy = None;

        if let Some(udir) = pstate.upper_dir() {
            match fs::fstatat(udir.as_fd(), name) {
                Ok(st) if markers::is_whiteout_at(udir.as_fd(), name, &st)? => {
                    return Ok(None);
                }
                Ok(st) => {
                    found.kind = util::kind(st.st_mode);
                    found.upper_stat = Some(st);
                    if found.kind == libc::S_IFDIR {
                        let fd = Arc::new(fs::openat(udir.as_fd(), name, DIR_FLAGS, 0)?);
                        let m = Markers::read(fd.as_fd(), OsStr::new("."))?;
                        found.opaque = m.opaque;
                        found.impure = m.impure;
                        found.upper_ovr = self
                            .layers
                            .get(0)
                            .overrides
                            .and_then(|ns| m.stat_override(ns));
                        if let Some(raw) = &m.redirect {
                            cursor = Some(match Redirect::parse(raw)? {
                                Redirect::Relative(r) => Cursor::Parent {
                                    pos: 0,
                                    name: OsString::from_vec(r),
                                },
                                Redirect::Absolute(comps) => Cursor::Root {
                                    layer: self.layers.first_lower as LayerIdx,
                                    comps,
                                },
                            });
                            found.redirect = Some(raw.clone());
                        }
                        if found.opaque {
                            cursor = None;
                        }
                        found.upper = Some(Real::Dir {
                            layer: 0,
                            fd,
                            xwhiteouts: m.xwhiteouts,
                        });
                    } else {
                        // An upper non-directory hides everything below; only
                        // its copy-up origin is of interest (for st_ino). Only
                        // directories marked impure, or merged ones, hold
                        // copies with origins.
                        if pstate.impure || !pstate.lowers.is_empty() {
                            let m = Markers::read(udir.as_fd(), name)?;
                            if m.metacopy {
                                metacopy = Some(m.redirect);
                            }
                            origin_raw = m.origin;
                            found.nlink = m.nlink;
                        }
                        let upper = Real::At {
                            layer: 0,
                            dir: udir.clone(),
                            name: Name::from(name),
                        };
                        found.upper_ovr = self.read_ovr(&upper)?;
                        found.upper = Some(upper);
                        cursor = None;
                    }
                }
                Err(e) if e == Errno::ENOENT => {}
                Err(e) => return Err(e),
            }
        }

        let lower = match cursor {
            Some(c) if !pstate.lowers.is_empty() || matches!(c, Cursor::Root { .. }) => {
                self.resolve_lowers(parent, pstate, c, found.upper.is_some())?
            }
            _ => LowerPart::default(),
        };

        if found.upper.is_none() {
            if lower.whited_out || (lower.dirs.is_empty() && lower.nondir.is_none()) {
                return Ok(None);
            }
            // An OCI whiteout in the upper hides what the lowers have.
            if let Some(udir) = pstate.upper_dir()
                && markers::has_oci_whiteout(udir.as_fd(), name)?
            {
                return Ok(None);
            }
        }

        if found.kind == libc::S_IFDIR {
            if !lower.dirs.is_empty()
                && !found.opaque
                && let Some(Real::Dir { fd, .. }) = &found.upper
                && markers::has_oci_opaque(fd.as_fd())?
            {
                found.opaque = true;
            }
            if !found.opaque {
                found.lower_stat = lower.first_stat;
                found.lowers = lower.dirs;
            }
        } else if found.upper.is_some() {
            if let Some(redirect) = metacopy {
                self.attach_metacopy_data(&mut found, parent, pstate, name, redirect)?;
                if let Some(raw) = origin_raw {
                    self.note_indexed(&mut found, &raw);
                }
            } else if let Some(raw) = origin_raw {
                self.attach_origin(&mut found, parent, pstate, name, &raw)?;
            }
        } else if let Some(nd) = lower.nondir {
            found.kind = util::kind(lower.first_stat.map_or(0, |s| s.st_mode));
            found.lower_stat = lower.first_stat;
            found.lowers = vec![nd];
            if lower.chasing {
                // A lower metacopy file whose data is nowhere: the kernel
                // refuses to show it too.
                found.data = Some(lower.data.ok_or(Errno::EIO)?);
            }
            if found.lower_stat.is_some_and(|s| s.st_nlink > 1) {
                self.attach_index(&mut found)?;
            }
        } else {
            found.kind = libc::S_IFDIR;
            found.lower_stat = lower.first_stat;
            found.lowers = lower.dirs;
        }
        if found.upper.is_none()
            && let Some(l) = found.lowers.first()
        {
            found.lower_ovr = self.read_ovr(l)?;
        }
        Ok(Some(found))
    }

    /// The lowers' part of a lookup from `cursor`, with a metacopy file's
    /// data found in the data-only layers when no other layer has it.
    pub(crate) fn resolve_lowers(
        &self,
        parent: &Node,
        pstate: &NodeState,
        cursor: Cursor,
        upper_is_dir: bool,
    ) -> Result<LowerPart> {
        let mut out = self.search_lowers(parent, pstate, cursor, upper_is_dir)?;
        if out.chasing
            && out.data.is_none()
            && let Some(path) = &out.data_path
        {
            out.data = self.find_data(path)?;
        }
        Ok(out)
    }

    fn search_lowers(
        &self,
        parent: &Node,
        pstate: &NodeState,
        mut cursor: Cursor,
        upper_is_dir: bool,
    ) -> Result<LowerPart> {
        let mut out = LowerPart::default();
        let mut is_dir = upper_is_dir;
        let bottom = self.layers.bottom();
        loop {
            match cursor {
                Cursor::Parent { pos, name } => {
                    let listing = self.listing(parent, pstate)?;
                    let Some(hit) = listing.first_hit(&name, pos) else {
                        return Ok(out);
                    };
                    let (layer, pfd) = match pstate.lowers.get(hit.pos) {
                        Some(Real::Dir { layer, fd, .. }) => (*layer, fd),
                        _ => return Err(Errno::EIO),
                    };
                    match hit.kind {
                        EntryKind::Whiteout => {
                            out.whited_out = !is_dir && out.nondir.is_none();
                            return Ok(out);
                        }
                        EntryKind::Other(_) => {
                            let st = fs::fstatat(pfd.as_fd(), &name)?;
                            // The kernel's lookup takes any empty file with
                            // the whiteout attribute for a whiteout, marked
                            // directory or not.
                            if markers::is_xwhiteout(pfd.as_fd(), &name, &st)? {
                                out.whited_out = !is_dir && out.nondir.is_none();
                                return Ok(out);
                            }
                            if is_dir {
                                return Ok(out);
                            }
                            let real = Real::At {
                                layer,
                                dir: pfd.clone(),
                                name: Name::from(name.as_os_str()),
                            };
                            if out.chasing {
                                if util::kind(st.st_mode) == libc::S_IFREG {
                                    out.data = Some(real);
                                }
                                return Ok(out);
                            }
                            out.first_stat = Some(st);
                            out.nondir = Some(real);
                            let Some(redirect) = self.lower_metacopy(pfd.as_fd(), &name, &st)?
                            else {
                                return Ok(out);
                            };
                            // Its data is below: by its redirect, or by name.
                            out.chasing = true;
                            cursor = match redirect {
                                None => Cursor::Parent {
                                    pos: hit.pos + 1,
                                    name,
                                },
                                Some(Redirect::Relative(r)) => Cursor::Parent {
                                    pos: hit.pos + 1,
                                    name: OsString::from_vec(r),
                                },
                                Some(Redirect::Absolute(comps)) => {
                                    out.data_path = Some(comps.clone());
                                    Cursor::Root {
                                        layer: layer + 1,
                                        comps,
                                    }
                                }
                            };
                        }
                        EntryKind::Dir if out.chasing => return Ok(out),
                        EntryKind::Dir => {
                            let Some(step) = self.lower_dir(
                                pfd.as_fd(),
                                &name,
                                layer,
                                layer == bottom,
                                &mut out,
                            )?
                            else {
                                return Ok(out);
                            };
                            is_dir = true;
                            // An OCI layer that deletes a directory and makes
                            // it anew holds both: its whiteout hides what the
                            // layers below have (the OCI rule).
                            if listing.whiteout_at(&name, hit.pos) {
                                return Ok(out);
                            }
                            // Opaque in the OCI format: the layers below
                            // are not part of it (nor of its link count).
                            if layer != bottom
                                && !matches!(step, Next::Stop)
                                && self.oci_opaque(&out)?
                            {
                                return Ok(out);
                            }
                            cursor = match step {
                                Next::Stop => return Ok(out),
                                Next::Same => Cursor::Parent {
                                    pos: hit.pos + 1,
                                    name,
                                },
                                Next::Redirect(Redirect::Relative(r)) => Cursor::Parent {
                                    pos: hit.pos + 1,
                                    name: OsString::from_vec(r),
                                },
                                Next::Redirect(Redirect::Absolute(comps)) => Cursor::Root {
                                    layer: layer + 1,
                                    comps,
                                },
                            };
                        }
                    }
                }
                Cursor::Root { layer, mut comps } => {
                    for l in layer..=bottom {
                        match self.walk_layer(l, &mut comps, is_dir, &mut out)? {
                            Walk::Missing => continue,
                            Walk::Stop => return Ok(out),
                            Walk::Found => is_dir = true,
                            Walk::FoundStop => return Ok(out),
                        }
                    }
                    return Ok(out);
                }
            }
        }
    }

    /// Adds the lower directory `name` in `pfd` to the stack and reads its
    /// markers: how lookup continues below it.
    fn lower_dir(
        &self,
        pfd: BorrowedFd<'_>,
        name: &OsStr,
        layer: LayerIdx,
        bottom: bool,
        out: &mut LowerPart,
    ) -> Result<Option<Next>> {
        let fd = match fs::openat(pfd, name, DIR_FLAGS, 0) {
            Ok(fd) => Arc::new(fd),
            Err(e) if e == Errno::ENOENT => return Ok(None),
            Err(e) => return Err(e),
        };
        if out.first_stat.is_none() {
            out.first_stat = Some(fs::fstat(fd.as_fd())?);
        }
        // The bottom layer's markers cannot change anything below it.
        let m = if bottom {
            Markers::default()
        } else {
            Markers::read(fd.as_fd(), OsStr::new("."))?
        };
        out.dirs.push(Real::Dir {
            layer,
            fd,
            xwhiteouts: m.xwhiteouts,
        });
        Ok(Some(if m.opaque {
            Next::Stop
        } else if let Some(raw) = &m.redirect {
            Next::Redirect(Redirect::parse(raw)?)
        } else {
            Next::Same
        }))
    }

    /// Follows an absolute redirect path in one lower layer, component by
    /// component, as the kernel does: whiteouts and non-directories on the
    /// way end the search; an opaque directory on the way ends it below
    /// this layer; a redirect on the way rewrites the path for the layers
    /// below (this layer walks on along the path as it was).
    fn walk_layer(
        &self,
        l: LayerIdx,
        comps: &mut Vec<Vec<u8>>,
        is_dir: bool,
        out: &mut LowerPart,
    ) -> Result<Walk> {
        let bottom = l == self.layers.bottom();
        let mut cur = self.layers.get(l).root.clone();
        let mut stop_below = false;
        // The path as the layers below will see it, up to component i.
        let mut prefix: Vec<Vec<u8>> = Vec::with_capacity(comps.len());
        let n = comps.len();
        for i in 0..n {
            let name = OsStr::from_bytes(&comps[i]).to_os_string();
            prefix.push(comps[i].clone());
            let last = i + 1 == n;
            // An OCI whiteout deletes the name from the layers below,
            // whether or not this layer makes it anew.
            let oci_whiteout = markers::has_oci_whiteout(cur.as_fd(), &name)?;
            let st = match fs::fstatat(cur.as_fd(), &name) {
                Ok(st) => st,
                Err(e) if (e == Errno::ENOENT || e == Errno::ENAMETOOLONG) && oci_whiteout => {
                    out.whited_out = !is_dir && out.nondir.is_none() && out.dirs.is_empty();
                    return Ok(Walk::Stop);
                }
                Err(e) if e == Errno::ENOENT || e == Errno::ENAMETOOLONG => {
                    prefix.extend_from_slice(&comps[i + 1..]);
                    *comps = prefix;
                    return Ok(if stop_below {
                        Walk::Stop
                    } else {
                        Walk::Missing
                    });
                }
                Err(e) => return Err(e),
            };
            if markers::is_whiteout_at(cur.as_fd(), &name, &st)? {
                out.whited_out = !is_dir && out.nondir.is_none() && out.dirs.is_empty();
                return Ok(Walk::Stop);
            }
            stop_below |= oci_whiteout;
            if !util::is_dir(st.st_mode) {
                if last && out.chasing {
                    if util::kind(st.st_mode) == libc::S_IFREG {
                        out.data = Some(Real::At {
                            layer: l,
                            dir: cur.clone(),
                            name: Name::from(name.as_os_str()),
                        });
                    }
                } else if last && !is_dir && out.dirs.is_empty() {
                    out.first_stat = Some(st);
                    out.nondir = Some(Real::At {
                        layer: l,
                        dir: cur.clone(),
                        name: Name::from(name.as_os_str()),
                    });
                }
                return Ok(Walk::Stop);
            }
            if last && out.chasing {
                return Ok(Walk::Stop);
            }
            if last {
                let res = match self.lower_dir(cur.as_fd(), &name, l, bottom, out)? {
                    None => Walk::Missing,
                    Some(Next::Stop) => Walk::FoundStop,
                    Some(_) if !bottom && self.oci_opaque(out)? => Walk::FoundStop,
                    Some(Next::Same) => Walk::Found,
                    Some(Next::Redirect(r)) => {
                        apply_redirect(&mut prefix, r);
                        Walk::Found
                    }
                };
                *comps = prefix;
                return Ok(match res {
                    Walk::Found if stop_below => Walk::FoundStop,
                    Walk::Missing if stop_below => Walk::Stop,
                    r => r,
                });
            }
            let next = Arc::new(fs::openat(cur.as_fd(), &name, DIR_FLAGS, 0)?);
            if !bottom {
                let m = Markers::read(next.as_fd(), OsStr::new("."))?;
                if m.opaque || markers::has_oci_opaque(next.as_fd())? {
                    stop_below = true;
                } else if let Some(raw) = &m.redirect {
                    let r = Redirect::parse(raw)?;
                    if matches!(r, Redirect::Absolute(_)) {
                        stop_below = false;
                    }
                    apply_redirect(&mut prefix, r);
                }
            }
            cur = next;
        }
        Ok(Walk::Missing)
    }
}

impl Overlay {
    /// The lower directory just added to a lookup is opaque in the OCI
    /// format (lookups by name learn it from the directory's listing;
    /// a redirect walk has none).
    fn oci_opaque(&self, out: &LowerPart) -> Result<bool> {
        match out.dirs.last().and_then(Real::dir_fd) {
            Some(fd) => markers::has_oci_opaque(fd.as_fd()),
            None => Ok(false),
        }
    }
}

enum Next {
    Stop,
    Same,
    Redirect(Redirect),
}

enum Walk {
    Missing,
    Stop,
    Found,
    FoundStop,
}

/// Rewrites a path prefix for a redirect met at its last component.
fn apply_redirect(prefix: &mut Vec<Vec<u8>>, r: Redirect) {
    match r {
        Redirect::Relative(name) => {
            if let Some(last) = prefix.last_mut() {
                *last = name;
            }
        }
        Redirect::Absolute(abs) => *prefix = abs,
    }
}

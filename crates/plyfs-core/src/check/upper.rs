//! The walk of the upper layer: every object's markers, every whiteout,
//! and, with the lowers, every entry looked up through the union.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{CheckError, Out, Problem, Result};
use crate::Overlay;
use crate::error::Errno;
use crate::inode::{Node, ROOT_INO};
use crate::markers::audit::{self, RawKind, RawMarker};
use crate::markers::layer::{OciName, oci_name};
use crate::markers::{XattrNs, has_oci_opaque, is_whiteout};
use crate::sys::fs;
use crate::util;

/// A directory of the upper still to be read.
struct Dir {
    fd: Arc<OwnedFd>,
    /// Relative to the upper.
    rel: PathBuf,
    /// The same directory in the union (with the lowers, where it reads).
    node: Option<Arc<Node>>,
    /// Hides everything below (`overlay.opaque=y`, or OCI's marker).
    opaque: bool,
    /// Marked as holding xattr whiteouts (`overlay.opaque=x`).
    xmarked: bool,
    impure: bool,
}

/// How one entry reads as a whiteout.
enum Whiteout {
    Char,
    /// An empty file with `overlay.whiteout`, in that namespace.
    Xattr(XattrNs),
    /// `.wh.NAME`, which hides NAME.
    Oci(OsString),
}

pub(super) fn walk(
    out: &mut Out<'_>,
    upper: &Path,
    root: OwnedFd,
    union: Option<&Overlay>,
) -> Result<()> {
    let io = |rel: &Path| {
        let path = upper.join(rel);
        move |errno| CheckError::Io {
            path: path.clone(),
            errno,
        }
    };
    let root = Arc::new(root);
    let dot = OsStr::new(".");
    let raw = audit::read_raw(root.as_fd(), dot).map_err(io(Path::new("")))?;
    let mut stack = vec![Dir {
        node: union.and_then(|u| u.node(ROOT_INO).ok()),
        opaque: false,
        xmarked: raw.iter().any(RawMarker::marks_xwhiteouts),
        impure: raw.iter().any(|m| m.kind == RawKind::Impure),
        fd: root,
        rel: PathBuf::new(),
    }];
    while let Some(mut dir) = stack.pop() {
        let mut names = Vec::new();
        fs::read_dir(dir.fd.as_fd(), |e| names.push(e.name.to_os_string()))
            .map_err(io(&dir.rel))?;
        names.sort();
        // The namespace of an origin found here: where impure goes.
        let mut origin_ns: Option<XattrNs> = None;
        for name in names {
            if let Some(sub) = entry(out, upper, union, &mut dir, &name, &mut origin_ns)? {
                stack.push(sub);
            }
        }
        if let Some(ns) = origin_ns
            && !dir.impure
        {
            let fd = dir.fd.clone();
            let path = if dir.rel.as_os_str().is_empty() {
                upper.to_path_buf()
            } else {
                upper.join(&dir.rel)
            };
            out.found(path, Problem::MissingImpure, None, || {
                audit::set_impure(fd.as_fd(), ns)
            });
        }
    }
    Ok(())
}

/// Checks one entry of `dir`; returns it when it is a directory to walk.
fn entry(
    out: &mut Out<'_>,
    upper: &Path,
    union: Option<&Overlay>,
    dir: &mut Dir,
    name: &OsStr,
    origin_ns: &mut Option<XattrNs>,
) -> Result<Option<Dir>> {
    let rel = dir.rel.join(name);
    let path = upper.join(&rel);
    let io = |errno| CheckError::Io {
        path: path.clone(),
        errno,
    };
    let st = match fs::fstatat(dir.fd.as_fd(), name) {
        Ok(st) => st,
        Err(e) if e == Errno::ENOENT => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    out.report.objects += 1;
    let oci = oci_name(name);
    if oci == OciName::Opaque {
        return Ok(None);
    }
    let raw = audit::read_raw(dir.fd.as_fd(), name).map_err(io)?;
    let mut defective = false;
    for m in &raw {
        let Some(why) = m.defect() else { continue };
        defective = true;
        // Values no reader uses can go; the others carry what only a
        // person can restore.
        let problem = match m.kind {
            RawKind::Nlink | RawKind::Origin | RawKind::Opaque => Problem::UselessValue,
            _ => Problem::BadValue,
        };
        let detail = format!(
            "{} = {:?}: {why}",
            m.attr.to_string_lossy(),
            String::from_utf8_lossy(&m.value)
        );
        let fd = dir.fd.clone();
        out.found(path.clone(), problem, Some(detail), || {
            audit::remove_raw(fd.as_fd(), name, m)
        });
    }
    let kind = util::kind(st.st_mode);
    let whiteout = match oci {
        OciName::Whiteout(t) => Some(Whiteout::Oci(t.to_os_string())),
        _ if is_whiteout(&st) => Some(Whiteout::Char),
        _ if kind == libc::S_IFREG && st.st_size == 0 => raw
            .iter()
            .find(|m| m.kind == RawKind::Whiteout)
            .and_then(|m| m.ns)
            .map(Whiteout::Xattr),
        _ => None,
    };
    if let Some(w) = whiteout {
        check_whiteout(out, union, dir, name, path, w)?;
        return Ok(None);
    }
    if let Some(m) = raw
        .iter()
        .find(|m| matches!(m.kind, RawKind::Origin | RawKind::Redirect) && m.defect().is_none())
    {
        *origin_ns = origin_ns.or(m.ns);
    }
    let is_dir = kind == libc::S_IFDIR;
    let node = match union.zip(dir.node.as_ref()) {
        Some((u, pnode)) => match u.find_node(pnode, name, false) {
            Ok(n) => Some(n),
            Err(e) => {
                let metacopy = raw.iter().any(|m| m.kind == RawKind::Metacopy);
                if e == Errno::EIO && metacopy && !defective {
                    out.found(path.clone(), Problem::MetacopyWithoutData, None, || Ok(()));
                } else if !defective {
                    out.found(
                        path.clone(),
                        Problem::Unreadable,
                        Some(e.to_string()),
                        || Ok(()),
                    );
                }
                None
            }
        },
        None => None,
    };
    if !is_dir {
        return Ok(None);
    }
    let opaque = raw.iter().any(RawMarker::is_opaque);
    if let Some(n) = &node {
        let s = n.state.read();
        if s.redirect().is_some() && s.lowers.is_empty() && !opaque {
            out.found(
                path.clone(),
                Problem::DanglingRedirect,
                s.redirect()
                    .map(|r| format!("{:?}", String::from_utf8_lossy(r))),
                || Ok(()),
            );
        }
    }
    let fd = Arc::new(
        fs::openat(
            dir.fd.as_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(io)?,
    );
    let oci_opaque = has_oci_opaque(fd.as_fd()).map_err(io)?;
    Ok(Some(Dir {
        opaque: opaque || oci_opaque,
        xmarked: raw.iter().any(RawMarker::marks_xwhiteouts),
        impure: raw.iter().any(|m| m.kind == RawKind::Impure),
        node,
        fd,
        rel,
    }))
}

/// A whiteout: needed where a lower has its name, never inside an opaque
/// directory, and an xattr whiteout only where its directory says so.
fn check_whiteout(
    out: &mut Out<'_>,
    union: Option<&Overlay>,
    dir: &Dir,
    name: &OsStr,
    path: PathBuf,
    w: Whiteout,
) -> Result<()> {
    let fd = dir.fd.clone();
    if dir.opaque {
        out.found(path, Problem::WhiteoutInOpaque, None, || {
            fs::unlinkat(fd.as_fd(), name, false)
        });
        return Ok(());
    }
    if let Whiteout::Xattr(ns) = w
        && !dir.xmarked
    {
        out.found(path.clone(), Problem::UnmarkedXattrWhiteout, None, || {
            audit::set_xwhiteouts(fd.as_fd(), ns)
        });
    }
    let target = match &w {
        Whiteout::Oci(t) => t.as_os_str(),
        _ => name,
    };
    if let (Some(u), Some(node)) = (union, &dir.node) {
        let needed = u
            .lower_positive(node, target)
            .map_err(|errno| CheckError::Io {
                path: path.clone(),
                errno,
            })?;
        if !needed {
            out.found(path, Problem::UnneededWhiteout, None, || Ok(()));
        }
    }
    Ok(())
}

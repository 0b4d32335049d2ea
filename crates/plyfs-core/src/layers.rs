//! The layer stack: opening and checking the directories a mount is made
//! of, preparing the work directory, and choosing the on-disk formats the
//! mount writes.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::config::{Config, OverrideStat};
use crate::error::{Errno, SetupError};
use crate::markers::{self, Markers, OverrideNs, StatOverride};
use crate::sys::{fs, handle, process, xattr};
use crate::util;

/// Index of a layer in [`Layers::all`]; the upper, when there is one, is 0.
pub type LayerIdx = u16;

#[derive(Debug)]
pub(crate) struct Layer {
    pub path: PathBuf,
    /// `O_PATH` descriptor of the layer root.
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    pub root_ino: u64,
    /// Which of the mount's distinct filesystems the layer is on; 0 is the
    /// upper's (or, read-only, the top lower's).
    pub fsid: u16,
    /// UUID of that filesystem, for matching origin file handles.
    pub uuid: Option<[u8; 16]>,
    pub is_upper: bool,
    /// The override-stat attribute this layer's objects report their owner,
    /// mode and type from (fuse-overlayfs's "override layer").
    pub overrides: Option<OverrideNs>,
}

/// The work directory: `work/` for objects under construction, `index/`
/// for hard-linked copies, laid out as the kernel lays them out.
#[derive(Debug)]
pub(crate) struct Workdir {
    pub path: PathBuf,
    pub work: Arc<OwnedFd>,
    pub index: Arc<OwnedFd>,
    /// Held for the life of the mount: a second union on the same upper or
    /// work directory would interleave its copy-ups with this one's.
    _locks: Vec<OwnedFd>,
}

#[derive(Debug)]
pub(crate) struct Layers {
    pub all: Vec<Layer>,
    pub first_lower: usize,
    /// Where the data-only layers start (`all.len()` without any).
    pub first_data: usize,
    pub work: Option<Workdir>,
    /// The marker format this mount writes.
    pub markers: markers::Writer,
    /// Number of distinct filesystems among the layers.
    pub nfs: usize,
}

impl Layers {
    pub fn has_upper(&self) -> bool {
        self.first_lower == 1
    }

    pub fn upper(&self) -> Option<&Layer> {
        if self.has_upper() {
            self.all.first()
        } else {
            None
        }
    }

    pub fn is_upper(&self, l: LayerIdx) -> bool {
        self.has_upper() && l == 0
    }

    /// The lower layers that names are looked up in, top first.
    pub fn lowers(&self) -> impl Iterator<Item = (LayerIdx, &Layer)> {
        self.range(self.first_lower, self.first_data)
    }

    /// The data-only layers, reached only through metacopy redirects.
    pub fn data_layers(&self) -> impl Iterator<Item = (LayerIdx, &Layer)> {
        self.range(self.first_data, self.all.len())
    }

    fn range(&self, from: usize, to: usize) -> impl Iterator<Item = (LayerIdx, &Layer)> {
        self.all
            .iter()
            .enumerate()
            .take(to)
            .skip(from)
            .map(|(i, l)| (i as LayerIdx, l))
    }

    /// The bottom layer that names are looked up in.
    pub fn bottom(&self) -> LayerIdx {
        self.first_data.saturating_sub(1) as LayerIdx
    }

    pub fn get(&self, l: LayerIdx) -> &Layer {
        &self.all[l as usize]
    }

    /// Opens and checks every layer of `config`.
    pub fn open(config: &Config) -> Result<Layers, SetupError> {
        if config.lowers.is_empty() {
            return Err(SetupError::NoLowers);
        }
        match (&config.upper, &config.work) {
            // A read-only union needs no work directory: commit reads an
            // upper that is not mounted, without touching anything beside it.
            (Some(_), None) if config.read_only => {}
            (Some(_), None) | (None, Some(_)) => {
                let show = |p: &Option<PathBuf>| {
                    p.as_ref()
                        .map_or("(missing)".to_string(), |p| p.display().to_string())
                };
                return Err(SetupError::UpperWithoutWork {
                    upper: show(&config.upper),
                    work: show(&config.work),
                });
            }
            _ => {}
        }
        let mut all = Vec::new();
        if let Some(upper) = &config.upper {
            all.push(open_layer("upperdir", upper, true)?);
        }
        let first_lower = all.len();
        for lower in &config.lowers {
            all.push(open_layer("lowerdir", lower, false)?);
        }
        let first_data = all.len();
        for data in &config.data_lowers {
            all.push(open_layer("lowerdir", data, false)?);
        }

        // Distinct filesystems, the upper's (or top layer's) first.
        let mut devs: Vec<u64> = Vec::new();
        for l in &mut all {
            let id = devs.iter().position(|&d| d == l.dev).unwrap_or_else(|| {
                devs.push(l.dev);
                devs.len() - 1
            });
            l.fsid = id as u16;
        }

        let work = match (&config.upper, &config.work) {
            (Some(upper), Some(work)) => {
                let upper_layer = &all[0];
                let st =
                    fs::fstatvfs(upper_layer.root.as_fd()).map_err(|errno| SetupError::Layer {
                        role: "upperdir",
                        path: upper.clone(),
                        errno,
                    })?;
                if st.f_flag & libc::ST_RDONLY != 0 && !config.read_only {
                    return Err(SetupError::UpperReadOnly(upper.clone()));
                }
                check_overlaps(&all, work)?;
                if config.read_only {
                    // A reader of the upper (commit, diff) beside a mount
                    // that may be live: its index is read, nothing is
                    // cleaned or locked.
                    index_only(work)
                } else {
                    Some(prepare_workdir(work, upper, upper_layer)?)
                }
            }
            _ => {
                check_overlaps(&all, Path::new(""))?;
                None
            }
        };

        // The upper reads (and writes) the attribute the mount is told to
        // keep; without the option, one its root carries from before.
        let wanted = config.override_stat.map(|o| match o {
            OverrideStat::Privileged => OverrideNs::Privileged,
            OverrideStat::User => OverrideNs::Containers,
        });
        if let Some(upper) = all.first_mut().filter(|l| l.is_upper)
            && wanted.is_some()
        {
            upper.overrides = wanted;
        }
        let markers = match &work {
            Some(w) if !config.read_only => {
                let ns = all.first().filter(|l| l.is_upper).and_then(|l| l.overrides);
                markers::Writer::probe(w.work.as_fd(), config.userxattr, ns)
            }
            _ => markers::Writer::read_only(config.userxattr),
        };
        if wanted.is_some()
            && markers.keeps_overrides()
            && let Some(upper) = all.first().filter(|l| l.is_upper)
        {
            mark_override_layer(upper, &markers)?;
        }
        debug!("upper format: {}", markers.describe());
        Ok(Layers {
            all,
            first_lower,
            first_data,
            work,
            markers,
            nfs: devs.len(),
        })
    }
}

fn open_layer(role: &'static str, path: &Path, is_upper: bool) -> Result<Layer, SetupError> {
    let err = |errno: Errno| match errno {
        e if e == Errno::ENOTDIR => SetupError::NotADirectory {
            role,
            path: path.to_path_buf(),
        },
        errno => SetupError::Layer {
            role,
            path: path.to_path_buf(),
            errno,
        },
    };
    // The root itself may be a symlink (container storage's l/SHORTID);
    // nothing below it is ever followed.
    let root = fs::open_path(path, libc::O_PATH | libc::O_DIRECTORY).map_err(err)?;
    let st = fs::fstat(root.as_fd()).map_err(err)?;
    // Reading the root proves the layer is usable with our credentials.
    fs::list_names(root.as_fd()).map_err(|errno| SetupError::Unreadable {
        role,
        path: path.to_path_buf(),
        errno,
    })?;
    let uuid = handle::fs_uuid(root.as_fd()).ok();
    let overrides = Markers::read(root.as_fd(), OsStr::new("."))
        .map_err(err)?
        .override_ns();
    Ok(Layer {
        path: path.to_path_buf(),
        root: Arc::new(root),
        dev: st.st_dev,
        root_ino: st.st_ino,
        fsid: 0,
        uuid,
        is_upper,
        overrides,
    })
}

/// Gives the upper's root the override its objects will carry, from what
/// it reports now, so that the next mount (or another tool) takes the
/// upper for an override layer whatever options it is given.
fn mark_override_layer(upper: &Layer, writer: &markers::Writer) -> Result<(), SetupError> {
    let err = |errno| SetupError::Layer {
        role: "upperdir",
        path: upper.path.clone(),
        errno,
    };
    let dot = OsStr::new(".");
    let m = Markers::read(upper.root.as_fd(), dot).map_err(err)?;
    let Some(ns) = upper.overrides else {
        return Ok(());
    };
    if m.stat_override(ns).is_some() {
        return Ok(());
    }
    let value = match m.override_ns().and_then(|other| m.stat_override(other)) {
        Some(v) => v,
        None => StatOverride::from_stat(&fs::fstat(upper.root.as_fd()).map_err(err)?),
    };
    writer
        .set_override(upper.root.as_fd(), dot, &value)
        .map_err(err)?;
    Ok(())
}

/// (dev, ino) of a directory and all its ancestors, found by walking `..`
/// through descriptors.
fn ancestry(start: BorrowedFd<'_>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(mut cur) = fs::openat(start, OsStr::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)
    else {
        return out;
    };
    for _ in 0..4096 {
        let Ok(st) = fs::fstat(cur.as_fd()) else {
            break;
        };
        if out.last() == Some(&(st.st_dev, st.st_ino)) {
            break;
        }
        out.push((st.st_dev, st.st_ino));
        match fs::openat(
            cur.as_fd(),
            OsStr::new(".."),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        ) {
            Ok(p) => cur = p,
            Err(_) => break,
        }
    }
    out
}

/// The index of a work directory, for a union that only reads: `None`
/// where there is none.
fn index_only(path: &Path) -> Option<Workdir> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let root = fs::open_path(path, flags).ok()?;
    let index = Arc::new(
        fs::openat(
            root.as_fd(),
            OsStr::new("index"),
            flags | libc::O_NOFOLLOW,
            0,
        )
        .ok()?,
    );
    Some(Workdir {
        path: path.to_path_buf(),
        work: index.clone(),
        index,
        _locks: Vec::new(),
    })
}

/// Locks a directory for this mount (as the kernel marks its upper and
/// work directories in use).
fn lock(path: &Path, role: &'static str, dir: BorrowedFd<'_>) -> Result<OwnedFd, SetupError> {
    let err = |errno| SetupError::Layer {
        role,
        path: path.to_path_buf(),
        errno,
    };
    let fd =
        fs::openat(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(err)?;
    if util::lock_in_use(fd.as_fd()).map_err(err)? {
        Ok(fd)
    } else {
        Err(SetupError::InUse {
            role,
            path: path.to_path_buf(),
        })
    }
}

impl Layers {
    /// The mount point must not lie inside a layer (lookups in that layer
    /// would enter the union itself), nor a layer or the work directory
    /// inside it. Mounting over a layer's own root is the kernel's usual
    /// trick and stays allowed.
    pub fn check_mountpoint(&self, mp: &Path) -> Result<(), SetupError> {
        let Ok(m) = fs::open_path(mp, libc::O_PATH | libc::O_DIRECTORY) else {
            return Ok(());
        };
        let Ok(mst) = fs::fstat(m.as_fd()) else {
            return Ok(());
        };
        let mp_id = (mst.st_dev, mst.st_ino);
        let mp_anc = ancestry(m.as_fd());
        let overlap = |what, path: &Path| SetupError::MountpointOverlap {
            what,
            path: path.to_path_buf(),
            mountpoint: mp.to_path_buf(),
        };
        for l in &self.all {
            let role = if l.is_upper { "upperdir" } else { "lowerdir" };
            let id = (l.dev, l.root_ino);
            if id != mp_id && (mp_anc.contains(&id) || ancestry(l.root.as_fd()).contains(&mp_id)) {
                return Err(overlap(role, &l.path));
            }
        }
        if let Some(w) = &self.work
            && ancestry(w.work.as_fd()).contains(&mp_id)
        {
            return Err(overlap("workdir", &w.path));
        }
        Ok(())
    }
}

/// The kernel refuses upper and work directories that overlap a lower or
/// each other: a copy-up would change a lower under the mount's feet.
fn check_overlaps(all: &[Layer], work: &Path) -> Result<(), SetupError> {
    let Some(upper) = all.first().filter(|l| l.is_upper) else {
        return Ok(());
    };
    let upper_anc = ancestry(upper.root.as_fd());
    for lower in all.iter().filter(|l| !l.is_upper) {
        if upper_anc[1..].contains(&(lower.dev, lower.root_ino))
            || (lower.dev, lower.root_ino) == (upper.dev, upper.root_ino)
        {
            return Err(SetupError::Overlap {
                inner: "upperdir",
                inner_path: upper.path.clone(),
                outer: "lowerdir",
                outer_path: lower.path.clone(),
            });
        }
        let lower_anc = ancestry(lower.root.as_fd());
        if lower_anc[1..].contains(&(upper.dev, upper.root_ino)) {
            return Err(SetupError::Overlap {
                inner: "lowerdir",
                inner_path: lower.path.clone(),
                outer: "upperdir",
                outer_path: upper.path.clone(),
            });
        }
    }
    if let Ok(w) = fs::open_path(work, libc::O_PATH | libc::O_DIRECTORY) {
        let wst = fs::fstat(w.as_fd()).ok();
        let work_anc = ancestry(w.as_fd());
        for l in all {
            let id = (l.dev, l.root_ino);
            let role = if l.is_upper { "upperdir" } else { "lowerdir" };
            if work_anc.contains(&id) {
                return Err(SetupError::Overlap {
                    inner: "workdir",
                    inner_path: work.to_path_buf(),
                    outer: role,
                    outer_path: l.path.clone(),
                });
            }
            if let Some(wst) = &wst
                && ancestry(l.root.as_fd())[1..].contains(&(wst.st_dev, wst.st_ino))
            {
                return Err(SetupError::Overlap {
                    inner: role,
                    inner_path: l.path.clone(),
                    outer: "workdir",
                    outer_path: work.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

fn prepare_workdir(path: &Path, upper_path: &Path, upper: &Layer) -> Result<Workdir, SetupError> {
    let werr = |what: &'static str| {
        move |errno: Errno| SetupError::Workdir {
            path: path.to_path_buf(),
            what,
            errno,
        }
    };
    let root = fs::open_path(path, libc::O_PATH | libc::O_DIRECTORY).map_err(|errno| {
        if errno == Errno::ENOTDIR {
            SetupError::NotADirectory {
                role: "workdir",
                path: path.to_path_buf(),
            }
        } else {
            SetupError::Layer {
                role: "workdir",
                path: path.to_path_buf(),
                errno,
            }
        }
    })?;
    let st = fs::fstat(root.as_fd()).map_err(werr("stat"))?;
    if st.st_dev != upper.dev {
        return Err(SetupError::WorkOtherFs {
            work: path.to_path_buf(),
            upper: upper_path.to_path_buf(),
        });
    }
    // Locked before anything in it is touched: a second mount of the same
    // directories, refused below, must not first clean away the work/
    // objects of the live one (its copy-ups in progress).
    let locks = vec![
        lock(path, "workdir", root.as_fd())?,
        lock(upper_path, "upperdir", upper.root.as_fd())?,
    ];
    // The kernel makes these mode 000: only a process that may override
    // modes can use them, and root can. Without that privilege (a plain
    // user through fusermount3) they must be ours to read: 0700 keeps them
    // as private. The kernel recreates work/ on its next mount anyway.
    let mode = if process::geteuid() == 0 { 0 } else { 0o700 };
    let sub = |name: &str| -> Result<Arc<OwnedFd>, SetupError> {
        let name = OsStr::new(name);
        match fs::mkdirat(root.as_fd(), name, mode) {
            Ok(()) => {}
            Err(e) if e == Errno::EEXIST => {}
            Err(e) => return Err(werr("cannot create work directory")(e)),
        }
        let fd = fs::openat(
            root.as_fd(),
            name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(werr("cannot open work directory"))?;
        // One left mode 000 by the kernel or by root, but ours: make it
        // usable.
        if fs::list_names(fd.as_fd()) == Err(Errno::EACCES)
            && fs::fstat(fd.as_fd()).is_ok_and(|st| st.st_uid == process::geteuid())
        {
            fs::fchmodat(root.as_fd(), name, 0o700)
                .map_err(werr("cannot make the work directory readable"))?;
        }
        Ok(Arc::new(fd))
    };
    let work = sub("work")?;
    // Nothing built in work/ may take an ACL from it: a default ACL there
    // would be inherited by every copy-up and every object made over a
    // whiteout. The kernel's overlayfs removes both at mount too.
    for acl in [crate::acl::DEFAULT_XATTR, crate::acl::ACCESS_XATTR] {
        match xattr::remove(work.as_fd(), OsStr::new("."), OsStr::new(acl)) {
            Err(e) if e != Errno::ENODATA && e != Errno::EOPNOTSUPP => {
                warn!("cannot remove {acl} from {}/work: {e}", path.display());
            }
            _ => {}
        }
    }
    // Whatever a crashed mount left in work/ was never visible: drop it.
    let mut leftovers = 0usize;
    let names = fs::list_names(work.as_fd()).map_err(werr("cannot read work directory"))?;
    for name in names {
        util::remove_tree(work.as_fd(), &name).map_err(werr("cannot clean work directory"))?;
        leftovers += 1;
    }
    if leftovers > 0 {
        warn!(
            "removed {leftovers} leftover object(s) from {}/work",
            path.display()
        );
    }
    let index = sub("index")?;
    Ok(Workdir {
        path: path.to_path_buf(),
        work,
        index,
        _locks: locks,
    })
}

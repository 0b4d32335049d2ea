//! Starting a FUSE session for a union, and ending it.
//!
//! Where plyfs may mount(2) itself (root, also root of a user namespace)
//! it does, with the type `fuse.SUBTYPE` and the fsname as the source, as
//! libfuse does, so that `mount` and /proc/mounts show `fuse.plyfs` and
//! tools can tell what the mount is. Everyone else goes through the
//! set-user-ID `fusermount3`, which applies the same naming and the system's
//! rules (`allow_other` only with `user_allow_other` in /etc/fuse.conf).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use plyfs_core::{Errno, Overlay};
use plyfs_sys::{fs as sysfs, process};
use tracing::{debug, warn};

use crate::{FuseOptions, PlyFs};

/// Mount options that concern the kernel's side of the mount.
#[derive(Clone, Debug, Default)]
pub struct MountSpec {
    pub fsname: String,
    pub subtype: String,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Let the kernel check permissions from the modes (as for any other
    /// filesystem); plyfs itself acts with the daemon's privileges.
    pub default_permissions: bool,
    pub read_only: bool,
    /// Generic flags and options passed to the kernel as they are: nodev,
    /// nosuid, noexec, noatime, ..., SELinux labels.
    pub flags: Vec<String>,
}

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "mounting needs root or fusermount3, which is missing: install fuse3 (apt-get install fuse3)"
    )]
    NoFusermount,
    #[error("{}", describe(.0))]
    Io(#[from] io::Error),
}

/// An errno as its message alone; anything else as it reads.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => Errno::from_raw(n).to_string(),
        None => e.to_string(),
    }
}

/// A live mount, its requests not served yet.
pub struct Mounted {
    session: Session<PlyFs>,
    unmounter: Unmounter,
}

/// Ends the mount from another thread (a signal handler's).
pub enum Unmounter {
    /// Mounted by plyfs: unmounted by plyfs.
    Direct(PathBuf),
    /// Mounted through fusermount3: unmounted through it.
    Fusermount(SessionUnmounter),
}

impl Unmounter {
    /// Unmounts; a busy mount is detached, and the kernel ends the session
    /// once its last user lets go.
    pub fn unmount(&mut self) -> io::Result<()> {
        match self {
            Unmounter::Direct(mp) => match sysfs::umount(mp, false) {
                Err(e) if e == Errno::EBUSY => {
                    warn!("{} is busy; detaching it", mp.display());
                    sysfs::umount(mp, true).map_err(io::Error::from)
                }
                r => r.map_err(io::Error::from),
            },
            Unmounter::Fusermount(u) => u.unmount(),
        }
    }
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        match &self.unmounter {
            Unmounter::Direct(mp) => Unmounter::Direct(mp.clone()),
            Unmounter::Fusermount(_) => Unmounter::Fusermount(self.session.unmount_callable()),
        }
    }

    /// Serves requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        self.session.run()
    }
}

/// Mounts `ov` at `mountpoint`; returns once the kernel has completed the
/// FUSE handshake, that is when the mount is live.
pub fn mount(
    ov: Arc<Overlay>,
    mountpoint: &Path,
    spec: &MountSpec,
    opts: FuseOptions,
) -> Result<Mounted, MountError> {
    let mut config = Config::default();
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    config.acl = acl(spec);
    let cell = Arc::new(std::sync::OnceLock::new());
    let fs = PlyFs::new(ov.clone(), opts, cell.clone());
    let (session, unmounter) = match mount_direct(mountpoint, spec)? {
        Some(fd) => {
            let acl = config.acl;
            // The handshake reads the kernel's INIT: a session that cannot
            // start leaves a dead mount behind unless it goes.
            let session = Session::from_fd(fs, fd, acl, config).inspect_err(|_| {
                let _ = sysfs::umount(mountpoint, true);
            })?;
            (session, Unmounter::Direct(mountpoint.to_path_buf()))
        }
        None => {
            if !fusermount_available() {
                return Err(MountError::NoFusermount);
            }
            let mut spec = spec.clone();
            if (spec.allow_other || spec.allow_root) && !user_allow_other() {
                warn!(
                    "allow_other needs user_allow_other in /etc/fuse.conf for a non-root mount: \
                     only this user can use {}",
                    mountpoint.display()
                );
                spec.allow_other = false;
                spec.allow_root = false;
                config.acl = SessionACL::Owner;
            }
            config.mount_options = fusermount_options(&spec);
            let mut session = Session::new(fs, mountpoint, &config)?;
            let unmounter = Unmounter::Fusermount(session.unmount_callable());
            (session, unmounter)
        }
    };
    let _ = cell.set(session.notifier());
    crate::coherence::install(&ov, session.notifier());
    Ok(Mounted { session, unmounter })
}

fn acl(spec: &MountSpec) -> SessionACL {
    if spec.allow_other {
        SessionACL::All
    } else if spec.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    }
}

/// mount(2) by plyfs itself; `None` where the kernel says only privileged
/// processes may (then fusermount3 does it).
fn mount_direct(mountpoint: &Path, spec: &MountSpec) -> io::Result<Option<OwnedFd>> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        root_mode,
        process::geteuid(),
        process::getegid()
    );
    if spec.default_permissions {
        data.push_str(",default_permissions");
    }
    if spec.allow_other || spec.allow_root {
        data.push_str(",allow_other");
    }
    // As libfuse: no devices and no set-ID programs unless asked for.
    let mut flags = libc::MS_NODEV | libc::MS_NOSUID;
    if spec.read_only {
        flags |= libc::MS_RDONLY;
    }
    for f in &spec.flags {
        match f.as_str() {
            "dev" => flags &= !libc::MS_NODEV,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "nosuid" => flags |= libc::MS_NOSUID,
            "noexec" => flags |= libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "lazytime" => flags |= libc::MS_LAZYTIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "dirsync" => flags |= libc::MS_DIRSYNC,
            // Only one atime mode is ever given (the options parser keeps
            // the last); "atime" is the kernel's default, relatime.
            "exec" | "atime" | "async" | "diratime" | "nolazytime" => {}
            other => {
                data.push(',');
                data.push_str(other);
            }
        }
    }
    let fstype = format!("fuse.{}", spec.subtype);
    match sysfs::mount(&spec.fsname, mountpoint, &fstype, flags, &data) {
        Ok(()) => {
            debug!("mounted {fstype} at {} ({data})", mountpoint.display());
            Ok(Some(OwnedFd::from(dev)))
        }
        Err(e) if e == Errno::EPERM => {
            debug!("mount(2) refused: going through fusermount3");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// The options fusermount3 is given (it adds `nodev,nosuid` itself for
/// users other than root).
fn fusermount_options(spec: &MountSpec) -> Vec<MountOption> {
    let mut options = vec![
        MountOption::FSName(spec.fsname.clone()),
        MountOption::Subtype(spec.subtype.clone()),
    ];
    if spec.default_permissions {
        options.push(MountOption::DefaultPermissions);
    }
    if spec.read_only {
        options.push(MountOption::RO);
    }
    for f in &spec.flags {
        options.push(match f.as_str() {
            "nodev" => MountOption::NoDev,
            "dev" => MountOption::Dev,
            "nosuid" => MountOption::NoSuid,
            "suid" => MountOption::Suid,
            "noexec" => MountOption::NoExec,
            "exec" => MountOption::Exec,
            "noatime" => MountOption::NoAtime,
            "atime" => MountOption::Atime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    options
}

/// Whether fuser will find fusermount3 (or the program FUSERMOUNT_PATH
/// names).
fn fusermount_available() -> bool {
    if let Some(p) = std::env::var_os("FUSERMOUNT_PATH") {
        return Path::new(&p).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fusermount3").is_file()))
}

/// Whether /etc/fuse.conf lets users other than root mount with
/// `allow_other`.
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|c| {
        c.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == "user_allow_other")
    })
}

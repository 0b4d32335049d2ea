//! Starting a FUSE session for a union.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use plyfs_core::Overlay;

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
    /// Generic flags passed to the kernel as they are: nodev, nosuid,
    /// noexec, noatime, ...
    pub flags: Vec<String>,
}

/// A live mount, its requests not served yet.
pub struct Mounted {
    session: Session<PlyFs>,
}

/// Unmounts from another thread (a signal handler's).
pub struct Unmounter(SessionUnmounter);

impl Unmounter {
    pub fn unmount(&mut self) -> io::Result<()> {
        self.0.unmount()
    }
}

impl Mounted {
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
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
) -> io::Result<Mounted> {
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
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = if spec.allow_other {
        SessionACL::All
    } else if spec.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let cell = Arc::new(std::sync::OnceLock::new());
    let session = Session::new(
        PlyFs::new(ov.clone(), opts, cell.clone()),
        mountpoint,
        &config,
    )?;
    let _ = cell.set(session.notifier());
    crate::coherence::install(&ov, session.notifier());
    Ok(Mounted { session })
}

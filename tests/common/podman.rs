//! A private containers-storage and podman configuration, root or
//! rootless, whose overlay driver mounts through a chosen mount program
//! (plyfs, fuse-overlayfs, or none: the kernel's overlayfs). Everything it
//! creates lives under one directory and is removed when it is dropped,
//! also after a failed assertion.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::tree::Tree;
use super::users::{
    MountEntry, TAR_CREATE, User, kill_processes_mentioning, mount_at, run, run_ok, tar_snapshot,
    unmount_all_under, which,
};

/// What the overlay driver mounts with.
#[derive(Clone, Debug)]
pub enum MountProgram {
    /// A FUSE program taking fuse-overlayfs's command line.
    Fuse(PathBuf),
    /// No mount program: the kernel's overlayfs (root only).
    Kernel,
}

impl MountProgram {
    pub fn fuse_overlayfs() -> MountProgram {
        MountProgram::Fuse(which("fuse-overlayfs").expect("fuse-overlayfs is installed"))
    }

    /// The filesystem type its mounts must show in mountinfo:
    /// `fuse.NAME` for a FUSE program (as fuse-overlayfs's
    /// `fuse.fuse-overlayfs`), `overlay` for the kernel's.
    pub fn fstype(&self) -> String {
        match self {
            MountProgram::Fuse(p) => {
                format!("fuse.{}", p.file_name().unwrap().to_string_lossy())
            }
            MountProgram::Kernel => "overlay".into(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            MountProgram::Fuse(p) => p.file_name().unwrap().to_string_lossy().into_owned(),
            MountProgram::Kernel => "kernel overlayfs".into(),
        }
    }
}

/// Who runs podman.
#[derive(Clone, Debug)]
pub enum Mode {
    Root,
    /// An unprivileged user; mounts live in its `podman unshare` namespace.
    Rootless(User),
}

/// A private podman: its own storage.conf and containers.conf, graph
/// root, run root, tmp dir (with file locks and the rootless pause
/// process's pid), network config, XDG_RUNTIME_DIR and HOME, all under
/// `dir`.
pub struct PodmanStore {
    pub dir: PathBuf,
    pub mode: Mode,
    pub program: MountProgram,
    env: Vec<(String, PathBuf)>,
    argv_log: Option<PathBuf>,
}

impl PodmanStore {
    /// Sets up the store in `dir` (created; for a rootless store owned by
    /// its user, so its parents must be traversable by it). With
    /// `log_argv`, mount_program is a wrapper that appends each command
    /// line it gets to a log ([`Self::mount_program_calls`]) and execs the
    /// program.
    pub fn new(dir: &Path, mode: Mode, program: MountProgram, log_argv: bool) -> PodmanStore {
        if matches!(mode, Mode::Rootless(_)) && matches!(program, MountProgram::Kernel) {
            panic!("a rootless store here always uses a FUSE mount program");
        }
        let d = |rel: &str| dir.join(rel);
        for sub in ["graph", "run", "tmp", "net", "home", "xdg"] {
            std::fs::create_dir_all(d(sub)).expect("store dirs");
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d("xdg"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut argv_log = None;
        let program_line = match &program {
            MountProgram::Kernel => String::new(),
            MountProgram::Fuse(real) => {
                let path = if log_argv {
                    let log = d("mount-program.log");
                    let wrapper = d("mount-program");
                    std::fs::write(
                        &wrapper,
                        format!(
                            "#!/bin/sh\n{{ printf 'uid=%s:' \"$(id -u)\"; for a in \"$@\"; do printf ' [%s]' \"$a\"; done; printf '\\n'; }} >> '{}'\nexec '{}' \"$@\"\n",
                            log.display(),
                            real.display()
                        ),
                    )
                    .unwrap();
                    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                        .unwrap();
                    argv_log = Some(log);
                    wrapper
                } else {
                    real.clone()
                };
                format!("mount_program = \"{}\"\n", path.display())
            }
        };
        // rootless_storage_path: a rootless podman ignores graphroot.
        std::fs::write(
            d("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{g}\"\nrunroot = \"{r}\"\nrootless_storage_path = \"{g}\"\n\n[storage.options.overlay]\n{program_line}mountopt = \"nodev\"\n",
                g = d("graph").display(),
                r = d("run").display(),
            ),
        )
        .unwrap();
        // File locks in tmp_dir instead of the host-wide shared memory
        // segment; no journald, no systemd, networks kept here.
        std::fs::write(
            d("containers.conf"),
            format!(
                "[engine]\ntmp_dir = \"{t}\"\nlock_type = \"file\"\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\nvolume_path = \"{v}\"\n\n[network]\nnetwork_config_dir = \"{n}\"\n",
                t = d("tmp").display(),
                v = d("graph/volumes").display(),
                n = d("net").display(),
            ),
        )
        .unwrap();
        if let Mode::Rootless(user) = &mode {
            user.chown_tree(dir);
        }
        let env = vec![
            ("CONTAINERS_STORAGE_CONF".into(), d("storage.conf")),
            ("CONTAINERS_CONF".into(), d("containers.conf")),
            ("XDG_RUNTIME_DIR".into(), d("xdg")),
            ("XDG_CONFIG_HOME".into(), d("home/.config")),
            ("XDG_DATA_HOME".into(), d("home/.local/share")),
            ("TMPDIR".into(), d("tmp")),
        ];
        PodmanStore {
            dir: dir.to_path_buf(),
            mode,
            program,
            env,
            argv_log,
        }
    }

    /// `program` with the store's environment, as the store's user.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = match &self.mode {
            Mode::Root => {
                let mut c = Command::new(program);
                c.env("HOME", self.dir.join("home")).current_dir(&self.dir);
                c
            }
            Mode::Rootless(user) => user.command(program, &self.dir.join("home")),
        };
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// `podman ARGS`.
    pub fn podman<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = self.command("podman");
        c.args(args);
        c
    }

    /// Runs `podman ARGS`, which must succeed; returns its stdout, trimmed.
    pub fn podman_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let what = format!(
            "podman {}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        run_ok(&mut self.podman(args), &what).trim().to_string()
    }

    /// `sh -c SCRIPT sh ARGS...` as the container's root: root itself, or
    /// the user's namespace root through `podman unshare`, where its
    /// mounts are.
    pub fn as_container_root<S: AsRef<OsStr>>(&self, script: &str, args: &[S]) -> Command {
        let mut c = match self.mode {
            Mode::Root => self.command("sh"),
            Mode::Rootless(_) => {
                let mut c = self.command("podman");
                c.arg("unshare").arg("sh");
                c
            }
        };
        c.arg("-c").arg(script).arg("sh").args(args);
        c
    }

    /// `podman mount CTR` (in the namespace when rootless): the rootfs.
    pub fn mount(&self, ctr: &str) -> PathBuf {
        let out = run_ok(
            &mut self.as_container_root("exec podman mount \"$1\"", &[ctr]),
            &format!("podman mount {ctr} ({})", self.program.name()),
        );
        PathBuf::from(out.trim())
    }

    /// `podman unmount CTR` (in the namespace when rootless).
    pub fn unmount(&self, ctr: &str) {
        run_ok(
            &mut self.as_container_root("exec podman unmount \"$1\"", &[ctr]),
            &format!("podman unmount {ctr}"),
        );
    }

    /// The mount at `mp` as the container's root sees it.
    pub fn mount_entry(&self, mp: &Path) -> Option<MountEntry> {
        let info = run_ok(
            &mut self.as_container_root::<&str>("cat /proc/self/mountinfo", &[]),
            "read mountinfo",
        );
        mount_at(&info, mp)
    }

    /// The tree at `mp` as the container's root reads it (ids as the
    /// container sees them), copied to `dest` and snapshotted.
    pub fn snapshot(&self, mp: &Path, dest: &Path) -> Tree {
        tar_snapshot(
            &mut self.as_container_root(&format!("cd \"$1\" && {TAR_CREATE}"), &[mp]),
            dest,
        )
    }

    /// The command lines the mount program got, one per line
    /// (`uid=N: [arg] [arg]...`), when set up with `log_argv`.
    pub fn mount_program_calls(&self) -> Vec<String> {
        self.argv_log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Removes every container, image and mount of this store, and ends
    /// the processes it left (mount daemons, the rootless pause process).
    fn tear_down(&mut self) {
        let quiet = |c: &mut Command| {
            let _ = run(c);
        };
        quiet(&mut self.as_container_root::<&str>("podman unmount -a -f", &[]));
        quiet(&mut self.podman(&["rm", "-f", "-a"]));
        quiet(&mut self.podman(&["rmi", "-f", "-a"]));
        let dir = self.dir.to_string_lossy().into_owned();
        match self.mode {
            Mode::Root => unmount_all_under(&self.dir),
            Mode::Rootless(_) => {
                // What is still mounted lives in the pause process's
                // namespace: detach it there, then end that process.
                quiet(&mut self.as_container_root(
                    "awk -v d=\"$1\" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l \"$m\"; done",
                    &[&dir],
                ));
                if let Ok(pid) = std::fs::read_to_string(self.dir.join("tmp/pause.pid")) {
                    let pid = pid.trim();
                    if !pid.is_empty() {
                        let _ = Command::new("kill").args(["-KILL", pid]).status();
                    }
                }
            }
        }
        kill_processes_mentioning(&dir);
        // Daemons gone: a mount left behind in this namespace can go now.
        std::thread::sleep(Duration::from_millis(50));
        unmount_all_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        self.tear_down();
    }
}

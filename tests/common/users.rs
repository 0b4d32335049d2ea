//! A real unprivileged user, and the host plumbing the tests that act as
//! one need: running commands as it, tools that must exist, copying a
//! tree out of a mount only its owner (or a namespace) can read, and last
//! resort cleanup of mounts and daemons below a test's own directory.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::tree::{Tree, snapshot};

/// The dedicated unprivileged user the tests create (idempotently).
pub const CI_USER: &str = "plyfs-ci";

/// Subordinate ids to give the user when it has none (rootless podman maps
/// container ids 1..65536 onto them).
const SUBID_COUNT: u64 = 65536;

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Where `tool` is on PATH (or in the sbin directories root has).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Whether every tool is installed. A developer run without them says so
/// and skips; under CI=true a missing tool fails the test, loudly.
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing tools {missing:?} (apt-get install -y podman uidmap fuse3 fuse-overlayfs)"
    );
    if under_ci() {
        panic!("{why}; CI must install them (.ci/run)");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// An unprivileged user of this machine.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The dedicated user, created on first use: `useradd -m` when it does
/// not exist, a range in /etc/subuid and /etc/subgid when it has none,
/// and /dev/fuse opened to everyone (0666, as distributions ship it).
pub fn ci_user() -> &'static User {
    static USER: OnceLock<User> = OnceLock::new();
    USER.get_or_init(|| {
        if lookup_ids(CI_USER).is_none() {
            let out = Command::new(which("useradd").expect("useradd"))
                .args(["-m", "-s", "/bin/sh", "-c", "plyfs test user", CI_USER])
                .output()
                .expect("run useradd");
            // A parallel test binary may have created it meanwhile.
            assert!(
                out.status.success() || lookup_ids(CI_USER).is_some(),
                "useradd {CI_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (uid, gid) = lookup_ids(CI_USER).expect("user exists after useradd");
        ensure_subids(CI_USER);
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
            .expect("chmod 0666 /dev/fuse");
        User {
            name: CI_USER.into(),
            uid,
            gid,
        }
    })
}

fn lookup_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// Gives `name` a range of subordinate uids and gids unless it has one
/// (Debian's useradd already allocates them): the first range above every
/// range in either file.
fn ensure_subids(name: &str) {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let has = |text: &str| text.lines().any(|l| l.split(':').next() == Some(name));
    let (subuid, subgid) = (read("/etc/subuid"), read("/etc/subgid"));
    if has(&subuid) && has(&subgid) {
        return;
    }
    let end = subuid
        .lines()
        .chain(subgid.lines())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(f.get(1)?.parse::<u64>().ok()? + f.get(2)?.parse::<u64>().ok()?)
        })
        .max()
        .unwrap_or(0)
        .max(100_000);
    let range = format!("{end}-{}", end + SUBID_COUNT - 1);
    let mut usermod = Command::new(which("usermod").expect("usermod"));
    if !has(&subuid) {
        usermod.args(["--add-subuids", &range]);
    }
    if !has(&subgid) {
        usermod.args(["--add-subgids", &range]);
    }
    run_ok(usermod.arg(name), "usermod --add-subuids/--add-subgids");
}

impl User {
    /// `program` run as this user (real and effective ids, its groups),
    /// with a clean environment: PATH, HOME, USER, LOGNAME and `env`.
    pub fn command(&self, program: impl AsRef<OsStr>, home: &Path) -> Command {
        let mut c = Command::new(which("setpriv").expect("setpriv"));
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            )
            .env("HOME", home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name)
            .env("LANG", "C.UTF-8")
            // A cwd the user may enter (the test's is under /work).
            .current_dir("/");
        c
    }

    /// Hands `path` and everything below it to this user.
    pub fn chown_tree(&self, path: &Path) {
        run_ok(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", self.uid, self.gid))
                .arg(path),
            "chown -R",
        );
    }
}

/// Runs `cmd`; panics with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion with its input closed.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// One line of /proc/PID/mountinfo.
#[derive(Clone, Debug)]
pub struct MountEntry {
    pub mount_point: String,
    pub options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Parses mountinfo text (which has a variable number of optional fields
/// before the ` - ` separator).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let lf: Vec<&str> = left.split(' ').collect();
            let rf: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mount_point: unescape(lf.get(4)?),
                options: lf.get(5)?.to_string(),
                fstype: rf.first()?.to_string(),
                source: unescape(rf.get(1)?),
                super_options: rf.get(2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The mount at exactly `mp` in `mountinfo` text (the top one if stacked).
pub fn mount_at(mountinfo: &str, mp: &Path) -> Option<MountEntry> {
    let want = mp.to_string_lossy();
    parse_mountinfo(mountinfo)
        .into_iter()
        .rev()
        .find(|e| e.mount_point == want)
}

/// Mount points of this mount namespace at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = parse_mountinfo(&info)
        .into_iter()
        .map(|e| PathBuf::from(e.mount_point))
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// Unmounts everything at or below `dir` (retrying, then lazily).
pub fn unmount_all_under(dir: &Path) {
    for _ in 0..3 {
        let mps = mounts_under(dir);
        if mps.is_empty() {
            return;
        }
        for mp in mps {
            let ok = Command::new("umount")
                .arg(&mp)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&mp)
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Processes (other than this one) whose command line mentions `needle`:
/// the daemons a test started with its own unique paths as arguments.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        cmd.contains(needle)
            .then_some((pid, cmd.trim_end().to_string()))
    })
    .collect()
}

/// Waits until no process mentions `needle`; false on timeout.
pub fn wait_no_process_mentioning(needle: &str, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if processes_mentioning(needle).is_empty() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Last resort: ends (TERM, then KILL) each process a test started that
/// still mentions its own directory, one pid at a time.
pub fn kill_processes_mentioning(needle: &str) {
    for (pid, _) in processes_mentioning(needle) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
    if !wait_no_process_mentioning(needle, Duration::from_secs(3)) {
        for (pid, _) in processes_mentioning(needle) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The tree `producer` writes to stdout as a tar archive (`tar -cf - .`
/// run where the tree can be read: as its user, in its namespace),
/// unpacked by root into `dest` with numeric owners, modes, links and
/// xattrs, and snapshotted there. Ids are those the producer saw.
pub fn tar_snapshot(producer: &mut Command, dest: &Path) -> Tree {
    let out = run(producer);
    // GNU tar exits 1, not 2, when a file's times changed while it read
    // it (fuse-overlayfs's root directory does): that is not a failure
    // when it says nothing else.
    let changed_only = out.status.code() == Some(1) && out.stderr.is_empty();
    assert!(
        out.status.success() || changed_only,
        "tar of the tree failed ({}): {producer:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(dest).expect("snapshot dir");
    let mut tar = Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(dest)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tar -x");
    tar.stdin
        .take()
        .unwrap()
        .write_all(&out.stdout)
        .expect("feed tar");
    let done = tar.wait_with_output().expect("tar -x");
    assert!(
        done.status.success(),
        "tar -x: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    snapshot(dest)
}

/// `tar -cf - .` of a directory, with the options [`tar_snapshot`] reads.
pub const TAR_CREATE: &str =
    "tar --numeric-owner --xattrs --xattrs-include='*' --warning=no-file-changed -cf - .";

/// Mounts of a plain user; dropping unmounts them (`fusermount3 -u -z` as
/// the user, then `umount -l` below each) and ends their daemons: given a
/// moment to exit, then killed.
pub struct UserMounts<'a> {
    pub user: &'a User,
    pub home: PathBuf,
    pub mps: Vec<PathBuf>,
    /// A path that only these mounts' daemons have on their command lines.
    pub needle: String,
}

impl Drop for UserMounts<'_> {
    fn drop(&mut self) {
        for mp in &self.mps {
            if super::mounts::is_mounted(mp) {
                let _ = run(self
                    .user
                    .command("fusermount3", &self.home)
                    .arg("-u")
                    .arg("-z")
                    .arg(mp));
            }
            unmount_all_under(mp);
        }
        if !wait_no_process_mentioning(&self.needle, Duration::from_secs(10)) {
            kill_processes_mentioning(&self.needle);
        }
    }
}

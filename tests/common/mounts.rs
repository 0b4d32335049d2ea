//! Mount guards. Their Drop always unmounts, so a failing assertion never
//! leaves a mount behind for the next test or the next run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::cli::PLYFS;

/// Whether `mp` is a mount point right now.
pub fn is_mounted(mp: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// A plyfs mount; dropping it unmounts (lazily as a last resort) and waits
/// for the daemon.
pub struct PlyfsMount {
    pub mnt: PathBuf,
    child: Option<Child>,
}

impl PlyfsMount {
    /// Mounts in the foreground as a child process, so the test owns it.
    pub fn new(opts: &str, mnt: &Path) -> PlyfsMount {
        Self::try_new(opts, mnt).unwrap_or_else(|e| panic!("plyfs mount failed: {e}"))
    }

    pub fn try_new(opts: &str, mnt: &Path) -> Result<PlyfsMount, String> {
        Self::try_new_via(&[], opts, mnt)
    }

    /// Mounts with the daemon started through `wrap` (a command that runs
    /// the rest of its command line, such as `setpriv --reuid=...`): a
    /// daemon of another user, or with fewer capabilities.
    pub fn try_new_via(wrap: &[&str], opts: &str, mnt: &Path) -> Result<PlyfsMount, String> {
        std::fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        // PLYFS_TEST_DEBUG=1 logs every request of the test's mounts.
        let debug = std::env::var_os("PLYFS_TEST_DEBUG").is_some();
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(PLYFS);
                c
            }
            None => Command::new(PLYFS),
        };
        let mut child = cmd
            .args(if debug {
                &["-d", "-o"][..]
            } else {
                &["-f", "-o"][..]
            })
            .arg(opts)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let up = wait_until(Duration::from_secs(20), || {
            is_mounted(mnt) || child.try_wait().ok().flatten().is_some()
        });
        if !up || !is_mounted(mnt) {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(PlyfsMount {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits up to `limit` for the daemon to end on its own (after a
    /// signal, say); its exit status and stderr, `None` if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, String)> {
        let child = self.child.as_mut()?;
        if !wait_until(limit, || child.try_wait().ok().flatten().is_some()) {
            return None;
        }
        let out = self.child.take()?.wait_with_output().ok()?;
        Some((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Unmounts and returns the daemon's stderr.
    pub fn unmount(mut self) -> String {
        self.take_down()
    }

    fn take_down(&mut self) -> String {
        unmount(&self.mnt);
        let Some(mut child) = self.child.take() else {
            return String::new();
        };
        if !wait_until(Duration::from_secs(10), || {
            child.try_wait().ok().flatten().is_some()
        }) {
            let _ = child.kill();
        }
        child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PlyfsMount {
    fn drop(&mut self) {
        let err = self.take_down();
        if std::env::var_os("PLYFS_TEST_DEBUG").is_some() {
            eprintln!("--- plyfs log for {} ---\n{err}", self.mnt.display());
        }
    }
}

/// A kernel overlayfs mount; dropping it unmounts.
pub struct KernelMount {
    pub mnt: PathBuf,
}

impl KernelMount {
    pub fn new(opts: &str, mnt: &Path) -> KernelMount {
        mount("overlay", opts, mnt);
        KernelMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// A tmpfs of its own, for a layer that must not share a filesystem with
/// the others (then no reflink or in-kernel copy can stand in for copying
/// its data); dropping it unmounts.
pub struct TmpfsMount {
    pub mnt: PathBuf,
}

impl TmpfsMount {
    pub fn new(opts: &str, mnt: &Path) -> TmpfsMount {
        mount("tmpfs", opts, mnt);
        TmpfsMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

fn mount(fstype: &str, opts: &str, mnt: &Path) {
    std::fs::create_dir_all(mnt).expect("mnt dir");
    let out = Command::new("mount")
        .args(["-t", fstype, fstype, "-o", opts])
        .arg(mnt)
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "kernel {fstype} mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts `mnt`, also on failure. Tests run in parallel threads, and a
/// process another thread is starting holds copies of this thread's
/// descriptors until it execs, which can make a mount busy for a moment:
/// retry before detaching it lazily.
fn unmount(mnt: &Path) {
    for _ in 0..20 {
        if !is_mounted(mnt) {
            return;
        }
        let ok = Command::new("umount")
            .arg(mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

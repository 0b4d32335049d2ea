//! The mount's life cycle: checks that can fail with a clear message,
//! mounting, going to the background only once the mount is live, and
//! ending cleanly on unmount, SIGTERM, SIGINT or SIGHUP.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use plyfs_core::Overlay;
use plyfs_sys::{fs as sysfs, process};
use tracing::{debug, info, warn};

use crate::options::MountRequest;

/// A failure to report to the user as one line.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! fail {
    ($($t:tt)*) => { Failure(format!($($t)*)) };
}

/// Checks the mount point: it exists, is a directory, and nothing is
/// mounted on it yet. Returns its canonical path.
pub fn check_mountpoint(mp: &Path) -> Result<PathBuf, Failure> {
    let show = mp.display();
    let md = std::fs::metadata(mp).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => fail!("mount point {show} does not exist"),
        Some(libc::ENOTCONN) => {
            fail!("mount point {show} is a FUSE mount whose daemon is gone; run: umount -l {show}")
        }
        _ => fail!("mount point {show}: {}", plyfs_core::Errno::from(e)),
    })?;
    if !md.is_dir() {
        return Err(fail!("mount point {show} is not a directory"));
    }
    let canon = std::fs::canonicalize(mp).map_err(|e| fail!("mount point {show}: {e}"))?;
    if is_mounted(&canon) {
        return Err(fail!(
            "mount point {show} is already in use by another mount; unmount it first"
        ));
    }
    Ok(canon)
}

/// Whether `path` is the mount point of a mount (from /proc/self/mountinfo).
fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// FUSE must be usable before anything else is tried.
pub fn check_fuse_device() -> Result<(), Failure> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(fail!(
            "/dev/fuse does not exist: load the FUSE module (modprobe fuse) or give the container the device"
        )),
        Err(_) if process::geteuid() != 0 => {
            if which("fusermount3") {
                Ok(())
            } else {
                Err(fail!(
                    "cannot open /dev/fuse as a non-root user and fusermount3 is missing: install fuse3 (apt-get install fuse3) or run as root"
                ))
            }
        }
        Err(e) => Err(fail!(
            "cannot open /dev/fuse: {}",
            plyfs_core::Errno::from(e)
        )),
    }
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Mounts and serves; in the background unless `foreground`.
pub fn run(req: MountRequest, mountpoint: &Path, foreground: bool) -> Result<(), Failure> {
    for opt in &req.ignored {
        eprintln!("plyfs: warning: ignoring unsupported option {opt}");
    }
    let mountpoint = check_mountpoint(mountpoint)?;
    check_fuse_device()?;
    // Objects are created with exactly the modes asked for.
    sysfs::umask(0);
    // Two arenas: the cached tree's memory per inode is the figure that
    // matters, and the workers mostly wait on the kernel, not on malloc.
    process::limit_heap_arenas(2);
    let limit = sysfs::raise_nofile_limit();
    debug!("open file limit {limit}");
    let overlay = Arc::new(Overlay::new(req.config.clone()).map_err(|e| Failure(e.to_string()))?);
    overlay
        .check_mountpoint(&mountpoint)
        .map_err(|e| Failure(e.to_string()))?;
    process::block_termination_signals().map_err(|e| fail!("cannot set up signals: {e}"))?;
    if foreground {
        let mounted = mount(&overlay, &mountpoint, &req)?;
        return serve(mounted, &mountpoint);
    }
    let (mut rx, tx) = std::io::pipe().map_err(|e| fail!("cannot create a pipe: {e}"))?;
    match process::fork().map_err(|e| fail!("cannot fork: {e}"))? {
        process::Fork::Child => {
            drop(rx);
            let code = daemon_child(tx, &overlay, &mountpoint, &req);
            std::process::exit(code);
        }
        process::Fork::Parent(_) => {
            drop(tx);
            let mut status = String::new();
            let _ = rx.read_to_string(&mut status);
            match status.as_str() {
                "ok" => Ok(()),
                "" => Err(fail!("the daemon ended before the mount was live")),
                msg => Err(Failure(msg.to_string())),
            }
        }
    }
}

fn daemon_child(
    mut tx: std::io::PipeWriter,
    ov: &Arc<Overlay>,
    mp: &Path,
    req: &MountRequest,
) -> i32 {
    let _ = process::setsid();
    let mounted = match mount(ov, mp, req) {
        Ok(m) => m,
        Err(e) => {
            let _ = tx.write_all(e.0.as_bytes());
            return 1;
        }
    };
    if tx.write_all(b"ok").is_err() {
        // Nobody waits for us: the mount was not asked for any more.
        return 1;
    }
    drop(tx);
    let _ = process::detach_stdio();
    match serve(mounted, mp) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn mount(ov: &Arc<Overlay>, mp: &Path, req: &MountRequest) -> Result<plyfs_fuse::Mounted, Failure> {
    plyfs_fuse::mount(ov.clone(), mp, &req.spec, req.fuse.clone())
        .map_err(|e| fail!("cannot mount at {}: {e}", mp.display()))
}

/// Serves until unmounted; a termination signal unmounts.
fn serve(mut mounted: plyfs_fuse::Mounted, mp: &Path) -> Result<(), Failure> {
    let mut unmounter = mounted.unmounter();
    let mp_owned = mp.to_path_buf();
    std::thread::Builder::new()
        .name("plyfs-signals".into())
        .spawn(move || {
            let sig = process::wait_signal();
            info!("signal {sig}: unmounting {}", mp_owned.display());
            if let Err(e) = unmounter.unmount() {
                // Busy: detach now, the kernel ends the session once the
                // last user lets go.
                warn!("unmount failed ({e}); detaching");
                let _ = sysfs::umount(&mp_owned, true);
            }
        })
        .map_err(|e| fail!("cannot start the signal thread: {e}"))?;
    info!("serving {}", mp.display());
    mounted
        .run()
        .map_err(|e| fail!("FUSE session ended with an error: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn mount_point_checks() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert!(
            check_mountpoint(&t.path().join("nope"))
                .unwrap_err()
                .0
                .contains("does not exist")
        );
        assert!(
            check_mountpoint(&f)
                .unwrap_err()
                .0
                .contains("not a directory")
        );
        assert!(check_mountpoint(t.path()).is_ok());
        assert!(
            check_mountpoint(Path::new("/proc"))
                .unwrap_err()
                .0
                .contains("already in use")
        );
    }
}

//! Whether this run can mount at all.

use std::os::unix::fs::MetadataExt;

/// End-to-end tests need root and /dev/fuse. Without them a developer run
/// says so and skips; under CI=true it fails, loudly.
pub fn require_mount_privileges() -> bool {
    let root = euid() == 0;
    let fuse = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if root && fuse {
        return true;
    }
    let why = format!(
        "end-to-end tests need root and /dev/fuse (root: {root}, /dev/fuse usable: {fuse})"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must provide both");
    }
    eprintln!("SKIPPED: {why}");
    false
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

//! Bad input gets one clear line and a non-zero exit, never a panic, and
//! leaves nothing mounted.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// Runs plyfs with `-o opts mnt` and checks the failure's shape; returns
/// the message.
fn fails(opts: &str, mnt: &Path) -> String {
    let (code, _, err) = plyfs(&[OsStr::new("-o"), OsStr::new(opts), mnt.as_os_str()]);
    one_line_failure(code, &err, mnt)
}

fn one_line_failure(code: i32, err: &str, mnt: &Path) -> String {
    assert_ne!(code, 0, "must fail: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "no panic: {err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("plyfs: "), "{err}");
    assert!(
        !is_mounted(mnt),
        "nothing left mounted at {}",
        mnt.display()
    );
    err.trim_end().to_string()
}

#[test]
fn option_and_layer_errors() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    std::fs::write(s.path("afile"), "f").unwrap();
    let mnt = s.mkdir("mnt");
    let (u, w) = (s.mkdir("u"), s.mkdir("w"));
    let cases: Vec<(String, &str)> = vec![
        (
            "lowerdir=/nonexistent/layer".into(),
            "lowerdir /nonexistent/layer: No such file or directory",
        ),
        (
            format!("lowerdir={}", s.path("afile").display()),
            "is not a directory",
        ),
        ("lowerdir=".into(), "a layer path is empty"),
        (
            format!("lowerdir={}:::{}", l1.display(), l1.display()),
            "a layer path is empty",
        ),
        (
            format!("lowerdir=::{}", l1.display()),
            "a layer path is empty",
        ),
        (format!("upperdir={}", u.display()), "no lowerdir= given"),
        (
            format!("lowerdir={},context=\"unterminated", l1.display()),
            "unterminated quote",
        ),
        (
            format!("lowerdir={},upperdir={}", l1.display(), u.display()),
            "must be given together",
        ),
        (
            format!("lowerdir={},workdir={}", l1.display(), w.display()),
            "must be given together",
        ),
        (
            format!("lowerdir={},timeout=never", l1.display()),
            "invalid value",
        ),
        (
            format!(
                "lowerdir={},upperdir={},workdir={}",
                l1.display(),
                l1.join("up").display(),
                w.display()
            ),
            "upperdir",
        ),
    ];
    std::fs::create_dir(l1.join("up")).unwrap();
    for (opts, want) in cases {
        let msg = fails(&opts, &mnt);
        assert!(
            msg.contains(want),
            "-o {opts}: expected {want:?} in {msg:?}"
        );
    }
    // Upper inside a lower names both.
    let msg = fails(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            l1.display(),
            l1.join("up").display(),
            w.display()
        ),
        &mnt,
    );
    assert!(msg.contains("inside") && msg.contains("lowerdir"), "{msg}");
}

#[test]
fn mount_point_errors() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    let opts = format!("lowerdir={}", l1.display());
    let msg = fails(&opts, &s.path("missing"));
    assert!(msg.contains("does not exist"), "{msg}");
    std::fs::write(s.path("file"), "").unwrap();
    let msg = fails(&opts, &s.path("file"));
    assert!(msg.contains("not a directory"), "{msg}");
    // A mount point already in use.
    let busy = s.mkdir("busy");
    let _k = KernelMount::new(
        &format!("lowerdir={}:{}", l1.display(), s.mkdir("l0").display()),
        &busy,
    );
    let (code, _, err) = plyfs(&[OsStr::new("-o"), OsStr::new(&opts), busy.as_os_str()]);
    assert_ne!(code, 0);
    assert!(err.contains("already in use"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
    // No mount point, no options.
    let (code, _, err) = plyfs(&[OsStr::new("-o"), OsStr::new(&opts)]);
    assert_ne!(code, 0);
    assert!(err.contains("no mount point"), "{err}");
    let (code, _, err) = plyfs(&[OsStr::new("--bogus")]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A missing argument is named in that one line.
    let (code, _, err) = plyfs(&[OsStr::new("image"), OsStr::new("lowerdir")]);
    assert_eq!(code, 2);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("<NAME>"), "{err}");
}

/// A mount point inside a layer (lookups there would enter the union
/// itself), a layer or the workdir inside the mount point, and a second
/// union on an upper or workdir already in use: refused with one line.
/// Mounting over a lower's own root stays allowed (the kernel's trick).
#[test]
fn overlapping_mount_points_and_shared_upper_or_workdir() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    let inner = s.mkdir("l1/inner");
    let msg = fails(&format!("lowerdir={}", l1.display()), &inner);
    assert!(msg.contains("overlap") && msg.contains("lowerdir"), "{msg}");
    let outer = s.mkdir("outer");
    let l2 = s.mkdir("outer/l2");
    let msg = fails(&format!("lowerdir={}", l2.display()), &outer);
    assert!(msg.contains("overlap"), "{msg}");
    let (u, w) = (s.mkdir("outer/u"), s.mkdir("outer/w"));
    let msg = fails(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            l1.display(),
            u.display(),
            w.display()
        ),
        &outer,
    );
    assert!(msg.contains("overlap"), "{msg}");

    // Over a lower's own root: allowed.
    let over = PlyfsMount::new(&format!("lowerdir={}", l1.display()), &l1);
    drop(over);

    let (u, w, w2) = (s.mkdir("u"), s.mkdir("w"), s.mkdir("w2"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        l1.display(),
        u.display(),
        w.display()
    );
    let _first = PlyfsMount::new(&opts, &s.path("m1"));
    let msg = fails(&opts, &s.mkdir("m2"));
    assert!(msg.contains("in use by another mount"), "{msg}");
    let other_work = format!(
        "lowerdir={},upperdir={},workdir={}",
        l1.display(),
        u.display(),
        w2.display()
    );
    let msg = fails(&other_work, &s.mkdir("m3"));
    assert!(msg.contains("upperdir") && msg.contains("in use"), "{msg}");
}

#[test]
fn workdir_on_another_filesystem() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let (l1, u, mnt) = (s.mkdir("l1"), s.mkdir("u"), s.mkdir("mnt"));
    let w = s.mkdir("tmpfs");
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&w)
            .status()
            .unwrap()
            .success()
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _g = Unmount(&w);
    let msg = fails(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            l1.display(),
            u.display(),
            w.display()
        ),
        &mnt,
    );
    assert!(msg.contains("another filesystem"), "{msg}");
}

#[test]
fn unreadable_lower_and_missing_fuse_permission() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = s.mkdir("locked");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mnt = s.mkdir("mnt");
    let as_nobody = |path_env: &str| {
        let out = Command::new(PLYFS)
            .args(["-o", &format!("lowerdir={}", locked.display())])
            .arg(&mnt)
            .env("PATH", path_env)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // With fusermount3 around, the layer check is what fails.
    if Path::new("/usr/bin/fusermount3").exists() {
        let (code, err) = as_nobody("/usr/bin:/bin");
        let msg = one_line_failure(code, &err, &mnt);
        assert!(msg.contains("is not readable"), "{msg}");
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI must install fuse3 (fusermount3)");
    }
    // Without it, a non-root user is told what to install, whether or not
    // /dev/fuse is open to everyone (mount(2) itself is not).
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, err) = as_nobody("/nonexistent");
    let msg = one_line_failure(code, &err, &mnt);
    assert!(msg.contains("fuse3"), "{msg}");
}

#[test]
fn missing_fuse_device() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let (l1, mnt) = (s.mkdir("l1"), s.mkdir("mnt"));
    // A private mount namespace whose /dev has no fuse node.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} -o lowerdir={} {}",
        PLYFS,
        l1.display(),
        mnt.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let msg = one_line_failure(out.status.code().unwrap_or(-1), &err, &mnt);
    assert!(msg.contains("/dev/fuse does not exist"), "{msg}");
}

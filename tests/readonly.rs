//! The read-only union on real mounts: the merged view compared with the
//! kernel's overlayfs over the very same layers, the OCI format against its
//! expected view, EROFS, and the daemon's life cycle.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;

/// A stack in the kernel's formats exercising every rule of lookup.
fn kernel_format_stack(s: &Scratch) -> [std::path::PathBuf; 3] {
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file("a", "l1 a")
        .file("b", "l1 b")
        .file_mode("c", "l1 c", 0o600)
        .file_mode("exec", "#!/bin/sh\n", 0o755);
    l1.file("d/x", "x")
        .file("d/y", "y")
        .file("d/sub/deep/file", "deep");
    l1.file("h1", "linked")
        .hardlink("h1", "h2")
        .dir("hl")
        .hardlink("h1", "hl/h3");
    l1.symlink("s_rel", "a")
        .symlink("s_abs", "/etc/passwd")
        .symlink("s_dangling", "nowhere/at/all");
    l1.fifo("fifo");
    l1.file("gonedir/inner", "i")
        .file("op/old", "old")
        .file("fd", "file below dir");
    l1.file("df/inner", "dir below file")
        .file("orig/o", "moved content");
    l1.file("xw/gone", "g")
        .file("xw/keep", "k")
        .file("wh_bottom_target", "t");
    l1.whiteout("bottom_whiteout");
    l1.xattr("a", "user.color", b"blue");
    l1.file("empty", "").xattr("empty", "user.plain", b"");

    let l2 = LayerBuilder::new(s.path("l2"));
    l2.file("a", "l2 a")
        .file("d/z", "z")
        .whiteout("d/x")
        .whiteout("b")
        .whiteout("gonedir");
    l2.opaque("op").file("op/new", "new");
    l2.file("fd/inner", "dir above file")
        .file("df", "file above dir");
    l2.dir("moved")
        .file("moved/m", "m")
        .xattr("moved", "trusted.overlay.redirect", b"orig")
        .whiteout("orig");
    l2.dir("xw").xattr("xw", "trusted.overlay.opaque", b"x");
    l2.file("xw/gone", "")
        .xattr("xw/gone", "trusted.overlay.whiteout", b"");
    l2.dir("emptydir").xattr("d/z", "user.note", b"z note");

    let l3 = LayerBuilder::new(s.path("l3"));
    l3.file("newtop", "top")
        .file("d/sub/deep/file2", "deep2")
        .file_mode("c", "l3 c", 0o640);
    l3.whiteout("exec")
        .symlink("d2", "d")
        .dir("opq_top")
        .file("opq_top/f", "f");
    [s.path("l3"), s.path("l2"), s.path("l1")]
}

fn check_d_ino(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            assert_eq!(
                e.ino(),
                md.ino(),
                "d_ino != st_ino for {}",
                e.path().display()
            );
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
}

#[test]
fn merged_view_matches_kernel_overlayfs() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let [l3, l2, l1] = kernel_format_stack(&s);
    let lowers = lowerdir(&[&l3, &l2, &l1]);
    let kernel = KernelMount::new(&lowers, &s.path("kmnt"));
    let ply = PlyfsMount::new(&lowers, &s.path("pmnt"));
    let (k, p) = (snapshot(&kernel.mnt), snapshot(&ply.mnt));
    assert!(
        k.objs.len() > 30,
        "the stack is not what the test thinks: {:?}",
        k.objs.keys()
    );
    assert_same_trees(
        &k,
        &p,
        Compare {
            ino: true,
            mtime: true,
            dir_nlink: true,
        },
    );
    check_d_ino(&ply.mnt);
    // Spot checks that the comparison is about something.
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("moved/o")).unwrap(),
        "moved content"
    );
    assert!(!ply.mnt.join("xw/gone").exists());
    assert!(ply.mnt.join("empty").exists());
    assert_eq!(xattr::get(ply.mnt.join("a"), "user.color").unwrap(), None);
    assert_eq!(
        xattr::get(ply.mnt.join("d/z"), "user.note").unwrap(),
        Some(b"z note".to_vec())
    );
    // Twice more: from the kernel's caches, and after they are dropped.
    assert_same_trees(
        &snapshot(&kernel.mnt),
        &snapshot(&ply.mnt),
        Compare {
            ino: true,
            mtime: true,
            dir_nlink: true,
        },
    );
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_same_trees(
        &snapshot(&kernel.mnt),
        &snapshot(&ply.mnt),
        Compare {
            ino: true,
            mtime: true,
            dir_nlink: true,
        },
    );
}

#[test]
fn user_xattr_format_matches_kernel_userxattr() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file("op/old", "o")
        .file("keep", "k")
        .file("gone", "g")
        .file("orig/x", "x")
        .file("d/a", "a");
    let l2 = LayerBuilder::new(s.path("l2"));
    l2.dir("op")
        .xattr("op", "user.overlay.opaque", b"y")
        .file("op/new", "n")
        .whiteout("gone");
    // No redirect here: the kernel refuses to follow them in userxattr
    // mode (EPERM), while plyfs follows user.overlay.redirect, which its own
    // rootless uppers write (a deliberate difference).
    l2.whiteout("orig");
    l2.dir("d").xattr("d", "user.overlay.opaque", b"x");
    l2.file("d/a", "")
        .xattr("d/a", "user.overlay.whiteout", b"");
    let lowers = lowerdir(&[&s.path("l2"), &s.path("l1")]);
    let kernel = KernelMount::new(&format!("{lowers},userxattr"), &s.path("kmnt"));
    let ply = PlyfsMount::new(&lowers, &s.path("pmnt"));
    let (k, p) = (snapshot(&kernel.mnt), snapshot(&ply.mnt));
    assert_same_trees(
        &k,
        &p,
        Compare {
            ino: true,
            mtime: true,
            dir_nlink: true,
        },
    );
    assert!(p.objs.contains_key(Path::new("op/new")) && !p.objs.contains_key(Path::new("d/a")));
    assert!(!p.objs.contains_key(Path::new("orig")) && !p.objs.contains_key(Path::new("gone")));
}

#[test]
fn oci_format_layers_give_the_expected_view() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file("etc/passwd", "root")
        .file("etc/shadow", "x")
        .file("var/cache/a", "a")
        .file("var/cache/b", "b");
    l1.file("usr/bin/tool", "old tool").file("opt/app/v1", "1");
    let l2 = LayerBuilder::new(s.path("l2"));
    l2.oci_whiteout("etc/shadow")
        .oci_opaque("var/cache")
        .file("var/cache/c", "c");
    l2.file("usr/bin/tool", "new tool").oci_whiteout("opt");
    let ply = PlyfsMount::new(&lowerdir(&[&s.path("l2"), &s.path("l1")]), &s.path("mnt"));
    let t = snapshot(&ply.mnt);
    let got: Vec<String> = t.objs.keys().map(|p| p.display().to_string()).collect();
    let want = [
        "",
        "etc",
        "etc/passwd",
        "usr",
        "usr/bin",
        "usr/bin/tool",
        "var",
        "var/cache",
        "var/cache/c",
    ];
    assert_eq!(got, want);
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("usr/bin/tool")).unwrap(),
        "new tool"
    );
    assert!(std::fs::metadata(ply.mnt.join(".wh.etc")).is_err());
}

#[test]
fn every_write_fails_with_erofs_without_an_upper() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("l1"))
        .file("f", "data")
        .file("d/x", "x");
    let ply = PlyfsMount::new(&lowerdir(&[&s.path("l1")]), &s.path("mnt"));
    let m = &ply.mnt;
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(m.join("new"), "x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("f"))
            .map(drop),
        "open for writing",
    );
    erofs(std::fs::create_dir(m.join("nd")), "mkdir");
    erofs(std::fs::remove_file(m.join("f")), "unlink");
    erofs(std::fs::remove_dir_all(m.join("d")), "rmdir");
    erofs(std::fs::rename(m.join("f"), m.join("g")), "rename");
    erofs(std::fs::hard_link(m.join("f"), m.join("g")), "link");
    erofs(std::os::unix::fs::symlink("f", m.join("l")), "symlink");
    erofs(
        std::fs::set_permissions(
            m.join("f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        "chmod",
    );
    erofs(xattr::set(m.join("f"), "user.x", b"1"), "setxattr");
    erofs(
        std::os::unix::fs::chown(m.join("f"), Some(1), None),
        "chown",
    );
    assert_eq!(std::fs::read_to_string(m.join("f")).unwrap(), "data");
    assert_eq!(std::fs::read_to_string(s.path("l1/f")).unwrap(), "data");
}

#[test]
fn sparse_files_report_holes() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = s.mkdir("l1");
    let f = std::fs::File::create(l1.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"data", 32 << 20).unwrap();
    drop(f);
    let ply = PlyfsMount::new(&lowerdir(&[&l1]), &s.path("mnt"));
    let file = std::fs::File::open(ply.mnt.join("sparse")).unwrap();
    let fd = std::os::fd::AsFd::as_fd(&file);
    let data = plyfs_sys::fs::lseek(fd, 0, plyfs_sys::fs::SEEK_DATA).unwrap();
    let hole = plyfs_sys::fs::lseek(fd, data, plyfs_sys::fs::SEEK_HOLE).unwrap();
    assert!(
        (28 << 20..=32 << 20).contains(&data),
        "SEEK_DATA gave {data}"
    );
    assert!(hole > data && hole <= (36 << 20), "SEEK_HOLE gave {hole}");
}

#[test]
fn layer_roots_may_be_symlinks() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("store/abc123/diff")).file("f", "via link");
    s.mkdir("l");
    std::os::unix::fs::symlink(s.path("store/abc123/diff"), s.path("l/ABC")).unwrap();
    let ply = PlyfsMount::new(&lowerdir(&[&s.path("l/ABC")]), &s.path("mnt"));
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("f")).unwrap(),
        "via link"
    );
}

#[test]
fn background_mount_is_live_on_return_and_umount_ends_it() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("l1")).file("f", "bg");
    let mnt = s.mkdir("mnt");
    // A quoted label with a comma is one option (accepted: labels go to
    // the kernel where SELinux is on); an unknown one is warned about.
    let opts = format!(
        "{},context=\"system_u:object_r:container_file_t:s0:c1,c2\",frobnicate=1",
        lowerdir(&[&s.path("l1")])
    );
    let (code, _, err) = plyfs(&[OsStr::new("-o"), OsStr::new(&opts), mnt.as_os_str()]);
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                let _ = Command::new("umount").arg("-l").arg(self.0).status();
            }
        }
    }
    let _guard = Umount(&mnt);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("frobnicate=1") && !err.contains("context="),
        "the unknown option is named: {err}"
    );
    // Live the moment the command returned: no polling.
    assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "bg");
    let pid = daemon_pid(&mnt).expect("daemon running");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert!(wait_gone(pid), "daemon exits after umount");
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    if !require_mount_privileges() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let s = Scratch::new();
        LayerBuilder::new(s.path("l1")).file("f", "x");
        let ply = PlyfsMount::new(&lowerdir(&[&s.path("l1")]), &s.path("mnt"));
        plyfs_sys::process::kill(ply.pid() as i32, sig).unwrap();
        assert!(wait_gone(ply.pid()), "daemon ends on signal {sig}");
        assert!(!is_mounted(&ply.mnt), "signal {sig} unmounted");
        let err = ply.unmount();
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn fusermount3_unmounts_too() {
    if !require_mount_privileges() {
        return;
    }
    if !Path::new("/usr/bin/fusermount3").exists() {
        assert!(
            std::env::var("CI").is_err(),
            "CI must install fuse3 (fusermount3)"
        );
        eprintln!("SKIPPED: fusermount3 is not installed");
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("l1")).file("f", "x");
    let ply = PlyfsMount::new(&lowerdir(&[&s.path("l1")]), &s.path("mnt"));
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&ply.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(wait_gone(ply.pid()), "daemon ends after fusermount3 -u");
    let err = ply.unmount();
    assert!(!err.contains("panicked"), "{err}");
}

fn daemon_pid(mnt: &Path) -> Option<u32> {
    let want = mnt.as_os_str().to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()? {
        let e = e.ok()?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("plyfs")) && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

fn wait_gone(pid: u32) -> bool {
    for _ in 0..500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its parent.
        if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

//! The write path, differentially: each scenario runs the same syscalls on
//! the kernel's overlayfs (redirect_dir=on,index=on) and on plyfs over
//! copies of the same layers, compares every result and the final trees,
//! then has the kernel mount plyfs's upper and show the same tree.

mod common;

use std::path::Path;

use Op::*;
use common::ops::{Op, Twin};
use common::*;

fn s(x: &str) -> String {
    x.to_string()
}

fn b(x: &str) -> Vec<u8> {
    x.as_bytes().to_vec()
}

/// A two-layer stack with a bit of everything.
fn base(dir: &Path, i: usize) {
    let l = LayerBuilder::new(dir);
    match i {
        0 => {
            l.file("top", "top")
                .file("d/x", "x top")
                .file("d/t", "t")
                .file("m/sub/deep", "deep top");
            l.whiteout("gone").dir("e");
        }
        _ => {
            l.file("a", "lower a")
                .file_mode("ro", "read only", 0o444)
                .file("d/x", "x low")
                .file("d/y", "y low");
            l.file("m/sub/low", "low")
                .file("m/other", "o")
                .file("gone", "g")
                .file("e/inner", "i");
            l.symlink("sl", "a")
                .file("big", &"0123456789".repeat(1000))
                .dir("emptydir");
            l.xattr("a", "user.tag", b"lower tag");
            l.file("hard1", "shared")
                .hardlink("hard1", "hard2")
                .hardlink("hard1", "d/hard3");
            l.dir("locked").file("locked/f", "in locked dir");
            // A file capability (v2: cap_net_raw in the permitted set).
            let caps = [
                0x01, 0, 0, 0x02, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            l.file_mode("capped", "#!cap", 0o755)
                .xattr("capped", "security.capability", &caps);
        }
    }
}

fn twin() -> Option<Twin> {
    require_mount_privileges().then(|| Twin::new(2, base))
}

#[test]
fn copy_up_on_every_kind_of_change() {
    let Some(mut t) = twin() else { return };
    let files = ["a", "d/y", "m/sub/low", "big", "ro", "m/other"];
    for (i, f) in files.iter().enumerate() {
        t.run(RememberIno(s(f), i));
    }
    t.run_all(&[
        Chmod(s("a"), 0o600),
        Chown(s("d/y"), 1234, 5678),
        Utimens(s("m/sub/low"), 1_000_000, 2_000_000),
        SetXattr(s("big"), s("user.new"), b("v"), 0),
        RemoveXattr(s("a"), s("user.tag")),
        Truncate(s("ro"), 3),
        Append(s("m/other"), b("+more")),
        Stat(s("a")),
        Stat(s("d/y")),
        Stat(s("m/sub/low")),
        Read(s("ro")),
        Read(s("m/other")),
        ListXattr(s("big")),
        ListXattr(s("a")),
        GetXattr(s("a"), s("user.tag")),
        // Copy-up of a symlink, and of a directory by a change to it.
        Chown(s("sl"), 7, 7),
        Readlink(s("sl")),
        Chmod(s("m/sub"), 0o700),
        Stat(s("m/sub")),
        ReadDir(s("m/sub")),
        // File capabilities survive a copy-up by chmod, and go on write.
        Chmod(s("capped"), 0o750),
        ListXattr(s("capped")),
        GetXattr(s("capped"), s("security.capability")),
        Append(s("capped"), b("\n")),
        ListXattr(s("capped")),
    ]);
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            t.outcome(SameIno(s(f), i)),
            Ok(s("true")),
            "{f} keeps its inode number"
        );
    }
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
    t.assert_same_tree();
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            t.outcome(SameIno(s(f), i)),
            Ok(s("true")),
            "{f} keeps its inode number after a remount"
        );
    }
}

#[test]
fn whiteouts_and_opaque_directories() {
    let Some(mut t) = twin() else { return };
    t.run_all(&[
        Unlink(s("a")),
        Stat(s("a")),
        ReadDir(s("")),
        Unlink(s("d/x")),
        ReadDir(s("d")),
        Rmdir(s("m")),
        Unlink(s("m/other")),
        Rmdir(s("m/sub")),
        Unlink(s("m/sub/deep")),
        Unlink(s("m/sub/low")),
        Rmdir(s("m/sub")),
        Rmdir(s("m")),
        ReadDir(s("")),
        Mkdir(s("m"), 0o755),
        ReadDir(s("m")),
        Stat(s("m")),
        Create(s("a"), 0o640),
        Read(s("a")),
        Stat(s("a")),
        Rmdir(s("emptydir")),
        Mkdir(s("emptydir"), 0o700),
        Create(s("gone"), 0o600),
        ReadDir(s("")),
        Unlink(s("gone")),
        Unlink(s("gone")),
        Rmdir(s("e")),
        Unlink(s("e/inner")),
        Rmdir(s("e")),
        Unlink(s("nonexistent")),
        Rmdir(s("a")),
        Unlink(s("d")),
    ]);
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
}

#[test]
fn renames_of_files() {
    let Some(mut t) = twin() else { return };
    t.run(RememberIno(s("a"), 0));
    t.run_all(&[
        Rename(s("a"), s("a2"), 0),
        SameIno(s("a2"), 0),
        Stat(s("a")),
        Rename(s("a2"), s("d/a3"), 0),
        SameIno(s("d/a3"), 0),
        Rename(s("d/a3"), s("top"), 0),
        Read(s("top")),
        SameIno(s("top"), 0),
        Rename(s("d/y"), s("d/x"), 0),
        Read(s("d/x")),
        ReadDir(s("d")),
        Create(s("new"), 0o644),
        Rename(s("new"), s("gone"), 0),
        Rename(s("gone"), s("new"), 0),
        Rename(s("m/other"), s("m/sub/deep"), 0),
        Rename(s("ro"), s("big"), libc::RENAME_NOREPLACE),
        Rename(s("ro"), s("big"), libc::RENAME_EXCHANGE),
        Read(s("ro")),
        Read(s("big")),
        Rename(s("ro"), s("nothere"), libc::RENAME_EXCHANGE),
        Rename(s("ro"), s("d"), 0),
        Rename(s("d"), s("ro"), 0),
        Rename(s("sl"), s("sl2"), 0),
        Readlink(s("sl2")),
        Rename(s("hard1"), s("hard2"), 0),
        ReadDir(s("")),
        Rename(s("ro"), s("ro"), 0),
    ]);
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
    t.assert_same_tree();
}

#[test]
fn renames_of_directories_never_exdev() {
    let Some(mut t) = twin() else { return };
    t.run(RememberIno(s("d"), 0));
    t.run(RememberIno(s("m/sub"), 1));
    t.run_all(&[
        // A merged directory, within its parent and across.
        Rename(s("d"), s("d2"), 0),
        ReadDir(s("d2")),
        Read(s("d2/y")),
        SameIno(s("d2"), 0),
        Stat(s("d")),
        Rename(s("m/sub"), s("sub2"), 0),
        ReadDir(s("sub2")),
        SameIno(s("sub2"), 1),
        // The parent of a redirected directory moves too.
        Mkdir(s("p"), 0o755),
        Rename(s("sub2"), s("p/sub3"), 0),
        Rename(s("p"), s("q"), 0),
        ReadDir(s("q/sub3")),
        Read(s("q/sub3/low")),
        // Back where it came from.
        Rename(s("q/sub3"), s("m/sub"), 0),
        ReadDir(s("m/sub")),
        // A pure lower directory, a pure upper one, and onto an empty one.
        Rename(s("emptydir"), s("d2/e2"), 0),
        Mkdir(s("fresh"), 0o755),
        Create(s("fresh/f"), 0o644),
        Rename(s("fresh"), s("m/fresh"), 0),
        ReadDir(s("m/fresh")),
        Mkdir(s("target"), 0o755),
        Rename(s("d2"), s("target"), 0),
        ReadDir(s("target")),
        Rename(s("target"), s("d2"), libc::RENAME_NOREPLACE),
        Rename(s("e"), s("top"), 0),
        Rename(s("top"), s("e"), 0),
        Rename(s("e"), s("m"), 0),
        Rename(s("e"), s("m"), libc::RENAME_EXCHANGE),
        ReadDir(s("e")),
        ReadDir(s("m")),
        ReadDir(s("")),
        // Into a directory that a lower whited out.
        Mkdir(s("gone"), 0o755),
        Rename(s("m"), s("gone/m"), 0),
        ReadDir(s("gone/m")),
    ]);
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
    t.assert_same_tree();
    assert_eq!(t.outcome(SameIno(s("d2"), 0)), Ok(s("true")));
}

#[test]
fn hard_links_share_data_and_count() {
    let Some(mut t) = twin() else { return };
    t.run(RememberIno(s("hard1"), 0));
    t.run_all(&[
        Stat(s("hard1")),
        Append(s("hard1"), b(" and changed")),
        Read(s("hard2")),
        Read(s("d/hard3")),
        Stat(s("hard2")),
        SameIno(s("hard2"), 0),
        Link(s("hard2"), s("hard4")),
        Stat(s("hard1")),
        Unlink(s("hard1")),
        Stat(s("hard2")),
        Unlink(s("d/hard3")),
        Stat(s("hard4")),
        Link(s("a"), s("a_link")),
        Stat(s("a")),
        Append(s("a_link"), b("!")),
        Read(s("a")),
        Link(s("d"), s("dlink")),
        Link(s("a"), s("top")),
    ]);
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
    t.assert_same_tree();
    t.run_all(&[
        Stat(s("hard2")),
        Read(s("hard4")),
        SameIno(s("hard2"), 0),
        Unlink(s("hard2")),
        Stat(s("hard4")),
    ]);
    t.assert_same_tree();
}

#[test]
fn creating_objects() {
    let Some(mut t) = twin() else { return };
    let long = "n".repeat(256);
    t.run_all(&[
        Create(s("f"), 0o640),
        Create(s("f"), 0o640),
        CreateTrunc(s("a")),
        Read(s("a")),
        Write(s("f"), 3, b("abc")),
        Read(s("f")),
        Mkdir(s("d/new"), 0o751),
        Mkdir(s("d/new"), 0o751),
        Symlink(s("../a"), s("d/new/link")),
        Readlink(s("d/new/link")),
        Mkfifo(s("fifo")),
        Stat(s("fifo")),
        Create(long.clone(), 0o644),
        Mkdir(long.clone(), 0o755),
        Stat(long.clone()),
        Unlink(long.clone()),
        Create(format!("d/{long}"), 0o644),
        Create(s("nodir/f"), 0o644),
        Create(s("a/f"), 0o644),
        SetXattr(s("f"), s("user.ok"), b("1"), libc::XATTR_REPLACE),
        SetXattr(s("f"), s("user.ok"), b("1"), libc::XATTR_CREATE),
        SetXattr(s("f"), s("user.ok"), b("2"), libc::XATTR_CREATE),
        GetXattr(s("f"), s("user.ok")),
        RemoveXattr(s("f"), s("user.missing")),
        ReadDir(s("")),
    ]);
    t.assert_same_tree();
    // Overlay attributes set through the union are stored escaped, as the
    // kernel does (for nested overlays), and read back as set.
    t.run_all(&[
        SetXattr(s("f"), s("trusted.overlay.opaque"), b("y"), 0),
        GetXattr(s("f"), s("trusted.overlay.opaque")),
        ListXattr(s("f")),
        RemoveXattr(s("f"), s("trusted.overlay.opaque")),
        GetXattr(s("f"), s("trusted.overlay.opaque")),
    ]);
    // user.overlay.* too, which the kernel (not in userxattr mode) stores
    // unescaped: plyfs reads user.overlay.* markers in every mount.
    assert_eq!(
        t.plyfs_only(&SetXattr(s("f"), s("user.overlay.redirect"), b("/x"), 0)),
        Ok("ok".into())
    );
    assert_eq!(
        t.plyfs_only(&GetXattr(s("f"), s("user.overlay.redirect"))),
        Ok("/x".into())
    );
    assert_eq!(
        t.plyfs_only(&RemoveXattr(s("f"), s("user.overlay.redirect"))),
        Ok("ok".into())
    );
    // Names beginning with .wh. would read back as markers: refused (the
    // kernel lets them be created).
    assert_eq!(t.plyfs_only(&Create(s(".wh.f"), 0o644)), Err(libc::EINVAL));
    assert_eq!(
        t.plyfs_only(&Mkdir(s(".wh..wh..opq"), 0o755)),
        Err(libc::EINVAL)
    );
    assert_eq!(
        t.plyfs_only(&Rename(s("f"), s(".wh.x"), 0)),
        Err(libc::EINVAL)
    );
    t.assert_kernel_reads_plyfs_upper();
}

#[test]
fn modes_never_block_internal_operations() {
    let Some(mut t) = Some(()).filter(|_| require_mount_privileges()).map(|_| {
        Twin::new(1, |dir, _| {
            let l = LayerBuilder::new(dir);
            l.file_mode("locked/secret", "s", 0o000)
                .file("locked/other", "o")
                .file_mode("noperm", "n", 0o000);
            std::fs::set_permissions(
                dir.join("locked"),
                std::os::unix::fs::PermissionsExt::from_mode(0o555),
            )
            .unwrap();
        })
    }) else {
        return;
    };
    t.run_all(&[
        Unlink(s("locked/secret")),
        Rename(s("locked/other"), s("locked/moved"), 0),
        Create(s("locked/new"), 0o644),
        Append(s("noperm"), b("+")),
        Read(s("noperm")),
        Stat(s("noperm")),
        Rename(s("locked"), s("locked2"), 0),
        ReadDir(s("locked2")),
        Stat(s("locked2")),
    ]);
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
}

#[test]
fn renaming_a_large_lower_directory_copies_no_data() {
    let Some(mut t) = require_mount_privileges().then(|| {
        Twin::new(1, |dir, _| {
            let l = LayerBuilder::new(dir);
            for i in 0..10_000 {
                l.file(&format!("big/f{i:05}"), "some data");
            }
        })
    }) else {
        return;
    };
    let start = std::time::Instant::now();
    t.run_all(&[
        Rename(s("big"), s("moved"), 0),
        Stat(s("moved/f09999")),
        Read(s("moved/f00000")),
    ]);
    let took = start.elapsed();
    let upper = t.scratch.path("p/upper/moved");
    let copied = std::fs::read_dir(&upper).unwrap().count();
    assert_eq!(copied, 0, "the rename copied {copied} entries up");
    assert!(took.as_secs() < 10, "rename took {took:?}");
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
}

#[test]
fn special_files_and_their_other_names() {
    let Some(mut t) = twin() else { return };
    t.run_all(&[
        Mkfifo(s("p")),
        Link(s("p"), s("p2")),
        // The first name goes; the object is changed through the second.
        Unlink(s("p")),
        Utimens(s("p2"), 5, 6),
        Chmod(s("p2"), 0o600),
        Chown(s("p2"), 42, 43),
        Stat(s("p2")),
        SetXattr(s("p2"), s("user.x"), b("1"), 0),
        Mkfifo(s("d/q")),
        Rename(s("d/q"), s("q"), 0),
        Stat(s("q")),
    ]);
    // Devices and sockets, made with mknod.
    for m in [t.kmnt(), t.pmnt()] {
        common::mknod(&m.join("chr"), libc::S_IFCHR | 0o600, libc::makedev(1, 3));
        common::mknod(&m.join("blk"), libc::S_IFBLK | 0o600, libc::makedev(7, 0));
        common::mknod(&m.join("sock"), libc::S_IFSOCK | 0o600, 0);
    }
    // A 0/0 character device would be a whiteout: refused.
    for m in [t.kmnt(), t.pmnt()] {
        let parent = plyfs_sys::fs::open_path(&m, libc::O_PATH).unwrap();
        let r = plyfs_sys::fs::mknodat(
            std::os::fd::AsFd::as_fd(&parent),
            std::ffi::OsStr::new("wh"),
            libc::S_IFCHR,
            0,
        );
        assert_eq!(r.map_err(|e| e.raw()), Err(libc::EPERM), "{}", m.display());
    }
    t.run_all(&[
        Stat(s("chr")),
        Stat(s("blk")),
        Stat(s("sock")),
        Chmod(s("chr"), 0o640),
    ]);
    t.assert_same_tree();
    t.assert_kernel_reads_plyfs_upper();
}

/// With the writeback cache the kernel sends the times of an inode a
/// rename just replaced; a lower file replaced so (every package upgrade)
/// is not copied up for them: its copy would be thrown away at once.
#[test]
fn a_lower_file_replaced_by_a_rename_is_not_copied_up() {
    if !require_mount_privileges() {
        return;
    }
    for extra in ["", ",passthrough=0"] {
        let s = Scratch::new();
        LayerBuilder::new(s.path("l")).file("d/lib.so", "old version");
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{extra},debug",
            s.path("l").display(),
            s.mkdir("upper").display(),
            s.mkdir("work").display()
        );
        let m = PlyfsMount::new(&opts, &s.path("mnt"));
        let (tmp, target) = (m.mnt.join("d/lib.so.dpkg-new"), m.mnt.join("d/lib.so"));
        {
            let mut f = std::fs::File::create(&tmp).unwrap();
            std::io::Write::write_all(&mut f, b"new version").unwrap();
            f.sync_all().unwrap();
        }
        std::fs::rename(&tmp, &target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new version");
        let log = m.unmount();
        let copies: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("copy-up") && l.contains("lib.so"))
            .collect();
        assert!(copies.is_empty(), "{extra}: {copies:?}");
        assert!(
            log.contains("copy-up"),
            "{extra}: the log shows copy-ups: {log}"
        );
    }
}

//! Faults of the layers underneath: an upper that runs out of space (a
//! small loop-mounted ext4), a lower file the disk cannot give back (a
//! corrupted squashfs: EIO) or the daemon may not read (EACCES), an upper
//! without extended attributes (ramfs), layers without `d_type` (ext4
//! without `filetype`), and a second mount of a live upper.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A filesystem of its own, mounted for the test; unmounted on drop (a
/// loop device made by `mount -o loop` goes with its last unmount).
struct FsMount {
    mnt: PathBuf,
}

impl FsMount {
    fn new(args: &[&str], source: &Path, mnt: &Path) -> FsMount {
        std::fs::create_dir_all(mnt).expect("mount point");
        let out = Command::new("mount")
            .args(args)
            .arg(source)
            .arg(mnt)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        FsMount {
            mnt: mnt.to_path_buf(),
        }
    }

    /// A fresh ext4 of `mb` MiB in an image file, made with `mkfs_opts`.
    fn ext4(s: &Scratch, name: &str, mb: u64, mkfs_opts: &[&str]) -> FsMount {
        let img = s.path(&format!("{name}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(mb << 20))
            .expect("image");
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .args(mkfs_opts)
            .arg(&img)
            .status()
            .expect("mkfs.ext4");
        assert!(st.success(), "mkfs.ext4");
        FsMount::new(&["-o", "loop"], &img, &s.path(name))
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        for _ in 0..20 {
            if Command::new("umount")
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn opts(lower: &Path, upper: &Path, work: &Path, extra: &str) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}{extra}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Bytes free for anyone on the filesystem of `p`.
fn free_bytes(p: &Path) -> u64 {
    use std::os::fd::AsFd;
    let fd = plyfs_sys::fs::open_path(p, libc::O_PATH).expect("open");
    let st = plyfs_sys::fs::fstatvfs(fd.as_fd()).expect("statvfs");
    st.f_bavail * st.f_frsize
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none())
}

fn check_clean(upper: &Path, lower: &Path, work: &Path) {
    let (code, out, err) = plyfs(&[
        "check".as_ref(),
        upper.as_os_str(),
        "--lowerdir".as_ref(),
        lower.as_os_str(),
        "--work".as_ref(),
        work.as_os_str(),
    ]);
    assert!(
        code == 0 && out.is_empty(),
        "plyfs check (exit {code}): {out}{err}"
    );
}

/// Out of space: writers get ENOSPC, a copy-up that does not fit leaves
/// the lower view and an empty work directory, a metacopy copy-up (no
/// data) still works, the daemon goes on serving, and once space is freed
/// the copy-up goes through. Both data paths.
#[test]
fn upper_out_of_space() {
    if !require_mount_privileges() {
        return;
    }
    for extra in ["", ",passthrough=0"] {
        let s = Scratch::new();
        let lower = s.mkdir("lower");
        let big: Vec<u8> = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(lower.join("big"), &big).expect("big");
        std::fs::write(lower.join("small"), "small").expect("small");
        let fs = FsMount::ext4(&s, "ufs", 64, &["-m", "0"]);
        let (upper, work) = (fs.mnt.join("u"), fs.mnt.join("w"));
        std::fs::create_dir_all(&upper).expect("upper");
        std::fs::create_dir_all(&work).expect("work");
        let ply = PlyfsMount::new(
            &opts(&lower, &upper, &work, &format!("{extra},metacopy=on")),
            &s.path("mnt"),
        );
        let m = &ply.mnt;
        // A writer fills the upper: ENOSPC from a write, or (through the
        // writeback cache) from the fsync that flushes it.
        let mut f = std::fs::File::create(m.join("fill")).expect("create fill");
        let chunk = vec![7u8; 1 << 20];
        let mut err = None;
        for _ in 0..96 {
            if let Err(e) = f.write_all(&chunk) {
                err = e.raw_os_error();
                break;
            }
        }
        if err.is_none() {
            err = errno_of(f.sync_all());
        }
        drop(f);
        assert_eq!(err, Some(libc::ENOSPC), "{extra}: the writer's error");
        // A copy-up that does not fit: the lower view as it was.
        let append = std::fs::OpenOptions::new().append(true).open(m.join("big"));
        assert_eq!(errno_of(append), Some(libc::ENOSPC), "{extra}: copy-up");
        assert!(std::fs::read(m.join("big")).expect("read big") == big);
        assert!(!upper.join("big").exists());
        assert!(
            empty(&work.join("work")),
            "{extra}: work/work after a failed copy-up"
        );
        // Metadata only needs no data blocks; its data copy-up does.
        let chmod = std::fs::set_permissions(m.join("big"), std::fs::Permissions::from_mode(0o600));
        if chmod.is_ok() {
            let append = std::fs::OpenOptions::new().append(true).open(m.join("big"));
            assert_eq!(
                errno_of(append),
                Some(libc::ENOSPC),
                "{extra}: data copy-up"
            );
            // The failed data copy gave back what it had taken.
            let blocks = std::fs::metadata(upper.join("big"))
                .expect("upper big")
                .blocks();
            assert!(
                blocks < 64,
                "{extra}: {blocks} blocks kept by a failed data copy-up"
            );
            let md = std::fs::metadata(m.join("big")).expect("stat big");
            assert_eq!(md.mode() & 0o777, 0o600);
        } else {
            assert_eq!(errno_of(chmod), Some(libc::ENOSPC));
        }
        assert!(std::fs::read(m.join("big")).expect("read big") == big);
        assert!(empty(&work.join("work")));
        // Still serving.
        assert_eq!(
            std::fs::read_to_string(m.join("small")).expect("small"),
            "small"
        );
        assert!(std::fs::read_dir(m).expect("readdir").count() >= 3);
        // Space freed: work goes on, once the upper's filesystem has it
        // back (ext4 returns the blocks of a file that hit ENOSPC at its
        // next journal commit, after the last reference goes).
        std::fs::remove_file(m.join("fill")).expect("unlink fill");
        let freed = std::time::Instant::now();
        while free_bytes(&upper) < 48 << 20 {
            assert!(
                freed.elapsed() < std::time::Duration::from_secs(10),
                "{extra}: the space of the deleted file never came back"
            );
            let _ = Command::new("sync").arg("-f").arg(&upper).status();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("big"))
            .unwrap_or_else(|e| panic!("{extra}: the copy-up after space was freed: {e}"));
        f.write_all(b"!")
            .unwrap_or_else(|e| panic!("{extra}: write after space was freed: {e}"));
        f.sync_all()
            .unwrap_or_else(|e| panic!("{extra}: fsync after space was freed: {e}"));
        drop(f);
        let mut want = big.clone();
        want.push(b'!');
        assert!(std::fs::read(m.join("big")).expect("read big") == want);
        drop(ply);
        check_clean(&upper, &lower, &work);
    }
}

/// A lower file whose blocks the disk cannot read (a squashfs whose data
/// block is corrupt): EIO for the reader and for a copy-up, which leaves
/// nothing behind; everything else is served.
#[test]
fn unreadable_lower_file_gives_eio() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let src = s.mkdir("src");
    // Compressible, and larger than a block: its data is a compressed
    // block right after the superblock, which is then damaged.
    let text: String = (0..6000)
        .map(|i| format!("line {i} of a file the disk will not give back\n"))
        .collect();
    std::fs::write(src.join("a_bad"), &text).expect("write");
    std::fs::write(src.join("z_good"), "good").expect("write");
    let img = s.path("lower.sqfs");
    let st = Command::new("mksquashfs")
        .arg(&src)
        .arg(&img)
        .args(["-quiet", "-noappend"])
        .status()
        .expect("mksquashfs");
    assert!(st.success());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("image");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(96 + 40)).expect("seek");
    f.write_all(&[0xff; 64]).expect("corrupt");
    drop(f);
    let lower = FsMount::new(&["-t", "squashfs", "-o", "loop,ro"], &img, &s.path("lower"));
    let (upper, work) = (s.mkdir("upper"), s.mkdir("work"));
    for extra in ["", ",passthrough=0"] {
        let ply = PlyfsMount::new(&opts(&lower.mnt, &upper, &work, extra), &s.path("mnt"));
        let m = &ply.mnt;
        let mut buf = Vec::new();
        let read = std::fs::File::open(m.join("a_bad")).and_then(|mut f| f.read_to_end(&mut buf));
        assert_eq!(errno_of(read), Some(libc::EIO), "{extra}: read");
        let append = std::fs::OpenOptions::new()
            .append(true)
            .open(m.join("a_bad"));
        assert_eq!(errno_of(append), Some(libc::EIO), "{extra}: copy-up");
        assert!(!upper.join("a_bad").exists() && empty(&work.join("work")));
        assert_eq!(
            std::fs::metadata(m.join("a_bad")).expect("stat").len(),
            text.len() as u64
        );
        assert_eq!(
            std::fs::read_to_string(m.join("z_good")).expect("good"),
            "good"
        );
    }
}

/// A lower file the daemon may not read (it runs without the capability
/// to override modes, and the file is mode 000): the caller gets EACCES,
/// whatever its own rights.
#[test]
fn lower_file_the_daemon_may_not_read() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("lower"))
        .file_mode("secret", "s", 0o000)
        .file("open", "o");
    let o = opts(&s.path("lower"), &s.mkdir("upper"), &s.mkdir("work"), "");
    let wrap = [
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    ];
    let ply = PlyfsMount::try_new_via(&wrap, &o, &s.path("mnt")).expect("mount");
    let read = std::fs::read(ply.mnt.join("secret"));
    assert_eq!(errno_of(read), Some(libc::EACCES));
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(ply.mnt.join("secret"));
    assert_eq!(errno_of(append), Some(libc::EACCES));
    assert_eq!(
        std::fs::read_to_string(ply.mnt.join("open")).expect("open"),
        "o"
    );
}

/// The same changes on the kernel's overlayfs (layers on an ordinary
/// filesystem) and on plyfs: the trees must read the same.
fn changes(m: &Path) {
    let p = |r: &str| m.join(r);
    std::fs::OpenOptions::new()
        .append(true)
        .open(p("f"))
        .and_then(|mut f| f.write_all(b"more"))
        .expect("append");
    std::fs::remove_file(p("d/a")).expect("rm d/a");
    std::fs::rename(p("d"), p("d2")).expect("mv d d2");
    std::fs::rename(p("g"), p("g2")).expect("mv g g2");
    std::fs::remove_dir_all(p("e")).expect("rm -r e");
    std::fs::create_dir(p("e")).expect("mkdir e");
    std::fs::write(p("e/new"), "new").expect("e/new");
    std::fs::hard_link(p("d2/b"), p("hb")).expect("ln");
    std::os::unix::fs::symlink("d2/b", p("s")).expect("ln -s");
    std::fs::set_permissions(p("d2/c"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn layer(root: &Path) {
    LayerBuilder::new(root)
        .file("f", "f")
        .file("g", "g")
        .file("d/a", "a")
        .file("d/b", "b")
        .file("d/c", "c")
        .file("e/x", "x");
}

/// What the kernel makes of `changes` over `layer` on /var/tmp.
fn kernel_tree(s: &Scratch) -> Tree {
    layer(&s.path("k/lower"));
    let k = KernelMount::new(
        &format!(
            "{},redirect_dir=on,index=on",
            opts(
                &s.path("k/lower"),
                &s.mkdir("k/upper"),
                &s.mkdir("k/work"),
                ""
            )
        ),
        &s.path("k/mnt"),
    );
    changes(&k.mnt);
    snapshot(&k.mnt)
}

fn same_as_kernel(s: &Scratch, plyfs_tree: &Tree, what: &str) {
    let how = Compare {
        ino: false,
        mtime: false,
        dir_nlink: false,
    };
    let d = diff_trees(&kernel_tree(s), plyfs_tree, how);
    assert!(
        d.is_empty(),
        "{what} differs from the kernel:\n{}",
        d.join("\n")
    );
}

/// An upper without extended attributes (ramfs): served in the reduced
/// mode the README describes (OCI opaque markers, directories with lower
/// content moved by copying, no origins), and reads like the kernel's
/// tree; remounted, it reads the same again.
#[test]
fn upper_without_xattrs() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    layer(&s.path("lower"));
    let fs = FsMount::new(&["-t", "ramfs"], Path::new("ramfs"), &s.path("ram"));
    assert!(
        xattr::set(&fs.mnt, "user.probe", b"1").is_err(),
        "ramfs takes no xattrs"
    );
    let (upper, work) = (fs.mnt.join("u"), fs.mnt.join("w"));
    std::fs::create_dir_all(&upper).expect("upper");
    std::fs::create_dir_all(&work).expect("work");
    let o = opts(&s.path("lower"), &upper, &work, "");
    let before = {
        let ply = PlyfsMount::new(&o, &s.path("mnt"));
        changes(&ply.mnt);
        snapshot(&ply.mnt)
    };
    same_as_kernel(&s, &before, "plyfs over a ramfs upper");
    assert!(
        upper.join("e/.wh..wh..opq").exists(),
        "an OCI opaque marker"
    );
    let ply = PlyfsMount::new(&o, &s.path("mnt"));
    let how = Compare {
        ino: false,
        ..Compare::default()
    };
    assert_same_trees(&before, &snapshot(&ply.mnt), how);
}

/// Layers on a filesystem without `d_type` in its directories (ext4
/// without `filetype`): every entry's type is looked up, whiteouts are
/// found, and the tree reads like the kernel's over ordinary layers (the
/// kernel itself lists such whiteouts as names that do not exist).
#[test]
fn layers_without_d_type() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let fs = FsMount::ext4(&s, "nodtype", 32, &["-O", "^filetype"]);
    layer(&fs.mnt.join("lower"));
    let (upper, work) = (fs.mnt.join("u"), fs.mnt.join("w"));
    std::fs::create_dir_all(&upper).expect("upper");
    std::fs::create_dir_all(&work).expect("work");
    let o = opts(&fs.mnt.join("lower"), &upper, &work, "");
    let tree = {
        let ply = PlyfsMount::new(&o, &s.path("mnt"));
        changes(&ply.mnt);
        snapshot(&ply.mnt)
    };
    same_as_kernel(&s, &tree, "plyfs over layers without d_type");
    check_clean(&upper, &fs.mnt.join("lower"), &work);
}

/// A second mount of an upper in use is refused, and leaves the live
/// mount's work directory alone. (It used to clean work/ before it took
/// the lock that refused it, deleting copy-ups in progress.)
#[test]
fn a_refused_second_mount_leaves_the_live_work_directory_alone() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("lower")).file("f", "f");
    let o = opts(&s.path("lower"), &s.mkdir("upper"), &s.mkdir("work"), "");
    let _ply = PlyfsMount::new(&o, &s.path("mnt"));
    // As a copy-up in progress has it.
    std::fs::write(s.path("work/work/#plyfs.1.1"), "half a copy").expect("work file");
    let err = PlyfsMount::try_new(&o, &s.path("mnt2"))
        .err()
        .expect("refused");
    assert!(err.contains("in use"), "{err}");
    assert!(
        s.path("work/work/#plyfs.1.1").exists(),
        "the live mount's work file"
    );
}

/// `plyfs check` from the command line: its exit codes, and one line
/// for an upper a mount is using.
#[test]
fn check_exit_codes() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("lower")).file("f", "f");
    let (upper, work, lower) = (s.mkdir("upper"), s.mkdir("work"), s.path("lower"));
    let run = |repair: bool| {
        let mut args = vec![
            "check".as_ref(),
            upper.as_os_str(),
            "--lowerdir".as_ref(),
            lower.as_os_str(),
            "--work".as_ref(),
            work.as_os_str(),
        ];
        if repair {
            args.push("--repair".as_ref());
        }
        plyfs(&args)
    };
    {
        let _ply = PlyfsMount::new(&opts(&lower, &upper, &work, ""), &s.path("mnt"));
        let (code, out, err) = run(false);
        assert_eq!((code, out.as_str()), (8, ""), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("in use by a mount"), "{err}");
    }
    assert_eq!(run(false).0, 0);
    // Right after `umount` returns, the daemon is still on its way out
    // with the lock: the check waits for it, as a mount does.
    let mnt = s.mkdir("mnt2");
    let o = opts(&lower, &upper, &work, "");
    let (code, _, err) = plyfs(&["-o".as_ref(), o.as_ref(), mnt.as_os_str()]);
    assert_eq!(code, 0, "{err}");
    let umounted = std::process::Command::new("umount").arg(&mnt).status();
    assert!(umounted.is_ok_and(|s| s.success()));
    let (code, out, err) = run(false);
    assert_eq!(code, 0, "{out}{err}");
    // A leftover is no defect; a value nobody can read is, and goes.
    std::fs::write(work.join("work/#plyfs.9.9"), "x").expect("leftover");
    std::fs::write(upper.join("g"), "g").expect("g");
    xattr::set(upper.join("g"), "trusted.overlay.nlink", b"U+x").expect("xattr");
    let (code, out, _) = run(false);
    assert_eq!(code, 4, "{out}");
    assert!(out.lines().any(|l| l.starts_with("leftover:")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("defect:")), "{out}");
    let (code, out, _) = run(true);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.ends_with("[repaired]")).count(),
        2,
        "{out}"
    );
    let (code, out, _) = run(false);
    assert_eq!((code, out.as_str()), (0, ""));
    // A redirect to nowhere is only reported.
    std::fs::create_dir(upper.join("d")).expect("d");
    xattr::set(upper.join("d"), "trusted.overlay.redirect", b"/nowhere").expect("xattr");
    xattr::set(&upper, "trusted.overlay.impure", b"y").expect("xattr");
    assert_eq!(run(true).0, 4);
}

//! Kernel details (the project's issue 11): the same syscalls on the
//! kernel's overlayfs and on plyfs over copies of the same layers, every
//! result compared; where the two cannot agree, the test pins down what
//! plyfs does instead and why.

mod common;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::ops::Twin;
use common::*;
use plyfs_sys::fs as sys;

/// Change time in nanoseconds.
fn ctime(p: &Path) -> i128 {
    let m = std::fs::symlink_metadata(p).unwrap();
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

fn in_upper(t: &Twin, side: &str, rel: &str) -> bool {
    t.scratch
        .path(&format!("{side}/upper/{rel}"))
        .symlink_metadata()
        .is_ok()
}

#[test]
fn chown_to_the_same_ids_moves_ctime() {
    let Some(t) = require_mount_privileges().then(|| {
        Twin::new(1, |d, _| {
            LayerBuilder::new(d)
                .file("f", "x")
                .dir("d")
                .symlink("l", "f");
        })
    }) else {
        return;
    };
    for name in ["f", "d", "l"] {
        let mut seen = Vec::new();
        for (side, m) in [("k", t.kmnt()), ("p", t.pmnt())] {
            let p = m.join(name);
            let before = ctime(&p);
            std::thread::sleep(Duration::from_millis(20));
            let parent = sys::open_path(&m, libc::O_PATH | libc::O_DIRECTORY).unwrap();
            sys::fchownat(parent.as_fd(), OsStr::new(name), u32::MAX, u32::MAX).unwrap();
            seen.push((ctime(&p) > before, in_upper(&t, side, name)));
        }
        assert_eq!(seen[0], seen[1], "{name}: kernel (left), plyfs (right)");
        assert_eq!(seen[1], (true, true), "{name}: ctime moved, copied up");
    }
}

/// The kernel's overlayfs without `nfs_export` encodes handles only to
/// identify objects (AT_HANDLE_FID, for fanotify) and refuses handles to
/// open; plyfs says the same to the kernel (FUSE_NO_EXPORT_SUPPORT),
/// rather than hand out handles that go stale once the kernel forgets the
/// inode.
#[test]
fn file_handles_identify_but_do_not_open() {
    let Some(mut t) = require_mount_privileges().then(|| {
        Twin::new(1, |d, _| {
            LayerBuilder::new(d).file("f", "x").dir("d");
        })
    }) else {
        return;
    };
    t.unmount();
    t.kernel_opts = "redirect_dir=on,index=on,nfs_export=off".into();
    t.mount();
    let mut results = Vec::new();
    for m in [t.kmnt(), t.pmnt()] {
        let root = sys::open_path(&m, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let mut r = Vec::new();
        for name in ["f", "d"] {
            let name = OsStr::new(name);
            let open = plyfs_sys::handle::name_to_handle_at(root.as_fd(), name);
            r.push(format!("handle {:?}", open.err().map(|e| e.raw())));
            let fid = plyfs_sys::handle::name_to_fid_at(root.as_fd(), name).unwrap();
            // Stable while the object lives, also once the kernel forgot
            // its inode.
            drop_caches();
            let again = plyfs_sys::handle::name_to_fid_at(root.as_fd(), name).unwrap();
            r.push(format!("fid stable {}", fid == again));
        }
        results.push(r);
    }
    assert_eq!(results[0], results[1], "kernel (left), plyfs (right)");
    assert!(
        results[1].contains(&format!("handle Some({})", libc::EOPNOTSUPP)),
        "{:?}",
        results[1]
    );
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

/// Collapse-range and insert-range cannot pass through FUSE: the kernel's
/// FUSE refuses every fallocate mode but keep-size, punch-hole and
/// zero-range with EOPNOTSUPP before asking the daemon
/// (`fuse_file_fallocate`). The other modes behave as the kernel's
/// overlayfs; those two fail and leave the file as it was.
#[test]
fn fallocate_modes() {
    let block = 4096usize;
    let content: Vec<u8> = (0..16 * block).map(|i| (i / block) as u8 + b'a').collect();
    let Some(t) = require_mount_privileges().then(|| {
        Twin::new(1, |d, _| {
            std::fs::write(d.join("f"), &content).unwrap();
            std::fs::write(d.join("g"), &content).unwrap();
        })
    }) else {
        return;
    };
    let b = block as u64;
    let modes = [
        ("keep size", libc::FALLOC_FL_KEEP_SIZE, 20 * b, b),
        (
            "punch",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            b,
            b,
        ),
        ("zero", libc::FALLOC_FL_ZERO_RANGE, 2 * b, b),
        (
            "zero keep size",
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            15 * b,
            2 * b,
        ),
        ("extend", 0, 16 * b, b),
    ];
    let mut results = Vec::new();
    for m in [t.kmnt(), t.pmnt()] {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("f"))
            .unwrap();
        let mut r = Vec::new();
        for (what, mode, off, len) in modes {
            r.push(format!(
                "{what} {:?}",
                sys::fallocate(f.as_fd(), mode, off, len)
            ));
        }
        drop(f);
        r.push(format!(
            "f {}",
            digest(&std::fs::read(m.join("f")).unwrap())
        ));
        results.push(r);
    }
    assert_eq!(results[0], results[1], "kernel (left), plyfs (right)");

    let mut odd = Vec::new();
    for m in [t.kmnt(), t.pmnt()] {
        let g = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.join("g"))
            .unwrap();
        let collapse = sys::fallocate(g.as_fd(), libc::FALLOC_FL_COLLAPSE_RANGE, b, b);
        let insert = sys::fallocate(g.as_fd(), libc::FALLOC_FL_INSERT_RANGE, 2 * b, b);
        drop(g);
        let data = std::fs::read(m.join("g")).unwrap();
        odd.push((collapse, insert, data));
    }
    let (kernel, plyfs) = (&odd[0], &odd[1]);
    assert_eq!((kernel.0, kernel.1), (Ok(()), Ok(())));
    assert_eq!(kernel.2.len(), content.len());
    assert_ne!(kernel.2, content);
    assert_eq!(
        (plyfs.0, plyfs.1),
        (
            Err(plyfs_core::Errno::EOPNOTSUPP),
            Err(plyfs_core::Errno::EOPNOTSUPP)
        )
    );
    assert_eq!(plyfs.2, content, "a refused fallocate changes nothing");
}

/// Short and order-sensitive: which blocks are where, and holes.
fn digest(data: &[u8]) -> String {
    data.chunks(4096)
        .map(|c| match c.iter().find(|&&b| b != 0) {
            None => '0',
            Some(&b) if c.iter().all(|&x| x == b) => b as char,
            Some(_) => '?',
        })
        .collect::<String>()
        + &format!(" {}", data.len())
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn atime_ns(p: &Path) -> i128 {
    let m = std::fs::symlink_metadata(p).unwrap();
    i128::from(m.atime()) * 1_000_000_000 + i128::from(m.atime_nsec())
}

/// Sets an old access time (before the modification time, so that
/// relatime would update it too).
fn age_atime(p: &Path) {
    let parent = sys::open_path(p.parent().unwrap(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
    sys::utimensat(
        parent.as_fd(),
        p.file_name().unwrap(),
        plyfs_core::SetTime::At { sec: 1000, nsec: 0 },
        plyfs_core::SetTime::Omit,
    )
    .unwrap();
}

/// Layers on a tmpfs mounted strictatime, where every read would show:
/// the union's atime options decide what plyfs's own reads update, as the
/// kernel's overlayfs's (which opens real files O_NOATIME, and touches
/// only the upper's atime, by the union's rules). Lowers never change.
#[test]
fn atimes_follow_the_mount_options() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let _tmpfs = TmpfsMount::new("strictatime,mode=0755", &s.path("t"));
    let objects = ["l0/lf", "l0/ld", "l0/run", "upper/uf", "upper/ud"];
    for (i, opts) in ["noatime", "strictatime", "strictatime,nodiratime"]
        .iter()
        .enumerate()
    {
        let mut seen = Vec::new();
        for side in ["k", "p"] {
            let base = s.path(&format!("t/{i}{side}"));
            LayerBuilder::new(base.join("l0"))
                .file("lf", "lower")
                .file("ld/x", "x");
            std::fs::copy("/bin/true", base.join("l0/run")).unwrap();
            LayerBuilder::new(base.join("upper"))
                .file("uf", "upper")
                .file("ud/y", "y");
            std::fs::create_dir_all(base.join("work")).unwrap();
            for o in objects {
                age_atime(&base.join(o));
            }
            let layers = format!(
                "lowerdir={},upperdir={},workdir={},{opts}",
                base.join("l0").display(),
                base.join("upper").display(),
                base.join("work").display()
            );
            let mnt = base.join("mnt");
            {
                let _k;
                let _p;
                if side == "k" {
                    _k = KernelMount::new(&layers, &mnt);
                } else {
                    _p = PlyfsMount::new(&layers, &mnt);
                }
                std::fs::read(mnt.join("lf")).unwrap();
                std::fs::read(mnt.join("uf")).unwrap();
                std::fs::read_dir(mnt.join("ld")).unwrap().for_each(drop);
                std::fs::read_dir(mnt.join("ud")).unwrap().for_each(drop);
                let ran = Command::new(mnt.join("run")).status().unwrap();
                assert!(ran.success());
            }
            let changed: Vec<String> = objects
                .iter()
                .filter(|o| atime_ns(&base.join(o)) != 1_000_000_000_000)
                .map(|o| o.to_string())
                .collect();
            seen.push(changed);
        }
        assert_eq!(seen[0], seen[1], "{opts}: kernel (left), plyfs (right)");
    }
}

/// A write through a shared mmap, msync'd, moves the mtime and ctime that
/// stat reports through the mount, on both of plyfs's data paths
/// (passthrough, where the kernel writes the backing file itself, and
/// through plyfs), also when stat had cached them before.
#[test]
fn mmap_writes_move_the_times() {
    if !require_mount_privileges() {
        return;
    }
    let script = "import mmap,os,sys\n\
        fd=os.open(sys.argv[1],os.O_RDWR)\n\
        m=mmap.mmap(fd,8192)\n\
        m[100:105]=b'hello'\n\
        m.flush()\n\
        m.close()\n\
        os.close(fd)";
    // As stat(1) asks (statx for these two only): std's stat would also
    // ask for the access time, which a mmap makes the kernel's FUSE
    // refetch, and so would hide stale cached times.
    let times = |p: &Path| {
        let out = Command::new("stat")
            .args(["-c", "%.9Y %.9Z"])
            .arg(p)
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut v = s
            .split_whitespace()
            .map(|x| x.replace('.', "").parse::<u128>().unwrap());
        (v.next().unwrap(), v.next().unwrap())
    };
    for opts in ["", "passthrough=0"] {
        let t = Twin::with_opts(1, opts, |d, _| {
            LayerBuilder::new(d).file("f", &"a".repeat(8192));
        });
        let mut outs = Vec::new();
        for m in [t.kmnt(), t.pmnt()] {
            let mut r = Vec::new();
            // Once on the lower file (copied up by the open), once on the
            // upper copy.
            for _ in 0..2 {
                let before = times(&m.join("f"));
                std::thread::sleep(Duration::from_millis(20));
                let out = Command::new("python3")
                    .args(["-c", script])
                    .arg(m.join("f"))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let after = times(&m.join("f"));
                r.push((after.0 > before.0, after.1 > before.1));
            }
            outs.push(r);
        }
        assert_eq!(outs[0], outs[1], "{opts:?}: kernel (left), plyfs (right)");
        assert!(outs[1].iter().all(|&c| c == (true, true)), "{outs:?}");
    }
}

/// Two layers in the kernel's format written with nothing but files and
/// attributes (no device whiteouts, which no union lets one make through
/// it): xattr whiteouts, an opaque directory, a renamed directory.
fn build_marked_layers(root: &Path) {
    LayerBuilder::new(root.join("l1"))
        .file("a/f1", "1")
        .file("a/f2", "2")
        .file("b/x", "x")
        .file("c/y", "y")
        .file("h", "hidden")
        .file("keep", "kept")
        .xattr("keep", "user.note", b"mine");
    let top = LayerBuilder::new(root.join("l0"));
    top.file("a/new", "new")
        .file("c2/z", "z")
        .file("h", "")
        .file("c", "")
        .xattr("", "trusted.overlay.opaque", b"x")
        .xattr("h", "trusted.overlay.whiteout", b"")
        .xattr("c", "trusted.overlay.whiteout", b"")
        .xattr("a", "trusted.overlay.opaque", b"y")
        .xattr("c2", "trusted.overlay.redirect", b"/c");
}

/// Nested overlays: layers kept inside a plyfs mount, their markers set
/// through it (and so stored escaped, `trusted.overlay.overlay.*`, as the
/// kernel's overlayfs stores them), read by the kernel's overlayfs and by
/// another plyfs exactly as the same layers on a plain directory; a
/// writable plyfs whose upper lives in the mount too.
#[test]
fn nested_overlays() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    build_marked_layers(&s.path("plain"));
    for d in ["outer/l0", "outer/upper", "outer/work"] {
        std::fs::create_dir_all(s.path(d)).unwrap();
    }
    let outer = PlyfsMount::new(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path("outer/l0").display(),
            s.path("outer/upper").display(),
            s.path("outer/work").display()
        ),
        &s.path("outer/mnt"),
    );
    let nested = outer.mnt.join("layers");
    build_marked_layers(&nested);

    // Through the outer mount the markers read as they were set; on its
    // upper they are escaped, and the outer union does not obey them.
    let a = nested.join("l0/a");
    assert_eq!(
        xattr::get(&a, "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    let listed: Vec<_> = xattr::list(&a).unwrap().collect();
    assert!(
        listed.iter().any(|n| n == "trusted.overlay.opaque"),
        "{listed:?}"
    );
    let real = s.path("outer/upper/layers/l0/a");
    assert_eq!(
        xattr::get(&real, "trusted.overlay.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(xattr::get(&real, "trusted.overlay.opaque").unwrap(), None);
    assert!(
        nested.join("l0/h").exists(),
        "an escaped whiteout is a file"
    );

    let lowers = |root: &Path| {
        format!(
            "lowerdir={}:{}",
            root.join("l0").display(),
            root.join("l1").display()
        )
    };
    let want = {
        let k = KernelMount::new(
            &format!("{},redirect_dir=follow", lowers(&s.path("plain"))),
            &s.path("kplain"),
        );
        snapshot(&k.mnt)
    };
    assert!(!want.objs.contains_key(Path::new("h")) && want.objs.contains_key(Path::new("c2/y")));
    {
        let k = KernelMount::new(
            &format!("{},redirect_dir=follow", lowers(&nested)),
            &s.path("knested"),
        );
        let d = diff_trees(&want, &snapshot(&k.mnt), Compare::default());
        assert!(
            d.is_empty(),
            "the kernel over nested layers:\n{}",
            d.join("\n")
        );
    }
    {
        let p = PlyfsMount::new(&lowers(&nested), &s.path("pnested"));
        let d = diff_trees(&want, &snapshot(&p.mnt), Compare::default());
        assert!(d.is_empty(), "plyfs over nested layers:\n{}", d.join("\n"));
    }

    // Writable: plyfs with its upper in the outer mount, the kernel with
    // its upper on a plain directory; the same changes.
    for d in ["kupper", "kwork"] {
        std::fs::create_dir_all(s.path(d)).unwrap();
    }
    for d in ["pupper", "pwork"] {
        std::fs::create_dir_all(outer.mnt.join(d)).unwrap();
    }
    let k = KernelMount::new(
        &format!(
            "{},upperdir={},workdir={},redirect_dir=on",
            lowers(&s.path("plain")),
            s.path("kupper").display(),
            s.path("kwork").display()
        ),
        &s.path("kw"),
    );
    let p = PlyfsMount::new(
        &format!(
            "{},upperdir={},workdir={}",
            lowers(&nested),
            outer.mnt.join("pupper").display(),
            outer.mnt.join("pwork").display()
        ),
        &s.path("pw"),
    );
    for m in [&k.mnt, &p.mnt] {
        let script = format!(
            "cd '{}' && rm keep && rm -r a && mkdir a && echo again > a/f1 && mv b b2 && mv c2 c3 && echo w > c3/w",
            m.display()
        );
        assert_eq!(
            sh(&format!("{script} && echo done")).trim(),
            "done",
            "{}",
            m.display()
        );
    }
    let d = diff_trees(&snapshot(&k.mnt), &snapshot(&p.mnt), Compare::default());
    assert!(d.is_empty(), "writable, nested upper:\n{}", d.join("\n"));
    drop(p);
    drop(k);
    drop(outer);
}

/// Clears inode flags under a directory when dropped, so that a failed
/// test leaves no immutable file behind (nothing could remove it).
struct ClearFlags(std::path::PathBuf);

impl Drop for ClearFlags {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-R", "-i", "-a"])
            .arg(&self.0)
            .output();
    }
}

/// `chattr` and `lsattr` through the union (FS_IOC_SETFLAGS copies up
/// first), and what an immutable or append-only object then refuses,
/// on files and directories.
#[test]
fn inode_flags() {
    let Some(t) = require_mount_privileges().then(|| {
        Twin::new(1, |d, _| {
            LayerBuilder::new(d)
                .file("f", "f")
                .file("a", "a")
                .file("d/x", "x")
                .file("e/y", "y");
        })
    }) else {
        return;
    };
    let _clear = ClearFlags(t.scratch.dir.path().to_path_buf());
    let steps = [
        "lsattr -d f d | cut -c1-22 | tr -s ' -'",
        "chattr +i f d && echo set",
        "lsattr -d f d | cut -c1-22 | tr -s ' -'",
        "echo more > f",
        "echo more >> f",
        "rm f",
        "mv f g",
        "ln f h",
        "chmod 600 f",
        "touch d/new",
        "rm d/x",
        "cat f d/x",
        "ls d",
        "chattr +a a && echo set",
        "echo more > a",
        "echo more >> a && cat a",
        "rm a",
        "chattr +i e/y && echo set",
        "rm -r e",
        "chattr -i f d e/y && chattr -a a && echo cleared",
        "echo new > f && rm a && touch d/new && rm -r e && ls . d",
        "chattr +i link 2>&1 | sed 's/.*: //'",
    ];
    let mut outs = Vec::new();
    for m in [t.kmnt(), t.pmnt()] {
        std::os::unix::fs::symlink("f", m.join("link")).unwrap();
        let mut r = Vec::new();
        for step in steps {
            let out = sh(&format!(
                "cd '{}' && {step} 2>&1 | sed 's/^.*: //'",
                m.display()
            ));
            r.push(format!("{step}: {}", out.trim()));
        }
        outs.push(r);
    }
    for (k, p) in outs[0].iter().zip(&outs[1]) {
        assert_eq!(k, p, "kernel (left), plyfs (right)");
    }
    assert!(
        outs[1][3].ends_with("Operation not permitted"),
        "{:?}",
        outs[1]
    );
}

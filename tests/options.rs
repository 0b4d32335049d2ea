//! fuse-overlayfs's options that change what the mount reports:
//! `xattr_permissions=1|2` (owner, mode and type kept in an override-stat
//! attribute), `noxattrs=1`, `static_nlink` and `ino32_t`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

const CONTAINERS: &str = "user.containers.override_stat";
const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
const OLD_USER: &str = "user.fuseoverlayfs.override_stat";

fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

/// (uid, gid, st_mode) as stat reports them.
fn owner_mode(p: &Path) -> (u32, u32, u32) {
    let m = meta(p);
    (m.uid(), m.gid(), m.mode())
}

/// An attribute of `p` itself (not following a symlink), as text.
fn attr(p: &Path, name: &str) -> Option<String> {
    xattr::get(p, name)
        .unwrap_or_else(|e| panic!("getxattr {} {name}: {e}", p.display()))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(0)
}

fn writable(s: &Scratch, lowers: &[&Path], extra: &str) -> String {
    format!(
        "{},upperdir={},workdir={}{extra}",
        lowerdir(lowers),
        s.mkdir("upper").display(),
        s.mkdir("work").display()
    )
}

/// The entries of a directory with the types readdir gives (`d_type`).
fn listed_types(dir: &Path) -> HashMap<String, fs::FileType> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.file_type().unwrap(),
            )
        })
        .collect()
}

/// The union's own attributes never show through the mount, and cannot be
/// read or (in a writable mount) set through it.
fn assert_override_names_hidden(p: &Path, writable: bool) {
    let names: Vec<String> = xattr::list(p)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("override_stat")),
        "{names:?}"
    );
    for name in [CONTAINERS, PRIVILEGED, OLD_USER] {
        assert_eq!(errno(xattr::get(p, name)), libc::EOPNOTSUPP, "get {name}");
        if !writable {
            continue;
        }
        assert_eq!(
            errno(xattr::set(p, name, b"0:0:0777:file")),
            libc::EOPNOTSUPP,
            "set {name}"
        );
        assert_eq!(errno(xattr::remove(p, name)), libc::EOPNOTSUPP);
    }
}

#[test]
fn xattr_permissions_2_keeps_ownership_in_user_containers_override_stat() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l = LayerBuilder::new(s.path("lower"));
    l.file_mode("f", "lower f", 0o640)
        .file_mode("g", "lower g", 0o600)
        .dir("d");
    let opts = writable(&s, &[&l.root], "");
    let upper = s.path("upper");
    let root_mode = meta(&upper).mode() & 0o7777;
    {
        let p = PlyfsMount::new(&format!("{opts},xattr_permissions=2"), &s.path("mnt"));
        let m = &p.mnt;
        // Marked at mount, from the root's own attributes, so that the next
        // mount takes the upper for an override layer.
        assert_eq!(
            attr(&upper, CONTAINERS),
            Some(format!("0:0:{root_mode:04o}:dir"))
        );

        // New objects: the caller's owner and mode in the attribute; the
        // real object is the daemon's, usable by it, without set-ID bits.
        fs::write(m.join("new"), "n").unwrap();
        chown(&m.join("new"), 1000, 1001);
        chmod(&m.join("new"), 0o4755);
        assert_eq!(
            owner_mode(&m.join("new")),
            (1000, 1001, libc::S_IFREG | 0o4755)
        );
        assert_eq!(
            attr(&upper.join("new"), CONTAINERS).as_deref(),
            Some("1000:1001:4755:file")
        );
        let real = meta(&upper.join("new"));
        assert_eq!((real.uid(), real.gid(), real.mode() & 0o7000), (0, 0, 0));
        assert_eq!(real.mode() & 0o600, 0o600);

        fs::create_dir(m.join("nd")).unwrap();
        chmod(&m.join("nd"), 0o500);
        chown(&m.join("nd"), 5, 6);
        assert_eq!(owner_mode(&m.join("nd")), (5, 6, libc::S_IFDIR | 0o500));
        assert_eq!(
            attr(&upper.join("nd"), CONTAINERS).as_deref(),
            Some("5:6:0500:dir")
        );
        assert_eq!(meta(&upper.join("nd")).mode() & 0o700, 0o700);

        // Devices and pipes cannot carry user.* attributes: they are kept as
        // empty regular files that say what they are.
        mknod(&m.join("cdev"), libc::S_IFCHR | 0o640, libc::makedev(1, 3));
        mknod(&m.join("fifo"), libc::S_IFIFO | 0o640, 0);
        let c = meta(&m.join("cdev"));
        assert!(c.file_type().is_char_device());
        assert_eq!((c.rdev(), c.mode() & 0o7777), (libc::makedev(1, 3), 0o640));
        assert!(meta(&m.join("fifo")).file_type().is_fifo());
        assert!(meta(&upper.join("cdev")).file_type().is_file());
        assert_eq!(
            attr(&upper.join("cdev"), CONTAINERS).as_deref(),
            Some("0:0:0640:char-1-3")
        );
        assert_eq!(
            attr(&upper.join("fifo"), CONTAINERS).as_deref(),
            Some("0:0:0640:pipe")
        );
        let types = listed_types(m);
        assert!(types["cdev"].is_char_device() && types["fifo"].is_fifo());

        // Copy-up carries the lower's owner into the attribute.
        chown(&m.join("f"), 1000, 1001);
        chmod(&m.join("g"), 0o644);
        assert_eq!(
            attr(&upper.join("f"), CONTAINERS).as_deref(),
            Some("1000:1001:0640:file")
        );
        assert_eq!(
            attr(&upper.join("g"), CONTAINERS).as_deref(),
            Some("0:0:0644:file")
        );
        assert_eq!(meta(&upper.join("f")).uid(), 0);
        assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "lower f");

        for name in ["new", "nd", "f", "d"] {
            assert_override_names_hidden(&m.join(name), true);
        }
        xattr::set(m.join("new"), "user.note", b"x").unwrap();
        assert_eq!(attr(&m.join("new"), "user.note").as_deref(), Some("x"));
    }
    // Without the option the upper still reads as an override layer.
    let p = PlyfsMount::new(&opts, &s.path("mnt2"));
    assert_eq!(
        owner_mode(&p.mnt.join("new")),
        (1000, 1001, libc::S_IFREG | 0o4755)
    );
    assert!(meta(&p.mnt.join("cdev")).file_type().is_char_device());
    assert_eq!(owner_mode(&p.mnt.join("f")).0, 1000);
}

#[test]
fn xattr_permissions_1_writes_the_privileged_attribute() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l = LayerBuilder::new(s.path("lower"));
    l.file("f", "x");
    let upper = s.path("upper");
    let p = PlyfsMount::new(
        &writable(&s, &[&l.root], ",xattr_permissions=1"),
        &s.path("mnt"),
    );
    let m = &p.mnt;
    assert!(attr(&upper, PRIVILEGED).is_some());
    assert_eq!(attr(&upper, CONTAINERS), None);
    fs::write(m.join("new"), "n").unwrap();
    chmod(&m.join("new"), 0o640);
    chown(&m.join("new"), 7, 8);
    assert_eq!(
        attr(&upper.join("new"), PRIVILEGED).as_deref(),
        Some("7:8:0640:file")
    );
    // security.* attributes may be set on symlinks too.
    std::os::unix::fs::symlink("new", m.join("sl")).unwrap();
    chown(&m.join("sl"), 9, 9);
    assert_eq!(owner_mode(&m.join("sl")).0, 9);
    assert_eq!(
        attr(&upper.join("sl"), PRIVILEGED).as_deref(),
        Some("9:9:0777:symlink")
    );
    assert_eq!(meta(&upper.join("sl")).uid(), 0);
    // A daemon that may make devices makes a real one (owned by itself).
    mknod(&m.join("cdev"), libc::S_IFCHR | 0o600, libc::makedev(1, 7));
    assert!(meta(&upper.join("cdev")).file_type().is_char_device());
    assert_eq!(
        attr(&upper.join("cdev"), PRIVILEGED).as_deref(),
        Some("0:0:0600:char-1-7")
    );
    assert_override_names_hidden(&m.join("new"), true);
    drop(p);

    // One that may not (no CAP_MKNOD) keeps a regular file that says it is
    // the device, while the caller (who may make devices) sees one.
    let s2 = Scratch::new();
    let l2 = LayerBuilder::new(s2.path("lower"));
    l2.file("f", "x");
    let wrap = ["setpriv", "--bounding-set=-mknod"];
    let opts = writable(&s2, &[&l2.root], ",xattr_permissions=1");
    let p = PlyfsMount::try_new_via(&wrap, &opts, &s2.path("mnt")).unwrap();
    mknod(
        &p.mnt.join("cdev"),
        libc::S_IFCHR | 0o600,
        libc::makedev(1, 7),
    );
    let c = meta(&p.mnt.join("cdev"));
    assert!(c.file_type().is_char_device(), "{c:?}");
    assert_eq!(c.rdev(), libc::makedev(1, 7));
    let real = s2.path("upper/cdev");
    assert!(meta(&real).file_type().is_file());
    assert_eq!(
        attr(&real, PRIVILEGED).as_deref(),
        Some("0:0:0600:char-1-7")
    );
}

#[test]
fn lower_layer_marked_at_its_root_reports_overridden_owners() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file_mode("a", "a", 0o600)
        .file("dev", "")
        .dir("sub")
        .file_mode("plain", "p", 0o644)
        .xattr(".", CONTAINERS, b"0:0:0755:dir")
        .xattr("a", CONTAINERS, b"1000:1000:0644:file")
        .xattr("dev", CONTAINERS, b"0:6:0660:block-8-0")
        .xattr("sub", CONTAINERS, b"33:33:0750:dir");
    // Not an override layer: its objects' attributes are not read.
    let l2 = LayerBuilder::new(s.path("l2"));
    l2.file_mode("b", "b", 0o600)
        .xattr("b", CONTAINERS, b"1000:1000:0644:file");

    let check = |m: &Path, writable: bool| {
        assert_eq!(
            owner_mode(&m.join("a")),
            (1000, 1000, libc::S_IFREG | 0o644)
        );
        let dev = meta(&m.join("dev"));
        assert!(dev.file_type().is_block_device());
        assert_eq!(
            (dev.gid(), dev.mode() & 0o7777, dev.rdev()),
            (6, 0o660, libc::makedev(8, 0))
        );
        assert_eq!(owner_mode(&m.join("sub")), (33, 33, libc::S_IFDIR | 0o750));
        assert_eq!(owner_mode(&m.join("plain")), (0, 0, libc::S_IFREG | 0o644));
        assert_eq!(owner_mode(&m.join("b")), (0, 0, libc::S_IFREG | 0o600));
        assert!(listed_types(m)["dev"].is_block_device());
        assert_override_names_hidden(&m.join("a"), writable);
    };
    let ro = PlyfsMount::new(&lowerdir(&[&l1.root, &l2.root]), &s.path("ro"));
    check(&ro.mnt, false);
    drop(ro);

    // A writable mount shows the same, and its copies carry the lower's
    // override into the upper's.
    let p = PlyfsMount::new(
        &writable(&s, &[&l1.root, &l2.root], ",xattr_permissions=2"),
        &s.path("mnt"),
    );
    check(&p.mnt, true);
    chmod(&p.mnt.join("a"), 0o600);
    chmod(&p.mnt.join("sub"), 0o700);
    assert_eq!(
        owner_mode(&p.mnt.join("a")),
        (1000, 1000, libc::S_IFREG | 0o600)
    );
    let upper = s.path("upper");
    assert_eq!(
        attr(&upper.join("a"), CONTAINERS).as_deref(),
        Some("1000:1000:0600:file")
    );
    assert_eq!(
        attr(&upper.join("sub"), CONTAINERS).as_deref(),
        Some("33:33:0700:dir")
    );
    assert_eq!(meta(&upper.join("a")).uid(), 0);
}

/// Runs `script` with `sh` as uid/gid 65534.
fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(script)
        .output()
        .expect("setpriv")
}

/// The daemon of a plain user (uid 65534, mounting through fusermount3)
/// cannot chown: a copy-up of root's file needs the override to happen at
/// all, and the user's own chmod to set-ID lands there too.
#[test]
fn plain_user_daemon_keeps_ownership_in_xattrs() {
    if !require_mount_privileges() {
        return;
    }
    if !Path::new("/usr/bin/fusermount3").exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install fuse3"
        );
        eprintln!("SKIPPED: fusermount3 is not installed");
        return;
    }
    let s = Scratch::new();
    chmod(s.dir.path(), 0o755);
    let l = LayerBuilder::new(s.path("lower"));
    l.file_mode("rootfile", "r", 0o666);
    chmod(&l.root, 0o755);
    let (upper, work) = (s.mkdir("upper"), s.mkdir("work"));
    // The daemon's own work directories exist already: a plain user cannot
    // use the mode-000 ones the daemon makes when they do not (the bug
    // being fixed on main).
    let (ww, wi) = (s.mkdir("work/work"), s.mkdir("work/index"));
    for d in [&upper, &work, &ww, &wi, &s.mkdir("mnt"), &s.mkdir("mnt2")] {
        chmod(d, 0o755);
        chown(d, 65534, 65534);
    }
    let base = format!(
        "lowerdir={},upperdir={},workdir={}",
        l.root.display(),
        upper.display(),
        work.display()
    );
    let wrap = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    // Without the option, the copy-up cannot give the copy root's owner.
    {
        let p = PlyfsMount::try_new_via(&wrap, &base, &s.path("mnt2")).unwrap();
        let out = as_nobody(&format!("echo x >> {}/rootfile", p.mnt.display()));
        assert!(!out.status.success());
    }
    let p = PlyfsMount::try_new_via(
        &wrap,
        &format!("{base},xattr_permissions=2"),
        &s.path("mnt"),
    )
    .unwrap();
    let script = format!(
        "set -e; cd {}; echo more >> rootfile; mkdir nd; chmod 750 nd
         echo n > nf; chmod 4711 nf; stat -c '%n %u %g %a %F' rootfile nd nf",
        p.mnt.display()
    );
    let out = as_nobody(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "rootfile 0 0 666 regular file",
            "nd 65534 65534 750 directory",
            "nf 65534 65534 4711 regular file"
        ]
    );
    let got = |n: &str| attr(&upper.join(n), CONTAINERS);
    assert_eq!(got("rootfile").as_deref(), Some("0:0:0666:file"));
    assert_eq!(got("nd").as_deref(), Some("65534:65534:0750:dir"));
    assert_eq!(got("nf").as_deref(), Some("65534:65534:4711:file"));
    // The real objects are the daemon's, without set-ID bits.
    let nf = meta(&upper.join("nf"));
    assert_eq!((nf.uid(), nf.gid(), nf.mode() & 0o7000), (65534, 65534, 0));
    assert_eq!(owner_mode(&upper.join("rootfile")).0, 65534);
}

#[test]
fn noxattrs_answers_eopnotsupp() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l = LayerBuilder::new(s.path("lower"));
    l.file("f", "x").xattr("f", "user.kept", b"v");
    let p = PlyfsMount::new(&writable(&s, &[&l.root], ",noxattrs=1"), &s.path("mnt"));
    let f = p.mnt.join("f");
    for _ in 0..2 {
        assert_eq!(errno(xattr::get(&f, "user.kept")), libc::EOPNOTSUPP);
        assert_eq!(errno(xattr::list(&f)), libc::EOPNOTSUPP);
        assert_eq!(errno(xattr::set(&f, "user.new", b"v")), libc::EOPNOTSUPP);
        assert_eq!(errno(xattr::remove(&f, "user.kept")), libc::EOPNOTSUPP);
    }
    // Everything else works, and the lower's attributes are untouched.
    append(&f, b"y");
    assert_eq!(fs::read_to_string(&f).unwrap(), "xy");
    assert_eq!(attr(&s.path("upper/f"), "user.kept").as_deref(), Some("v"));
}

#[test]
fn static_nlink_reports_one_for_every_directory() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l = LayerBuilder::new(s.path("lower"));
    l.dir("d/a")
        .dir("d/b")
        .file("d/f", "f")
        .hardlink("d/f", "d/g");
    let opts = writable(&s, &[&l.root], "");
    {
        let p = PlyfsMount::new(&opts, &s.path("mnt"));
        assert_eq!(
            meta(&p.mnt.join("d")).nlink(),
            4,
            "the real count without it"
        );
    }
    let p = PlyfsMount::new(&format!("{opts},static_nlink"), &s.path("mnt"));
    fs::create_dir_all(p.mnt.join("new/x/y")).unwrap();
    for dir in ["", "d", "d/a", "new", "new/x", "new/x/y"] {
        assert_eq!(meta(&p.mnt.join(dir)).nlink(), 1, "{dir}");
    }
    assert_eq!(meta(&p.mnt.join("d/f")).nlink(), 2, "files keep theirs");
}

/// Every object's number as stat and as readdir report it, by path.
fn numbers(root: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let st = meta(&e.path());
            if st.is_dir() {
                stack.push(e.path());
            }
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, (st.ino(), e.ino()));
        }
    }
    out
}

#[test]
fn ino32_t_numbers_fit_in_32_bits_and_match_readdir() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    // A lower on a filesystem of its own: its numbers get the filesystem's
    // bits at the top (xino), far beyond 32 bits.
    let t = TmpfsMount::new("size=16m", &s.path("tmpfs"));
    let lt = LayerBuilder::new(t.mnt.join("layer"));
    lt.file("t1", "1")
        .file("sub/t2", "2")
        .hardlink("t1", "sub/t1link");
    let ld = LayerBuilder::new(s.path("disk"));
    ld.file("d1", "1").file("sub/d2", "2");
    let opts = writable(&s, &[&lt.root, &ld.root], "");
    {
        let p = PlyfsMount::new(&opts, &s.path("mnt"));
        let wide = numbers(&p.mnt);
        assert!(
            wide.values().any(|&(i, _)| i > u64::from(u32::MAX)),
            "{wide:?}"
        );
    }
    let p = PlyfsMount::new(&format!("{opts},ino32_t"), &s.path("mnt"));
    let m = &p.mnt;
    fs::write(m.join("new"), "n").unwrap();
    fs::write(m.join("sub/t2"), "copied up").unwrap();
    let first = numbers(m);
    let root = meta(m).ino();
    let mut seen: HashMap<u64, String> = HashMap::new();
    for (path, &(st, d)) in &first {
        assert!(st <= u64::from(u32::MAX), "{path}: {st}");
        assert_eq!(st, d, "{path}: stat and readdir disagree");
        assert_ne!(st, root, "{path}");
        if let Some(other) = seen.insert(st, path.clone()) {
            let links = [other.as_str(), path.as_str()];
            assert!(
                links.contains(&"t1") && links.contains(&"sub/t1link"),
                "{other} and {path} share {st}"
            );
        }
    }
    assert_eq!(first["t1"].0, first["sub/t1link"].0);
    assert!(root <= u64::from(u32::MAX));
    // Remembered: the same numbers on a second walk.
    assert_eq!(numbers(m), first);
}

//! Hostile layers and forged markers (issue 15): layers full of symlinks
//! to `/`, to `..`, to a canary directory outside every layer, chains of
//! them, lower directories replaced by symlinks, redirects, metacopy data
//! and origins that point through or at them; and every marker value
//! plyfs reads, forged. The kernel's overlayfs over a copy of the same
//! layers is the oracle of what shows; the canary (its names, sizes,
//! modes and times, access times included: they are set a day back, so
//! that under `relatime` any read of it moves them) must be exactly as it
//! was after every change, after `plyfs commit`, `plyfs diff` and
//! `plyfs check`.

mod common;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::ops::{Op, Twin, TwinConfig, layer};
use common::*;

/// What no file of a union, a commit or a diff may ever contain.
const SECRET: &str = "CANARY-SECRET-8d3f2c";

/// A directory outside every layer that hostile layers point at.
struct Canary {
    root: PathBuf,
}

/// One canary object as stat shows it: path, size, mode, link count and
/// access, modification and change times.
type CanaryStat = (PathBuf, u64, u32, u64, (i64, i64), (i64, i64), (i64, i64));

impl Canary {
    /// The canary beside the layers of a scratch directory made by a Twin
    /// (`dir` is one of its layers: SCRATCH/SIDE/lN).
    fn beside_layer(dir: &Path) -> PathBuf {
        dir.parent().unwrap().parent().unwrap().join("canary")
    }

    fn make(root: &Path) {
        if root.exists() {
            return;
        }
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("file"), SECRET).unwrap();
        std::fs::write(root.join("sub/x"), SECRET).unwrap();
    }

    /// Takes the canary over, its times set a day and more back (from
    /// now on, under `relatime`, a read of a file or a listing of a
    /// directory moves its access time).
    fn arm(root: PathBuf) -> Canary {
        let c = Canary { root };
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        for p in c.paths() {
            let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
            // Directories and files alike: opened for their times only
            // (an open reads nothing).
            std::fs::File::open(&p).unwrap().set_times(times).unwrap();
        }
        c
    }

    fn paths(&self) -> [PathBuf; 4] {
        [
            self.root.clone(),
            self.root.join("file"),
            self.root.join("sub"),
            self.root.join("sub/x"),
        ]
    }

    /// Stat of every canary object (never a read: it would move them).
    fn state(&self) -> Vec<CanaryStat> {
        self.paths()
            .into_iter()
            .map(|p| {
                let m = std::fs::symlink_metadata(&p).unwrap();
                (
                    p,
                    m.size(),
                    m.mode(),
                    m.nlink(),
                    (m.atime(), m.atime_nsec()),
                    (m.mtime(), m.mtime_nsec()),
                    (m.ctime(), m.ctime_nsec()),
                )
            })
            .collect()
    }
}

/// The hostile lowers: l1 (bottom) has ordinary directories and files;
/// l0 (top) replaces some of them by symlinks that lead out (to `/`,
/// `..`, the canary, through chains) and has symlinks of its own.
fn hostile_lowers(dir: &Path, i: usize) {
    let canary = Canary::beside_layer(dir);
    Canary::make(&canary);
    let c = canary.to_str().unwrap();
    let l = LayerBuilder::new(dir);
    if i == 1 {
        l.file("d/sub/x", "lower x")
            .file("d/f", "df")
            .file("dd/sub/y", "lower y")
            .file("e/inner", "e")
            .file("f", "f")
            .file("m", "metacopy data")
            .file("hl", "hard")
            .hardlink("hl", "hl2")
            .file("o", "origin")
            .file("g", "g");
    } else {
        l.symlink("root", "/")
            .symlink("up", "..")
            .symlink("up2", "../../canary")
            .symlink("abs", c)
            .symlink("dd", c)
            .symlink("e", "../../canary/sub")
            .symlink("c1", "c2")
            .symlink("c2", "c3")
            .symlink("c3", &format!("{c}/file"))
            .symlink("loop", "loop")
            .symlink("s/lnk", "../../../canary/sub");
    }
}

fn twin(nlowers: usize, plyfs_opts: &str, kernel_opts: &str, build: fn(&Path, usize)) -> Twin {
    Twin::with_config(
        TwinConfig {
            nlowers,
            plyfs_opts: plyfs_opts.into(),
            kernel_opts: kernel_opts.into(),
            p_starts_as_kernel: false,
        },
        |dir, i, _| build(dir, i),
    )
}

/// Sets attribute `name` to `value` on `rel` in both sides' uppers (both
/// unmounted), making `rel` first as a directory (`dir`) or a file of
/// `size` bytes when it is missing.
fn forge(t: &Twin, rel: &str, dir: bool, size: u64, name: &str, value: &[u8]) {
    for side in ["k", "p"] {
        let p = t.scratch.path(&format!("{side}/upper/{rel}"));
        if std::fs::symlink_metadata(&p).is_err() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if dir {
                std::fs::create_dir(&p).unwrap();
            } else {
                let f = std::fs::File::create(&p).unwrap();
                f.set_len(size).unwrap();
            }
        }
        xattr::set(&p, name, value).unwrap_or_else(|e| panic!("setxattr {name} on {rel}: {e}"));
    }
}

/// Every file of a merged tree that holds the canary's secret.
fn leaked(tree: &Tree) -> Vec<PathBuf> {
    tree.objs
        .iter()
        .filter(|(_, o)| {
            o.content
                .as_ref()
                .is_some_and(|c| c.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()))
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// Runs `ops` on both sides; the differences, for a report. A read or
/// listing of what is a symlink on either side reads the link
/// instead: the test itself must not follow links out of the mount.
fn outcomes(t: &mut Twin, ops: &[Op]) -> Vec<String> {
    let mut diffs = Vec::new();
    for op in ops {
        let op = match op {
            Op::Read(p) | Op::ReadDir(p)
                if [t.kmnt(), t.pmnt()].iter().any(|m| {
                    std::fs::symlink_metadata(m.join(p)).is_ok_and(|m| m.file_type().is_symlink())
                }) =>
            {
                &Op::Readlink(p.clone())
            }
            op => op,
        };
        let (k, p) = t.both(op);
        if k != p {
            diffs.push(format!("{op}: kernel {k:?}, plyfs {p:?}"));
        }
    }
    diffs
}

fn reads(names: &[&str]) -> Vec<Op> {
    names
        .iter()
        .flat_map(|n| {
            [
                Op::Stat(n.to_string()),
                Op::ReadDir(n.to_string()),
                Op::Read(n.to_string()),
                Op::Readlink(n.to_string()),
            ]
        })
        .collect()
}

/// Layers of symlinks out of the layers, and every kind of change through
/// the union around them: the same view and outcomes as the kernel's, and
/// the canary untouched, also by commit, diff and check.
#[test]
fn symlinks_out_of_the_layers_lead_nowhere() {
    if !require_mount_privileges() {
        return;
    }
    let mut t = twin(
        2,
        "metacopy=on",
        "redirect_dir=on,index=on,metacopy=on",
        hostile_lowers,
    );
    let canary = Canary::arm(t.scratch.path("canary"));
    let before = canary.state();
    let names = [
        "root", "up", "up2", "abs", "dd", "e", "c1", "c2", "c3", "loop", "s", "s/lnk", "d",
        "d/sub", "f", "m", "hl", "hl2", "o", "g",
    ];
    let mut diffs = outcomes(&mut t, &reads(&names));
    let changes = vec![
        // Copy-up of the symlinks themselves (never of what they name).
        Op::Chown("abs".into(), 1, 1),
        Op::Chown("c1".into(), 2, 2),
        Op::Chown("root".into(), 3, 3),
        Op::Chown("s/lnk".into(), 4, 4),
        Op::Utimens("up".into(), 5, 5),
        Op::SetXattr("dd".into(), "trusted.hostile".into(), b"v".to_vec(), 0),
        Op::GetXattr("dd".into(), "trusted.hostile".into()),
        Op::ListXattr("abs".into()),
        Op::RemoveXattr("dd".into(), "trusted.hostile".into()),
        // Renames and deletes of them and around them.
        Op::Rename("up2".into(), "up3".into(), 0),
        Op::Rename("e".into(), "d/e".into(), 0),
        Op::Rename("c2".into(), "c2b".into(), 0),
        Op::Rename("d".into(), "dmoved".into(), 0),
        Op::ReadDir("dmoved/sub".into()),
        Op::Rename("abs".into(), "dmoved/sub/abs".into(), 0),
        Op::Unlink("loop".into()),
        Op::Unlink("up".into()),
        Op::Rmdir("dd".into()),
        Op::Unlink("dd".into()),
        Op::Mkdir("dd".into(), 0o755),
        Op::ReadDir("dd".into()),
        Op::Rename("s".into(), "s2".into(), 0),
        Op::Rmdir("s2".into()),
        // Hard links of symlinks and of an indexed lower file.
        Op::Link("c1".into(), "c1link".into()),
        Op::Link("root".into(), "dmoved/rootlink".into()),
        Op::Link("hl".into(), "hl3".into()),
        Op::Write("hl2".into(), 0, b"changed".to_vec()),
        // Metacopy copy-up, then its data.
        Op::Chmod("m".into(), 0o600),
        Op::Read("m".into()),
        Op::Write("m".into(), 0, b"M".to_vec()),
        Op::Truncate("f".into(), 1),
        Op::Create("dmoved/sub/new".into(), 0o644),
        Op::Symlink("../../canary".into(), "newlink".into()),
        Op::Rename("newlink".into(), "dmoved/newlink".into(), 0),
        Op::Remount,
    ];
    diffs.extend(outcomes(&mut t, &changes));
    let after_names = [
        "c1",
        "c1link",
        "c2b",
        "c3",
        "root",
        "dmoved",
        "dmoved/sub",
        "dmoved/sub/abs",
        "dmoved/rootlink",
        "dmoved/newlink",
        "dd",
        "hl",
        "hl2",
        "hl3",
        "m",
        "f",
        "up3",
        "d/e",
    ];
    diffs.extend(outcomes(&mut t, &reads(&after_names)));
    assert!(diffs.is_empty(), "outcomes differ:\n{}", diffs.join("\n"));
    t.assert_same_tree();
    let tree = snapshot(&t.pmnt());
    assert!(leaked(&tree).is_empty(), "canary read: {:?}", leaked(&tree));
    assert_eq!(canary.state(), before, "the canary changed");
    t.unmount();

    // The upper read offline: commit, diff and check touch nothing
    // outside the layers either, and the layer they write holds no byte
    // of the canary.
    let upper = t.scratch.path("p/upper");
    let lowers = format!(
        "{}:{}",
        layer(&t.scratch, "p", 0).display(),
        layer(&t.scratch, "p", 1).display()
    );
    let out = t.scratch.path("layer.tar");
    let work = t.scratch.path("p/work");
    for args in [
        vec!["commit", "--lowerdir", &lowers, "-o", out.to_str().unwrap()],
        vec!["diff", "--lowerdir", &lowers],
        vec![
            "check",
            "--lowerdir",
            &lowers,
            "--work",
            work.to_str().unwrap(),
        ],
        vec![
            "check",
            "--lowerdir",
            &lowers,
            "--work",
            work.to_str().unwrap(),
            "--repair",
        ],
    ] {
        let mut a: Vec<&OsStr> = vec![OsStr::new(args[0]), upper.as_os_str()];
        a.extend(args[1..].iter().map(OsStr::new));
        let (code, stdout, err) = plyfs(&a);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            code == 0 || (args[0] == "check" && code < 8),
            "{args:?}: exit {code}: {err}\n{stdout}"
        );
    }
    let tar = std::fs::read(&out).unwrap();
    assert!(
        !tar.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the committed layer holds canary data"
    );
    let mut archive = ::tar::Archive::new(&tar[..]);
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path_bytes().into_owned();
        assert!(
            !p.starts_with(b"/") && !p.split(|&b| b == b'/').any(|c| c == b".."),
            "entry {:?}",
            String::from_utf8_lossy(&p)
        );
    }
    assert_eq!(canary.state(), before, "the canary changed");
}

/// Redirects and metacopy redirects through symlinks, and origins of
/// objects outside the layers, forged in the upper: the kernel's view,
/// and the canary never reached.
#[test]
fn markers_pointing_through_symlinks_and_outside() {
    if !require_mount_privileges() {
        return;
    }
    let mut t = twin(
        2,
        "",
        "redirect_dir=on,index=on,metacopy=on",
        hostile_lowers,
    );
    let canary = Canary::arm(t.scratch.path("canary"));
    let before = canary.state();
    // A copy-up on the kernel's side tells the layer filesystem's UUID
    // as overlayfs records it.
    t.run(Op::Chown("g".into(), 7, 7));
    t.unmount();
    let origin = xattr::get(t.scratch.path("k/upper/g"), "trusted.overlay.origin")
        .unwrap()
        .expect("the kernel records an origin");
    let uuid = &origin[5..21];
    // The origin of a file outside the layers (the canary's), on the
    // layers' own filesystem.
    let cdir = plyfs_sys::fs::open_path(&canary.root, libc::O_PATH | libc::O_DIRECTORY).unwrap();
    let h = plyfs_sys::handle::name_to_handle_at(cdir.as_fd(), OsStr::new("file")).unwrap();
    let mut outside = vec![
        0u8,
        0xfb,
        (21 + h.bytes.len()) as u8,
        0,
        h.handle_type as u8,
    ];
    outside.extend_from_slice(uuid);
    outside.extend_from_slice(&h.bytes);
    let sdir = plyfs_sys::fs::open_path(&canary.root, libc::O_PATH | libc::O_DIRECTORY).unwrap();
    let hs = plyfs_sys::handle::name_to_handle_at(sdir.as_fd(), OsStr::new("sub")).unwrap();
    let mut outside_dir = vec![
        0u8,
        0xfb,
        (21 + hs.bytes.len()) as u8,
        0,
        hs.handle_type as u8,
    ];
    outside_dir.extend_from_slice(uuid);
    outside_dir.extend_from_slice(&hs.bytes);

    let r = "trusted.overlay.redirect";
    for (name, value) in [
        ("r1", &b"/dd/sub"[..]),
        ("r2", b"/abs"),
        ("r3", b"/up2/sub"),
        ("r4", b"/root/etc"),
        ("r5", b"/s/lnk"),
        ("r6", b"/e"),
        ("r7", b"abs"),
        ("r8", b"/c1"),
    ] {
        forge(&t, name, true, 0, r, value);
    }
    // Metacopy files whose data would be outside: through a symlinked
    // directory, a chain of symlinks, a symlink itself.
    for (name, value) in [
        ("mc1", Some(&b"/abs/file"[..])),
        ("mc2", Some(b"/c1")),
        ("mc3", Some(b"/dd/sub/x")),
        ("mc4", Some(b"c3")),
        ("m", None),
    ] {
        forge(
            &t,
            name,
            false,
            SECRET.len() as u64,
            "trusted.overlay.metacopy",
            b"",
        );
        if let Some(v) = value {
            forge(&t, name, false, 0, r, v);
        }
    }
    // Origins outside the layers: a file's, on a new upper file (the
    // kernel takes it, for its inode number only); a directory's, on a
    // copy of a lower file (of another type: ESTALE) and on a directory.
    // (Two files of one origin would be one inode to the kernel.)
    forge(&t, "newfile", false, 3, "trusted.overlay.origin", &outside);
    forge(&t, "o", false, 3, "trusted.overlay.origin", &outside_dir);
    forge(&t, "odir", true, 0, "trusted.overlay.origin", &outside_dir);
    t.mount();
    let names = [
        "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "mc1", "mc2", "mc3", "mc4", "m", "o",
        "newfile", "odir",
    ];
    let mut ops = reads(&names);
    ops.extend([
        Op::ReadDir(".".into()),
        Op::Write("mc1".into(), 0, b"x".to_vec()),
        Op::Truncate("mc2".into(), 0),
        Op::Rename("r1".into(), "r1b".into(), 0),
        Op::ReadDir("r1b".into()),
        Op::Link("newfile".into(), "o2".into()),
        Op::Stat("o2".into()),
        Op::Mkdir("r2/new".into(), 0o755),
        Op::Rmdir("r2/new".into()),
        Op::Chmod("m".into(), 0o640),
        Op::Read("m".into()),
    ]);
    let diffs = outcomes(&mut t, &ops);
    assert!(diffs.is_empty(), "outcomes differ:\n{}", diffs.join("\n"));
    // (The root cannot be listed, by the kernel either: its entries that
    // fail their lookup fail the listing. What each read gave is logged.)
    let log = t.log.join("\n");
    assert!(!log.contains(SECRET), "canary read:\n{log}");
    t.unmount();
    assert_eq!(canary.state(), before, "the canary changed");
}

/// OCI markers that are symlinks (a `.wh.` whiteout and an opaque marker
/// pointing outside) still only mark: they hide, nothing is followed.
/// The kernel reads no OCI markers, so the view is checked against what
/// the rules say.
#[test]
fn oci_markers_that_are_symlinks_only_mark() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let canary_root = s.path("canary");
    Canary::make(&canary_root);
    let c = canary_root.to_str().unwrap().to_string();
    let (l0, l1) = (s.mkdir("l0"), s.mkdir("l1"));
    LayerBuilder::new(&l1)
        .file("gone", "g")
        .file("dir/keep", "k")
        .file("dir/hidden", "h");
    LayerBuilder::new(&l0)
        .symlink(".wh.gone", &format!("{c}/file"))
        .dir("dir")
        .symlink("dir/.wh..wh..opq", &c)
        .file("dir/top", "t")
        .symlink(".wh.nothing", "/");
    let canary = Canary::arm(canary_root);
    let before = canary.state();
    let (u, w) = (s.mkdir("u"), s.mkdir("w"));
    let m = PlyfsMount::new(
        &format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            l0.display(),
            l1.display(),
            u.display(),
            w.display()
        ),
        &s.path("mnt"),
    );
    let names = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&m.mnt), ["dir"]);
    assert_eq!(names(&m.mnt.join("dir")), ["top"]);
    assert!(std::fs::symlink_metadata(m.mnt.join("gone")).is_err());
    std::fs::write(m.mnt.join("gone"), "new").unwrap();
    std::fs::remove_dir_all(m.mnt.join("dir")).unwrap();
    std::fs::create_dir(m.mnt.join("dir")).unwrap();
    assert_eq!(names(&m.mnt.join("dir")), Vec::<String>::new());
    drop(m);
    assert_eq!(canary.state(), before, "the canary changed");
}

/// Layer roots given as symlinks are followed (container storage's
/// `l/SHORTID` links), and nothing below them is: a lower whose root is a
/// link works, a lower whose directory is a link to another layer's
/// directory shows the link.
#[test]
fn layer_root_links_are_followed_and_nothing_below() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let canary_root = s.path("canary");
    Canary::make(&canary_root);
    let real = s.mkdir("real");
    LayerBuilder::new(&real)
        .file("a/f", "f")
        .symlink("b", canary_root.to_str().unwrap());
    std::os::unix::fs::symlink(&real, s.path("link")).unwrap();
    let canary = Canary::arm(canary_root);
    let before = canary.state();
    let (u, w) = (s.mkdir("u"), s.mkdir("w"));
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.path("link").display(),
        u.display(),
        w.display()
    );
    let m = PlyfsMount::new(&opts, &s.path("mnt"));
    assert_eq!(std::fs::read_to_string(m.mnt.join("a/f")).unwrap(), "f");
    let b = std::fs::symlink_metadata(m.mnt.join("b")).unwrap();
    assert!(b.file_type().is_symlink());
    // lchown copies the link up; the canary keeps its owner.
    let root = plyfs_sys::fs::open_path(&m.mnt, libc::O_PATH | libc::O_DIRECTORY).unwrap();
    plyfs_sys::fs::fchownat(root.as_fd(), OsStr::new("b"), 9, 9).unwrap();
    drop(root);
    drop(m);
    assert!(
        std::fs::symlink_metadata(u.join("b"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(canary.state(), before, "the canary changed");
}

/// The lower of the forged-marker tests: directories and files for each
/// forged upper object to stand over.
fn plain_lower(dir: &Path, i: usize) {
    let l = LayerBuilder::new(dir);
    if i > 0 {
        l.file("deep/a/f", "bottom");
        return;
    }
    for n in 1..=12 {
        l.file(&format!("e{n}/in"), "in");
        l.file(&format!("f{n}"), "lower");
    }
    l.file("hl", "hard")
        .hardlink("hl", "hl2")
        .dir("a/a/a")
        .file("m1/in", "in")
        .file("m2", "four");
}

/// Upper objects with forged values, as (name, is a directory, attribute
/// suffix after `NS.overlay.`, value).
fn forged_values(long: &[u8], deep: &[u8]) -> Vec<(String, bool, &'static str, Vec<u8>)> {
    let mut v: Vec<(String, bool, &'static str, Vec<u8>)> = Vec::new();
    let redirects: [&[u8]; 12] = [
        b"/../canary",
        b"..",
        b".",
        b"/e1//x",
        b"/e2\0",
        b"/e3\0/../../x",
        b"/",
        b"\0e4",
        b"",
        b"e5/in",
        long,
        deep,
    ];
    for (i, r) in redirects.iter().enumerate() {
        v.push((format!("e{}", i + 1), true, "redirect", r.to_vec()));
    }
    let origins: [&[u8]; 5] = [
        b"\x00\xfb",
        b"\x00\xfb\x1d\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18",
        b"\x00\xfb\x1e\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        b"",
    ];
    for (i, o) in origins.iter().enumerate() {
        v.push((format!("f{}", i + 1), false, "origin", o.to_vec()));
    }
    // Metacopy: no data anywhere, an odd value, a redirect to nothing,
    // over a lower directory.
    v.push(("mc-none".into(), false, "metacopy", Vec::new()));
    v.push(("m2".into(), false, "metacopy", b"\xde\xad\xbe\xef".to_vec()));
    v.push(("f7".into(), false, "metacopy", Vec::new()));
    v.push(("f7".into(), false, "redirect", b"/nonexistent".to_vec()));
    v.push(("m1/in".into(), false, "metacopy", Vec::new()));
    // Opaque and impure values other than the one byte that counts.
    for (i, val) in [&b"n"[..], b"yes", b"", b"x", b"y\0", b"Y"]
        .iter()
        .enumerate()
    {
        let name = ["o-n", "o-yes", "o-empty", "o-x", "o-ynul", "o-Y"][i];
        v.push((name.into(), true, "opaque", val.to_vec()));
        v.push((name.into(), true, "impure", val.to_vec()));
    }
    // Whiteout attributes on what is no whiteout, and on what is.
    v.push(("f8".into(), false, "whiteout", b"zz".to_vec()));
    v.push(("w-empty".into(), false, "whiteout", b"anything".to_vec()));
    v.push(("e6".into(), true, "whiteout", Vec::new()));
    v
}

/// Forges `values` in namespace `ns` (`trusted` or `user`) on both sides'
/// uppers; a file named "…" gets 4 bytes.
fn forge_all(t: &Twin, ns: &str, values: &[(String, bool, &'static str, Vec<u8>)]) {
    for (name, dir, attr, value) in values {
        forge(t, name, *dir, 4, &format!("{ns}.overlay.{attr}"), value);
    }
}

fn forged_names(values: &[(String, bool, &'static str, Vec<u8>)]) -> Vec<String> {
    let mut names: Vec<String> = values.iter().map(|v| v.0.clone()).collect();
    names.dedup();
    names
}

/// Every forged marker value in the upper, `trusted.overlay.*`: each
/// object reads as the kernel reads it — the same errno for the same
/// object, or the value ignored where the kernel ignores it — and the
/// mount serves on.
#[test]
fn forged_markers_read_as_the_kernel_reads_them() {
    if !require_mount_privileges() {
        return;
    }
    let mut t = twin(
        2,
        "metacopy=on",
        "redirect_dir=on,index=on,metacopy=on",
        plain_lower,
    );
    t.unmount();
    let long = [b"/".to_vec(), vec![b'b'; 300]].concat();
    // 1,000 components (what ext4 stores: 4 KiB); 10,000 are tried on
    // tmpfs below.
    let deep = b"/a".repeat(1000);
    let values = forged_values(&long, &deep);
    forge_all(&t, "trusted", &values);
    t.mount();
    let names = forged_names(&values);
    let mut ops = reads(&names.iter().map(String::as_str).collect::<Vec<_>>());
    ops.extend([
        Op::Write("m2".into(), 0, b"w".to_vec()),
        Op::Read("m2".into()),
        Op::Rename("e10".into(), "e10b".into(), 0),
        Op::ReadDir("e10b".into()),
        Op::Create("o-yes/new".into(), 0o644),
        Op::ReadDir("o-yes".into()),
        Op::Rmdir("e11".into()),
        Op::Stat("deep/a/f".into()),
        Op::Remount,
    ]);
    ops.extend(reads(&names.iter().map(String::as_str).collect::<Vec<_>>()));
    let diffs = outcomes(&mut t, &ops);
    assert!(diffs.is_empty(), "outcomes differ:\n{}", diffs.join("\n"));
}

/// The same values in `user.overlay.*`, the kernel mounting with
/// `userxattr` (which follows no redirects and no metacopy: those are
/// left out).
#[test]
fn forged_user_markers_read_as_the_kernel_reads_them() {
    if !require_mount_privileges() {
        return;
    }
    let mut t = twin(2, "userxattr", "userxattr,index=on", plain_lower);
    t.unmount();
    let values: Vec<_> = forged_values(b"", b"")
        .into_iter()
        .filter(|v| v.2 != "redirect" && v.2 != "metacopy")
        .collect();
    forge_all(&t, "user", &values);
    t.mount();
    let names = forged_names(&values);
    let ops = reads(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let diffs = outcomes(&mut t, &ops);
    assert!(diffs.is_empty(), "outcomes differ:\n{}", diffs.join("\n"));
}

/// Persistent link counts of an indexed hard link, forged in every over-
/// and underflowing form: the count the kernel shows, never a wrapped one.
#[test]
fn forged_link_counts_read_as_the_kernel_reads_them() {
    if !require_mount_privileges() {
        return;
    }
    // Both uppers written by the kernel, so that the real link counts the
    // forged ones are relative to are the same on both sides.
    let mut t = Twin::with_config(
        TwinConfig {
            nlowers: 1,
            kernel_opts: "redirect_dir=on,index=on".into(),
            p_starts_as_kernel: true,
            ..TwinConfig::default()
        },
        |dir, i, _| plain_lower(dir, i),
    );
    // A third name: the kernel copies hl up, into the index, with a count.
    t.run(Op::Link("hl".into(), "hl3".into()));
    t.handover();
    let mut diffs = Vec::new();
    for value in [
        &b"L+9223372036854775807"[..],
        b"L-9223372036854775808",
        b"U+4294967295",
        b"L+2147483647",
        b"L-2147483648",
        b"U-2147483648",
        b"U-100",
        b"U-3",
        b"L-2",
        b"U+1\n",
        b"U+1\n\n",
        b"L+000000000001",
        b"L+0x1",
        b"L++1",
        b"U 1",
        b"garbage",
        b"",
        b"U+0\0junk",
    ] {
        t.unmount();
        for side in ["k", "p"] {
            let p = t.scratch.path(&format!("{side}/upper/hl3"));
            xattr::set(&p, "trusted.overlay.nlink", value).unwrap();
        }
        t.mount();
        for name in ["hl", "hl2", "hl3"] {
            let (k, p) = t.both(&Op::Stat(name.into()));
            if k != p {
                diffs.push(format!(
                    "{:?} {name}: kernel {k:?}, plyfs {p:?}",
                    String::from_utf8_lossy(value)
                ));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "link counts differ:\n{}",
        diffs.join("\n")
    );
}

/// A redirect of 10,000 components (40 KiB: on tmpfs, whose attributes
/// take it), and one whose walk goes 2,000 directories deep: the
/// kernel's answer, in bounded time.
#[test]
fn a_redirect_of_ten_thousand_components() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let fs = TmpfsMount::new("size=64m", &s.path("fs"));
    let base = fs.mnt.clone();
    let mut outcomes_seen = Vec::new();
    for (kind, mnt) in [("k", "kmnt"), ("p", "pmnt")] {
        let l = base.join(format!("{kind}/l"));
        let u = base.join(format!("{kind}/u"));
        let w = base.join(format!("{kind}/w"));
        for d in [&l, &u, &w] {
            std::fs::create_dir_all(d).unwrap();
        }
        // a/a/a/... 2,000 deep in the lower, made through descriptors.
        let mut cur = plyfs_sys::fs::open_path(&l, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        for _ in 0..2000 {
            let _ = plyfs_sys::fs::mkdirat(cur.as_fd(), OsStr::new("a"), 0o755);
            cur = plyfs_sys::fs::openat(
                cur.as_fd(),
                OsStr::new("a"),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )
            .unwrap();
        }
        for (name, value) in [
            ("r10k", b"/a".repeat(10_000)),
            ("r2k", b"/a".repeat(2000)),
            ("rmiss", [b"/nothere".to_vec(), b"/a".repeat(9000)].concat()),
        ] {
            std::fs::create_dir(u.join(name)).unwrap();
            xattr::set(u.join(name), "trusted.overlay.redirect", &value).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        );
        let started = std::time::Instant::now();
        let seen: Vec<String> = {
            let _k;
            let _p;
            let m = s.path(mnt);
            if kind == "k" {
                _k = KernelMount::new(&format!("{opts},redirect_dir=on,index=off"), &m);
            } else {
                _p = PlyfsMount::new(&opts, &m);
            }
            ["r10k", "r2k", "rmiss"]
                .iter()
                .map(|n| {
                    let p = m.join(n);
                    let st = std::fs::symlink_metadata(&p).map(|m| m.is_dir());
                    let list = std::fs::read_dir(&p).map(|r| r.count());
                    format!("{n}: {st:?} {list:?}").replace("Os { code", "errno")
                })
                .collect()
        };
        assert!(started.elapsed().as_secs() < 60, "{kind}: too slow");
        outcomes_seen.push(seen);
    }
    assert_eq!(
        outcomes_seen[0], outcomes_seen[1],
        "kernel (left), plyfs (right)"
    );
}

/// postcard's encoding, for forging a saved lower index by hand: LEB128
/// for unsigned integers, zigzag for signed ones, lengths before
/// sequences, fields in order.
struct Postcard(Vec<u8>);

impl Postcard {
    fn uint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }

    fn int(&mut self, v: i64) -> &mut Self {
        self.uint(((v << 1) ^ (v >> 63)) as u64)
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.uint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
}

/// The saved lower index (`WORK/plyfs-lower.index`) truncated, garbage,
/// claiming huge lengths, or forged with names that lead out of the
/// directory (`..`, `/`): the next mount rebuilds it and shows the tree
/// it showed, and no forged name is listed or looked up.
#[test]
fn forged_lower_index_is_rebuilt_not_trusted() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let canary_root = s.path("canary");
    Canary::make(&canary_root);
    let (l0, l1) = (s.mkdir("l0"), s.mkdir("l1"));
    LayerBuilder::new(&l0).file("a/x", "x").file("top", "t");
    LayerBuilder::new(&l1)
        .file("a/y", "y")
        .file("bottom", "b")
        .dir("d/e");
    let canary = Canary::arm(canary_root);
    let before = canary.state();
    let (u, w) = (s.mkdir("u"), s.mkdir("w"));
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l0.display(),
        l1.display(),
        u.display(),
        w.display()
    );
    let mnt = s.path("mnt");
    let tree = {
        let m = PlyfsMount::new(&opts, &mnt);
        snapshot(&m.mnt)
    };
    let file = w.join(plyfs_core::LOWER_INDEX_FILE);
    let saved = std::fs::read(&file).expect("the mount saved its lower index");
    assert!(saved.len() > 16);

    // A record of l0's root that lists names leading out of it.
    let root = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.dev(), m.ino(), m)
    };
    let (dev0, ino0, m0) = root(&l0);
    let (dev1, ino1, _) = root(&l1);
    let mut names = Vec::new();
    let mut entries = Vec::new();
    for (n, kind) in [
        (&b"../canary"[..], libc::DT_DIR),
        (b"..", libc::DT_DIR),
        (b"a/../../canary", libc::DT_DIR),
        (b"top", libc::DT_REG),
        (b"ghost", libc::DT_REG),
    ] {
        names.extend_from_slice(n);
        entries.push((names.len() as u64, kind, 4242u64));
    }
    let mut forged = Postcard(Vec::new());
    forged.uint(2).uint(2);
    forged.uint(dev0).uint(ino0).uint(dev1).uint(ino1);
    forged.uint(1); // one record
    forged.uint(0).uint(dev0).uint(ino0);
    forged.int(m0.mtime()).int(m0.mtime_nsec());
    forged.int(m0.ctime()).int(m0.ctime_nsec());
    forged.0.push(0); // not OCI-opaque
    forged.bytes(&names);
    forged.uint(entries.len() as u64);
    for (end, kind, ino) in entries {
        forged.uint(end);
        forged.0.push(kind);
        forged.uint(ino);
    }
    let mut huge = Postcard(Vec::new());
    huge.uint(2).uint(u64::MAX >> 1);
    let mut huge_names = Postcard(Vec::new());
    huge_names.uint(2).uint(2);
    huge_names.uint(dev0).uint(ino0).uint(dev1).uint(ino1);
    huge_names.uint(1).uint(0).uint(dev0).uint(ino0);
    huge_names.int(m0.mtime()).int(m0.mtime_nsec());
    huge_names.int(m0.ctime()).int(m0.ctime_nsec());
    huge_names.0.push(0);
    huge_names.uint(u64::MAX >> 2);
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", saved[..saved.len() / 2].to_vec()),
        ("one byte", saved[..1].to_vec()),
        ("empty", Vec::new()),
        ("garbage", garbage),
        ("huge layer count", huge.0),
        ("huge name buffer", huge_names.0),
        ("names out of the directory", forged.0),
        ("as saved", saved.clone()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&file, &bytes).unwrap();
        let m = PlyfsMount::new(&opts, &mnt);
        let seen = snapshot(&m.mnt);
        let d = diff_trees(&tree, &seen, Compare::default());
        assert!(d.is_empty(), "{what}: the tree differs:\n{}", d.join("\n"));
        let err = m.unmount();
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    assert_eq!(canary.state(), before, "the canary changed");
}

/// Override-stat values (`user.containers.override_stat`) forged on the
/// objects of an override layer: mode 07777, device types on regular
/// files, types a real directory or symlink cannot take, huge and invalid
/// ids, non-numbers. Readable values are reported as the attribute says
/// (within what the real type allows); the others leave the real owner
/// and mode.
#[test]
fn forged_override_stat_values() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l = s.mkdir("l");
    let ovr = "user.containers.override_stat";
    let b = LayerBuilder::new(&l);
    b.xattr(".", ovr, b"0:0:0755:dir");
    let cases: [(&str, &[u8], bool); 14] = [
        ("wide-major", b"0:0:0644:char-4097-1", false),
        ("widest-minor", b"0:0:0600:char-4095-1048575", false),
        ("all-bits", b"1:2:7777:file", false),
        ("chardev", b"0:0:0644:char-1-3", false),
        ("blockdev", b"0:0:0600:block-4294967295-4294967295", false),
        ("fake-dir", b"0:0:0700:dir", false),
        ("dir-as-file", b"5:6:0711:file", true),
        ("dir-as-link", b"5:6:0711:symlink", true),
        ("uid-minus-one", b"4294967295:0:0644:file", false),
        ("uid-too-big", b"4294967296:0:0644:file", false),
        ("words", b"root:root:rw:file", false),
        ("empty", b"", false),
        (
            "long-mode",
            &[b"0:0:".to_vec(), vec![b'0'; 2000], b"644:file".to_vec()].concat(),
            false,
        ),
        ("nul", b"7:8:0640:file\0", false),
    ];
    for (name, value, dir) in &cases {
        if *dir {
            b.dir(name);
        } else {
            b.file_mode(name, "data", 0o640);
        }
        b.xattr(name, ovr, value);
    }
    let m = PlyfsMount::new(&format!("lowerdir={}", l.display()), &s.path("mnt"));
    let st = |n: &str| std::fs::symlink_metadata(m.mnt.join(n)).unwrap();
    let show = |n: &str| {
        let md = st(n);
        (md.uid(), md.gid(), md.mode(), md.rdev())
    };
    let real_file = (0, 0, libc::S_IFREG | 0o640, 0);
    assert_eq!(show("all-bits"), (1, 2, libc::S_IFREG | 0o7777, 0));
    assert_eq!(
        show("chardev"),
        (0, 0, libc::S_IFCHR | 0o644, libc::makedev(1, 3))
    );
    // A device number the kernel cannot hold (cut to 32 bits, major 4097
    // would be /dev/mem's 1): the value is ignored.
    assert_eq!(show("blockdev"), real_file);
    assert_eq!(show("wide-major"), real_file);
    assert_eq!(
        show("widest-minor"),
        (0, 0, libc::S_IFCHR | 0o600, libc::makedev(4095, 0xfffff))
    );
    assert_eq!(show("fake-dir"), (0, 0, libc::S_IFREG | 0o700, 0));
    assert_eq!(show("dir-as-file").2, libc::S_IFDIR | 0o711);
    assert_eq!(show("dir-as-link").2, libc::S_IFDIR | 0o711);
    for n in ["uid-minus-one", "uid-too-big", "words", "empty"] {
        assert_eq!(show(n), real_file, "{n}");
    }
    assert_eq!(show("long-mode"), (0, 0, libc::S_IFREG | 0o644, 0));
    assert_eq!(show("nul"), (7, 8, libc::S_IFREG | 0o640, 0));
    // Reading what shows as a device never opens one of the host's.
    let err = m.unmount();
    assert!(!err.contains("panicked"), "{err}");
}

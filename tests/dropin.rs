//! plyfs as a drop-in for fuse-overlayfs: how the mount presents itself
//! (`fuse.plyfs`, the source as its name, fuse-overlayfs's implicit
//! options), mount.fuse3's command line (`mount -t fuse.plyfs`, fstab), id
//! mappings, the CLI's version line, completions and manual, and the places
//! users run it: layers on another FUSE filesystem, an upper on tmpfs,
//! `l/SHORTID` layer links, a user namespace on an overlay root, layers
//! that must be released the moment the union is unmounted.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// (source, fstype, mount options, super options) of the mount at `mnt`.
fn mountinfo(mnt: &Path) -> Option<(String, String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        if f.get(4) != Some(&want.as_str()) {
            return None;
        }
        Some((
            f.get(sep + 2)?.to_string(),
            f.get(sep + 1)?.to_string(),
            f.get(5)?.to_string(),
            f.get(sep + 3)?.to_string(),
        ))
    })
}

fn opts_rw(s: &Scratch) -> String {
    format!(
        "{},upperdir={},workdir={}",
        lowerdir(&[&s.path("l1")]),
        s.mkdir("upper").display(),
        s.mkdir("work").display()
    )
}

fn run_as(uid: u32, cmd: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", cmd])
        .uid(uid)
        .gid(uid)
        .output()
        .expect("run sh")
}

#[test]
fn the_mount_is_fuse_plyfs_named_by_its_source_with_fuse_overlayfs_defaults() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("l1")).file("f", "x");
    let ply = PlyfsMount::new(
        &format!("{},fsname=layers:abc", opts_rw(&s)),
        &s.path("mnt"),
    );
    let (source, fstype, mopts, sopts) = mountinfo(&ply.mnt).expect("in mountinfo");
    assert_eq!(
        (source.as_str(), fstype.as_str()),
        ("layers:abc", "fuse.plyfs")
    );
    // As root: default_permissions,allow_other,suid,noatime.
    let m: Vec<&str> = mopts.split(',').collect();
    assert!(m.contains(&"noatime") && !m.contains(&"nosuid"), "{mopts}");
    let so: Vec<&str> = sopts.split(',').collect();
    assert!(
        so.contains(&"default_permissions") && so.contains(&"allow_other"),
        "{sopts}"
    );
}

/// A container process of a non-root uid reads and writes its own files in
/// a root mount (fuse-overlayfs's allow_other default), and is refused what
/// the modes refuse it (default_permissions).
#[test]
fn a_root_mount_serves_every_user_by_the_modes() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file("etc/motd", "hello\n")
        .file_mode("etc/shadow", "secret", 0o600)
        .file_mode("home/u/notes", "mine", 0o600);
    for p in ["home/u", "home/u/notes"] {
        std::os::unix::fs::chown(s.path("l1").join(p), Some(1000), Some(1000)).unwrap();
    }
    std::fs::set_permissions(s.path("l1/home/u"), PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::set_permissions(s.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let ply = PlyfsMount::new(&opts_rw(&s), &s.path("mnt"));
    let m = ply.mnt.display();
    let out = run_as(
        1000,
        &format!(
            "cat {m}/etc/motd && cat {m}/home/u/notes && echo new > {m}/home/u/new && ls {m}/home/u"
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nminenew\nnotes\n"
    );
    assert_eq!(
        std::fs::metadata(s.path("upper/home/u/new")).unwrap().uid(),
        1000
    );
    let denied = run_as(1000, &format!("cat {m}/etc/shadow"));
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("Permission denied"));
}

/// mount.fuse3 runs the program found as `plyfs` in its search path; the
/// test links the built binary there for the time of the test.
struct HelperLink(PathBuf);

impl HelperLink {
    fn install() -> HelperLink {
        let link = PathBuf::from("/usr/local/bin/plyfs");
        if let Ok(existing) = std::fs::read_link(&link) {
            assert_eq!(existing, Path::new(PLYFS), "another plyfs is installed");
        } else if link.exists() {
            panic!("{} exists and is not the binary under test", link.display());
        } else {
            std::os::unix::fs::symlink(PLYFS, &link).expect("link plyfs");
        }
        HelperLink(link)
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Unmounts what a test mounted through mount(8), also on failure.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        for lazy in [false, true] {
            if mountinfo(self.0).is_none() {
                return;
            }
            let mut c = Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            let _ = c.arg(self.0).status();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn mount_t_fuse_plyfs_fstab_and_the_mount_fuse3_argv() {
    if !require_mount_privileges() {
        return;
    }
    if !Path::new("/sbin/mount.fuse3").exists() {
        assert!(std::env::var("CI").is_err(), "CI must install fuse3");
        eprintln!("SKIPPED: mount.fuse3 is not installed");
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("l1")).file("f", "from l1");
    let opts = opts_rw(&s);
    let mnt = s.mkdir("mnt");
    let _link = HelperLink::install();

    // mount -t fuse.plyfs SOURCE MOUNTPOINT -o OPTS
    {
        let _u = Unmount(&mnt);
        let st = Command::new("mount")
            .args(["-t", "fuse.plyfs", "img-one", "-o", &opts])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success());
        let (source, fstype, ..) = mountinfo(&mnt).expect("mounted");
        assert_eq!(
            (source.as_str(), fstype.as_str()),
            ("img-one", "fuse.plyfs")
        );
        std::fs::write(mnt.join("g"), "written").unwrap();
        assert_eq!(std::fs::read_to_string(mnt.join("f")).unwrap(), "from l1");
        assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    }
    // An fstab line.
    let fstab = s.path("fstab");
    std::fs::write(
        &fstab,
        format!("img-two {} fuse.plyfs {opts},noauto 0 0\n", mnt.display()),
    )
    .unwrap();
    {
        let _u = Unmount(&mnt);
        let st = Command::new("mount")
            .arg("-T")
            .arg(&fstab)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(mountinfo(&mnt).expect("mounted").0, "img-two");
        assert_eq!(std::fs::read_to_string(mnt.join("g")).unwrap(), "written");
        assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    }
    // The form itself: plyfs SOURCE MOUNTPOINT -o OPTS.
    {
        let _u = Unmount(&mnt);
        let (code, _, err) = plyfs(&[
            OsStr::new("img-three"),
            mnt.as_os_str(),
            OsStr::new("-o"),
            OsStr::new(&opts),
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(mountinfo(&mnt).expect("mounted").0, "img-three");
    }
}

#[test]
fn id_mappings_translate_every_request_and_reply() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    let l1 = LayerBuilder::new(s.path("l1"));
    l1.file("root", "0").file("one", "1").file("far", "far");
    let own =
        |p: &str, id: u32| std::os::unix::fs::lchown(s.path("l1").join(p), Some(id), Some(id));
    own("one", 1).unwrap();
    own("far", 70000).unwrap();
    let map = "0:1000:1:1:110000:65536";
    let opts = format!("{},uidmapping={map},gidmapping={map}", opts_rw(&s));
    let ply = PlyfsMount::new(&opts, &s.path("mnt"));
    let ids = |p: &str| {
        let m = std::fs::symlink_metadata(ply.mnt.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(ids("root"), (1000, 1000));
    assert_eq!(ids("one"), (110000, 110000));
    // No mapping: the overflow id.
    assert_eq!(ids("far"), (65534, 65534));

    // chown stores the id the mapping leads back to.
    std::os::unix::fs::chown(ply.mnt.join("root"), Some(110004), Some(110005)).unwrap();
    assert_eq!(ids("root"), (110004, 110005));
    let on_disk = std::fs::metadata(s.path("upper/root")).unwrap();
    assert_eq!((on_disk.uid(), on_disk.gid()), (5, 6));
    // An id with no mapping cannot be stored.
    let err = std::os::unix::fs::chown(ply.mnt.join("one"), Some(999), None).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));

    // What a (mapped) caller creates belongs to its id in the layers.
    std::fs::set_permissions(s.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.path("upper"), PermissionsExt::from_mode(0o777)).unwrap();
    let out = run_as(1000, &format!("touch {}/made", ply.mnt.display()));
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(ids("made"), (1000, 1000));
    let m = std::fs::metadata(s.path("upper/made")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
}

#[test]
fn squash_options_own_everything() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("l1")).file("f", "x").dir("d");
    std::os::unix::fs::lchown(s.path("l1/f"), Some(5000), Some(5001)).unwrap();
    let ply = PlyfsMount::new(
        &format!("{},squash_to_root", lowerdir(&[&s.path("l1")])),
        &s.path("mnt"),
    );
    for p in ["f", "d", ""] {
        let m = std::fs::symlink_metadata(ply.mnt.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{p}");
    }
    drop(ply);
    // squash_to_uid/gid win over squash_to_root.
    let ply = PlyfsMount::new(
        &format!(
            "{},squash_to_uid=7,squash_to_root,squash_to_gid=8",
            lowerdir(&[&s.path("l1")])
        ),
        &s.path("mnt"),
    );
    let m = std::fs::symlink_metadata(ply.mnt.join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 8));
}

#[test]
fn version_line_completions_and_manual() {
    let (code, out, _) = plyfs(&[OsStr::new("--version")]);
    assert_eq!(code, 0);
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("plyfs: version "), "{out}");
    let version = first.trim_start_matches("plyfs: version ");
    assert!(
        version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "{first}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = plyfs(&[OsStr::new("completions"), OsStr::new(shell)]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("plyfs") && out.len() > 200, "{shell}: {out}");
    }
    let (code, out, _) = plyfs(&[OsStr::new("man")]);
    assert_eq!(code, 0);
    assert!(
        out.contains(".TH plyfs") && out.contains("lowerdir"),
        "{out}"
    );
}

/// A lower on another FUSE filesystem (squashfuse, as lazily pulled
/// images are), an upper on tmpfs, layers named through `l/SHORTID`
/// symbolic links as containers-storage passes them.
#[test]
fn fuse_lower_tmpfs_upper_and_layer_links() {
    if !require_mount_privileges() {
        return;
    }
    for tool in ["mksquashfs", "squashfuse"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                std::env::var("CI").is_err(),
                "CI must install squashfs-tools and squashfuse"
            );
            eprintln!("SKIPPED: {tool} is not installed");
            return;
        }
    }
    let s = Scratch::new();
    let src = LayerBuilder::new(s.path("src"));
    src.file("etc/os", "squash")
        .file("usr/bin/tool", "#!/bin/sh\n")
        .dir("var/empty")
        .symlink("lnk", "etc/os");
    let img = s.path("layer.sqfs");
    let st = Command::new("mksquashfs")
        .arg(s.path("src"))
        .arg(&img)
        .args(["-quiet", "-noappend"])
        .status()
        .unwrap();
    assert!(st.success());
    let sq = s.mkdir("sq");
    let st = Command::new("squashfuse")
        .arg(&img)
        .arg(&sq)
        .status()
        .unwrap();
    assert!(st.success());
    let _sq = Unmount(&sq);
    LayerBuilder::new(s.path("top")).file("etc/extra", "top");
    // Layer links, as in containers-storage's overlay/l/.
    let l = s.mkdir("l");
    std::os::unix::fs::symlink(&sq, l.join("ABCDEFGH")).unwrap();
    std::os::unix::fs::symlink(s.path("top"), l.join("IJKLMNOP")).unwrap();
    let tmp = TmpfsMount::new("size=64m", &s.path("tmp"));
    for d in ["upper", "work"] {
        std::fs::create_dir(tmp.mnt.join(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l.join("IJKLMNOP").display(),
        l.join("ABCDEFGH").display(),
        tmp.mnt.join("upper").display(),
        tmp.mnt.join("work").display()
    );
    {
        let ply = PlyfsMount::new(&opts, &s.path("mnt"));
        let m = &ply.mnt;
        assert_eq!(std::fs::read_to_string(m.join("lnk")).unwrap(), "squash");
        append(&m.join("etc/os"), b" changed");
        std::fs::remove_file(m.join("usr/bin/tool")).unwrap();
        std::fs::rename(m.join("var"), m.join("var2")).unwrap();
        std::fs::write(m.join("etc/new"), "n").unwrap();
    }
    let ply = PlyfsMount::new(&opts, &s.path("mnt"));
    let m = &ply.mnt;
    assert_eq!(
        std::fs::read_to_string(m.join("etc/os")).unwrap(),
        "squash changed"
    );
    assert!(!m.join("usr/bin/tool").exists() && !m.join("var").exists());
    assert!(m.join("var2/empty").is_dir());
    let mut names: Vec<String> = std::fs::read_dir(m.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["extra", "new", "os"]);
}

/// plyfs inside a user namespace, on layers that live on an overlay
/// filesystem (a container's root): neither trusted attributes nor char
/// whiteouts can be made there, and the rootless formats must carry it.
#[test]
fn a_user_namespace_on_an_overlay_root() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    LayerBuilder::new(s.path("base/L"))
        .file("d/f", "hello")
        .file("g", "g")
        .file("keep", "k");
    let (up, wk) = (s.mkdir("up"), s.mkdir("wk"));
    let root = KernelMount::new(
        &format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path("base").display(),
            up.display(),
            wk.display()
        ),
        &s.path("root"),
    );
    for d in ["U", "W", "M"] {
        std::fs::create_dir(root.mnt.join(d)).unwrap();
    }
    let r = root.mnt.display();
    let opts = format!("lowerdir={r}/L,upperdir={r}/U,workdir={r}/W");
    let script = format!(
        "set -e\n{PLYFS} -o {opts} {r}/M\ntrap 'umount {r}/M' EXIT\ncd {r}/M\n\
         rm g\necho more >> d/f\nmv d d2\nmkdir n\nls\ncat d2/f\ncd /\n"
    );
    let run = |script: &str| {
        let out = Command::new("unshare")
            .args([
                "-U",
                "-r",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(run(&script), "d2\nkeep\nn\nhellomore\n");
    // Remounted (the kernel flushed times of the deleted file meanwhile):
    // the same tree.
    let again = format!(
        "set -e\n{PLYFS} -o {opts} {r}/M\ntrap 'umount {r}/M' EXIT\nls {r}/M\ncat {r}/M/d2/f\n"
    );
    assert_eq!(run(&again), "d2\nkeep\nn\nhellomore\n");

    // An overlayfs makes no char whiteouts: the upper holds the kernel's
    // xattr whiteouts (no OCI files), which the kernel reads in userxattr
    // mode (here with the upper as a lower over the same layer).
    let u = root.mnt.join("U");
    for gone in ["g", "d"] {
        let st = std::fs::symlink_metadata(u.join(gone)).unwrap();
        assert!(st.is_file() && st.len() == 0, "{gone}");
        assert!(
            xattr::get(u.join(gone), "user.overlay.whiteout")
                .unwrap()
                .is_some(),
            "{gone}"
        );
    }
    assert!(
        !std::fs::read_dir(&u).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".wh."))
    );
    let k = KernelMount::new(
        &format!("lowerdir={}:{r}/L,userxattr", u.display()),
        &s.path("kmnt"),
    );
    let mut names: Vec<String> = std::fs::read_dir(&k.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["d2", "keep", "n"]);
}

/// Once `umount` (or `fusermount3 -u`) returns, the layers are free: a
/// lower on its own tmpfs can be unmounted right away, as with
/// fuse-overlayfs.
#[test]
fn layers_are_released_when_the_union_is_unmounted() {
    if !require_mount_privileges() {
        return;
    }
    let s = Scratch::new();
    for (round, tool) in ["umount", "fusermount3 -u"].iter().enumerate() {
        let low = TmpfsMount::new("size=16m", &s.path(&format!("low{round}")));
        let lb = LayerBuilder::new(&low.mnt);
        for i in 0..50 {
            lb.file(&format!("d{}/f{i}", i % 5), "data");
        }
        let (up, wk) = (
            s.mkdir(&format!("up{round}")),
            s.mkdir(&format!("wk{round}")),
        );
        let mnt = s.mkdir(&format!("mnt{round}"));
        let _u = Unmount(&mnt);
        let (code, _, err) = plyfs(&[
            OsStr::new("-o"),
            OsStr::new(&format!(
                "lowerdir={},upperdir={},workdir={}",
                low.mnt.display(),
                up.display(),
                wk.display()
            )),
            mnt.as_os_str(),
        ]);
        assert_eq!(code, 0, "{err}");
        let walked = Command::new("sh")
            .args(["-c", &format!("find {m} -type f | xargs cat > /dev/null && echo x >> {m}/d0/f0 && cat {m}/d1/f1", m = mnt.display())])
            .output()
            .unwrap();
        assert!(walked.status.success());
        let mut cmd = tool.split(' ');
        let st = Command::new(cmd.next().unwrap())
            .args(cmd)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(st.success());
        let start = Instant::now();
        let freed = loop {
            let out = Command::new("umount").arg(&low.mnt).output().unwrap();
            if out.status.success() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(2) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        eprintln!("{tool}: lower free after {:?}", start.elapsed());
        assert!(freed, "the lower was still busy 2 s after {tool}");
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "the lower stayed busy {:?} after {tool}",
            start.elapsed()
        );
    }
}

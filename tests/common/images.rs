//! The images the image tests share (layers with every kind of entry,
//! archives of them), and running `plyfs` on a store: mounts that
//! always unmount, trees compared as podman shows them.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::cli::PLYFS;
use super::mounts::is_mounted;
use super::oci::{Comp, ImageSpec, LayerTar, Layout};
use super::scratch::Scratch;
use super::tree::{Compare, Tree, diff_trees};
use super::users::{
    TAR_CREATE, run_ok, tar_snapshot, unmount_all_under, wait_no_process_mentioning,
};

pub const A: &str = "localhost/plyfs-test/a:1";
pub const B: &str = "localhost/plyfs-test/b:1";

/// The shared base layer: owners, modes, set-ID bits, an xattr, a hard
/// link, symlinks, a device, a fifo, a deep tree.
pub fn base_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    // containers-storage shows a container's root as 0555 whatever the
    // image says; this image says the same.
    t.dir("./", 0o555, 0)
        .dir("etc/", 0o755, 0)
        .file("etc/motd", "hello\n", 0o644, 0)
        .file("etc/shadow", "root:*:1::::::\n", 0o600, 0)
        .dir("home/", 0o755, 0)
        .dir("home/user/", 0o700, 1000)
        .file("home/user/notes", "notes\n", 0o600, 1000)
        .dir("bin/", 0o755, 0)
        .file("bin/tool", "#!/bin/true\n", 0o755, 0)
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/sh", "tool")
        .dir("dev/", 0o755, 0)
        .chardev("dev/null", 1, 3)
        .dir("run/", 0o755, 0)
        .fifo("run/fifo")
        .dir("var/", 0o755, 0)
        .dir("var/old/", 0o755, 0)
        .file("var/old/a", "a\n", 0o644, 0)
        .dir("var/old/sub/", 0o755, 0)
        .file("var/old/sub/b", "b\n", 0o644, 0)
        .dir("opt/", 0o755, 0)
        .dir("opt/app/", 0o755, 0)
        .file("opt/app/config", "setting=1\n", 0o644, 0)
        .file("opt/app/data", "data\n", 0o644, 0)
        .file_xattr("srv-tagged", "tagged\n", "user.tag", b"v1")
        .file("usr-setuid", "suid\n", 0o4755, 0)
        // Parents the archive does not list.
        .file("deep/a/b/c/file", "deep\n", 0o644, 0);
    t.finish()
}

/// A second layer: a whiteout of a directory, an opaque directory, a
/// changed file, a new hard link.
pub fn second_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755, 0)
        .file("etc/motd", "hello v2\n", 0o644, 0)
        .dir("var/", 0o755, 0)
        .whiteout("var", "old")
        .dir("opt/app/", 0o750, 0)
        .opaque("opt/app")
        .file("opt/app/new", "new\n", 0o644, 0)
        .dir("new/", 0o755, 0)
        .file("new/one", "one\n", 0o644, 42)
        .hardlink("new/one-again", "new/one");
    t.finish()
}

/// A third: a whiteout of a symlink, a directory back where one was
/// deleted.
pub fn third_layer() -> Vec<u8> {
    let mut t = LayerTar::new();
    t.dir("bin/", 0o755, 0)
        .whiteout("bin", "sh")
        .dir("var/", 0o755, 0)
        .dir("var/old/", 0o700, 1234)
        .file("var/old/c", "c\n", 0o640, 1234);
    t.finish()
}

pub fn image_a() -> ImageSpec {
    ImageSpec {
        name: A.into(),
        layers: vec![
            (base_layer(), Comp::None),
            (second_layer(), Comp::Gzip),
            (third_layer(), Comp::Zstd),
        ],
    }
}

/// An image whose every file a plain user may read: what it shows of
/// others' files is what the mount reports from the override attribute.
pub fn readable_image() -> ImageSpec {
    let mut base = LayerTar::new();
    base.dir("./", 0o555, 0)
        .dir("etc/", 0o755, 0)
        .file("etc/motd", "hello\n", 0o644, 0)
        .dir("home/", 0o755, 1000)
        .file("home/notes", "notes\n", 0o644, 1000)
        .dir("bin/", 0o755, 0)
        .file("bin/tool", "tool\n", 0o4755, 0)
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/sh", "tool")
        .dir("dev/", 0o755, 0)
        .chardev("dev/null", 1, 3)
        .dir("deep/a/b/", 0o755, 0)
        .file("deep/a/b/f", "f\n", 0o644, 0)
        .dir("opt/app/", 0o755, 0)
        .file("opt/app/old", "old\n", 0o644, 0)
        // Where the user may change things.
        .dir("work/", 0o777, 0)
        .file("work/notes", "notes\n", 0o666, 0)
        .dir("work/deep/", 0o777, 0)
        .dir("work/deep/er/", 0o777, 0)
        .file("work/deep/er/f", "f\n", 0o644, 0)
        .dir("work/sub/", 0o777, 0)
        .file("work/sub/x", "x\n", 0o644, 0);
    let mut top = LayerTar::new();
    top.dir("opt/app/", 0o755, 0)
        .opaque("opt/app")
        .file("opt/app/new", "new\n", 0o644, 0)
        .whiteout("etc", "motd");
    ImageSpec {
        name: A.into(),
        layers: vec![(base.finish(), Comp::None), (top.finish(), Comp::Gzip)],
    }
}

pub fn image_b() -> ImageSpec {
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755, 0).file("etc/b-only", "b\n", 0o644, 0);
    ImageSpec {
        name: B.into(),
        layers: vec![(base_layer(), Comp::None), (t.finish(), Comp::Gzip)],
    }
}

/// A scratch directory every user may traverse.
pub fn open_scratch() -> Scratch {
    let s = Scratch::new();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s
}

pub fn write_archive(s: &Scratch, name: &str, images: &[ImageSpec]) -> PathBuf {
    let p = s.path(name);
    Layout::oci(images, |_, _, _| {}).write_tar(&p);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

/// `plyfs ARGS` with `--store STORE`, which must succeed; its stdout.
pub fn plyfs_ok(store: &Path, args: &[&OsStr]) -> String {
    let mut c = Command::new(PLYFS);
    c.args(args).arg("--store").arg(store);
    run_ok(&mut c, &format!("plyfs {args:?}"))
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// A mount made by `plyfs mount` (which returns once it is live);
/// dropping it unmounts and waits for the daemon.
pub struct BackgroundMount(pub PathBuf);

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        unmount_all_under(&self.0);
        wait_no_process_mentioning(&self.0.to_string_lossy(), Duration::from_secs(10));
    }
}

pub fn mount_image(store: &Path, image: &str, upper: Option<&Path>, mp: &Path) -> BackgroundMount {
    std::fs::create_dir_all(mp).unwrap();
    let mut c = Command::new(PLYFS);
    c.args(["mount", "--store"])
        .arg(store)
        .args(["--image", image]);
    if let Some(u) = upper {
        c.arg("--upper").arg(u);
    }
    c.arg(mp);
    run_ok(&mut c, "plyfs mount --image");
    assert!(is_mounted(mp));
    BackgroundMount(mp.to_path_buf())
}

/// The tree at `dir` as root reads it, copied to `dest` and snapshotted.
pub fn tree_of(dir: &Path, dest: &Path) -> Tree {
    tar_snapshot(
        Command::new("sh")
            .args(["-c", &format!("cd \"$1\" && {TAR_CREATE}"), "sh"])
            .arg(dir),
        dest,
    )
}

pub fn same(what: &str, a: &Tree, b: &Tree) {
    let how = Compare {
        dir_nlink: false,
        ..Compare::default()
    };
    let d = diff_trees(a, b, how);
    assert!(d.is_empty(), "{what}:\n{}", d.join("\n"));
}

/// The changes a container makes: create, modify, delete, rename a
/// directory with lower content, a directory where one was deleted, a
/// hard link, chmod and chown.
pub const CHANGES: &str = r#"set -eu
echo new > newfile
echo more >> etc/motd
rm etc/shadow
rm -r deep
mv opt/app opt/app-renamed
rm -r var/old && mkdir var/old && echo fresh > var/old/fresh
ln newfile made-hardlink
chmod 0700 srv-tagged
chown 7:7 etc/motd
mkdir -p made/sub && echo m > made/sub/f && ln -s ../newfile made/link
echo changed >> bin/tool
chmod 0750 new/one
"#;

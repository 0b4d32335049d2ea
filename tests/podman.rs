//! plyfs as a drop-in replacement for fuse-overlayfs: as the
//! `mount_program` of containers-storage under root and rootless podman,
//! as a plain user mounting through fusermount3, and under mount(8)'s
//! `mount -t fuse.plyfs`.
//!
//! Every scenario runs the same way with fuse-overlayfs (the `…_fuse_overlayfs`
//! tests, which check the harness itself) and with plyfs, and every tree is
//! compared with the same steps done on a plain directory, and with the
//! same steps through the kernel's overlay driver (root) or fuse-overlayfs
//! (rootless).
//!
//! The tests create what they need: a user `plyfs-ci` with subordinate ids,
//! /dev/fuse open to all (0666), private podman configurations and storage
//! in temporary directories. They need root, podman, uidmap, fuse3 and
//! fuse-overlayfs; under CI=true a missing one fails the test.
//!
//! `PLYFS_TEST_MOUNT_ARGV=1` also logs (and prints) the command lines
//! containers-storage gives plyfs; `PLYFS_TEST_BINARY=PATH` tests another
//! plyfs build than this one.

mod common;

use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::podman::{Mode, MountProgram, PodmanStore};
use common::users::{
    TAR_CREATE, UserMounts, ci_user, kill_processes_mentioning, mount_at, require_tools, run,
    run_ok, tar_snapshot, unmount_all_under, wait_no_process_mentioning, which,
};
use common::*;

const PODMAN_TOOLS: &[&str] = &[
    "podman",
    "fuse-overlayfs",
    "newuidmap",
    "newgidmap",
    "setpriv",
    "tar",
    "useradd",
    "usermod",
];
const FUSERMOUNT_TOOLS: &[&str] = &["fusermount3", "fuse-overlayfs", "setpriv", "tar", "useradd"];
const MOUNT_HELPER_TOOLS: &[&str] = &["mount.fuse3", "fuse-overlayfs"];

fn ready(tools: &[&str]) -> bool {
    require_mount_privileges() && require_tools(tools)
}

/// A scratch directory every user may traverse (its own files keep their
/// modes): the rootless user reaches its storage and the plyfs copy in it.
fn open_scratch() -> Scratch {
    let s = Scratch::new();
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    s
}

/// plyfs, copied where any user can execute it (the build directory may
/// not be reachable by the unprivileged user). `PLYFS_TEST_BINARY` names
/// another build to test instead of this one.
fn plyfs_program(s: &Scratch) -> MountProgram {
    let bin = s.mkdir("bin");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dst = bin.join("plyfs");
    let src =
        std::env::var_os("PLYFS_TEST_BINARY").map_or_else(|| PathBuf::from(PLYFS), PathBuf::from);
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    MountProgram::Fuse(dst)
}

fn fuse_path(p: &MountProgram) -> &Path {
    match p {
        MountProgram::Fuse(p) => p,
        MountProgram::Kernel => panic!("not a FUSE program"),
    }
}

/// Reports every problem at once: a failing step does not hide the others.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// Scenario 1: an image, a container, its rootfs mounted by podman, used by a
// container user and changed by the container's root, committed, and the
// committed image mounted again.

/// The container user (as in the image's /etc/passwd).
const CUID: u32 = 1000;

/// Builds the image's root filesystem as a tarball: directories, files of
/// root and of uid 1000, a file only root may read, symlinks, a hard link,
/// a home directory of uid 1000 with mode 0700.
fn build_rootfs_tar(s: &Scratch) -> PathBuf {
    let src = s.path("rootfs-src");
    let l = LayerBuilder::new(&src);
    l.file_mode("bin/hello", "#!/bin/sh\necho hello\n", 0o755)
        .file_mode("etc/motd", "Welcome to the plyfs test image\n", 0o644)
        .file_mode(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
            0o644,
        )
        .file_mode(
            "etc/group",
            "root:x:0:\nshadow:x:42:\nuser:x:1000:\n",
            0o644,
        )
        .file_mode(
            "etc/shadow",
            "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n",
            0o600,
        )
        .file_mode("usr/lib/os-release", "ID=plyfs-test\n", 0o644)
        .symlink("etc/os-release", "../usr/lib/os-release")
        .file_mode("root/.secret", "root only\n", 0o600)
        .file_mode("home/user/.profile", "PATH=/bin\n", 0o644)
        .file_mode("home/user/notes.txt", "my notes\n", 0o600)
        .file_mode("home/user/docs/a.txt", "doc a\n", 0o644)
        .symlink("home/user/link-to-notes", "notes.txt")
        .file_mode("srv/data/x", "x\n", 0o644)
        .file_mode("srv/data/sub/y", "y\n", 0o644)
        .file_mode("var/log/old.log", "old log\n", 0o644)
        .file_mode("var/cache/pkg/p1", "p1\n", 0o644)
        .file_mode("var/cache/pkg/p2", "p2\n", 0o644)
        .file_mode("opt/app/config", "setting=1\n", 0o644)
        .dir("tmp");
    l.hardlink("bin/hello", "bin/hello-again");
    let mode = |rel: &str, m: u32| {
        std::fs::set_permissions(src.join(rel), std::fs::Permissions::from_mode(m)).unwrap()
    };
    // containers-storage gives a container's root directory mode 0555
    // whatever the image says; the image says the same.
    mode("", 0o555);
    for d in [
        "bin",
        "etc",
        "usr",
        "usr/lib",
        "home",
        "home/user/docs",
        "srv",
        "srv/data",
        "srv/data/sub",
        "var",
        "var/log",
        "var/cache",
        "var/cache/pkg",
        "opt",
        "opt/app",
    ] {
        mode(d, 0o755);
    }
    mode("root", 0o700);
    mode("home/user", 0o700);
    mode("tmp", 0o1777);
    for rel in [
        "home/user",
        "home/user/.profile",
        "home/user/notes.txt",
        "home/user/docs",
        "home/user/docs/a.txt",
        "home/user/link-to-notes",
        "opt/app/config",
    ] {
        lchown(src.join(rel), Some(CUID), Some(CUID)).unwrap();
    }
    let tar = s.path("rootfs.tar");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        "tar the rootfs",
    );
    std::fs::set_permissions(&tar, std::fs::Permissions::from_mode(0o644)).unwrap();
    tar
}

/// What the container's user does, in its rootfs (the current directory):
/// reads and writes its own files, and is refused what is not its own.
const USER_SCRIPT: &str = r#"umask 022
echo "uid=$(id -u) gid=$(id -g)"
cat etc/motd
ls -A home/user | tr '\n' ' '; echo
cat home/user/notes.txt home/user/docs/a.txt home/user/link-to-notes
echo "written by the container user" > home/user/new.txt && echo "wrote home/user/new.txt"
echo "more notes" >> home/user/notes.txt && echo "appended to home/user/notes.txt"
mkdir home/user/made && echo made > home/user/made/file && echo "made home/user/made"
mv home/user/.profile home/user/.profile.old && echo "renamed home/user/.profile"
echo "setting=2" > opt/app/config && echo "rewrote opt/app/config"
for f in etc/shadow root/.secret; do
  if cat "$f" >/dev/null 2>&1; then echo "read $f"; else echo "cannot read $f"; fi
done
if (echo x > etc/motd) 2>/dev/null; then echo "wrote etc/motd"; else echo "cannot write etc/motd"; fi
if mkdir etc/new 2>/dev/null; then echo "made etc/new"; else echo "cannot mkdir etc/new"; fi
if rm bin/hello 2>/dev/null; then echo "removed bin/hello"; else echo "cannot remove bin/hello"; fi
"#;

/// [`USER_SCRIPT`]'s output where everything behaves.
const USER_OUTPUT: &str = "uid=1000 gid=1000
Welcome to the plyfs test image
.profile docs link-to-notes notes.txt 
my notes
doc a
my notes
wrote home/user/new.txt
appended to home/user/notes.txt
made home/user/made
renamed home/user/.profile
rewrote opt/app/config
cannot read etc/shadow
cannot read root/.secret
cannot write etc/motd
cannot mkdir etc/new
cannot remove bin/hello
";

/// What the container's root then changes: file contents, modes and
/// owners; deletes a file, a directory tree and a symlink; renames a
/// directory and a file of the image; replaces a deleted directory by a
/// new one (opaque); creates a tree for the user. (Not hard links of lower
/// files: there the kernel's overlayfs without `index=on`, as
/// containers-storage mounts it, and fuse-overlayfs both break the link,
/// each in its own way.)
const ROOT_SCRIPT: &str = r#"set -eu
umask 022
echo "changed by root" > etc/motd
echo "guest:x:1001:1001:guest:/home/guest:/bin/sh" >> etc/passwd
chmod 0640 etc/shadow
chown 0:42 etc/shadow
chown 1000:1000 var/log
rm var/log/old.log
rm -r var/cache/pkg
mkdir var/cache/pkg
echo fresh > var/cache/pkg/new
mv srv/data srv/renamed
mv opt/app/config opt/app/config.old
rm etc/os-release
ln -s /usr/lib/os-release etc/os-release
rm -r home/user/docs
mkdir -p srv/new/dir
echo new > srv/new/dir/file
chown -R 1000:1000 srv/new
chmod 0750 bin
echo "root done"
"#;

/// Runs a script in a rootfs (its first argument) as the container's user.
const AS_CONTAINER_USER: &str =
    r#"cd "$1" && exec setpriv --reuid 1000 --regid 1000 --clear-groups sh -c "$2""#;
/// Runs a script in a rootfs (its first argument) as the container's root.
const AS_CONTAINER_ROOT: &str = r#"cd "$1" && exec sh -c "$2""#;

/// The oracle without any union: the same steps on a plain copy of the
/// rootfs, by the same ids.
struct Expected {
    tree: Tree,
}

fn expected_rootfs(s: &Scratch, tar: &Path) -> Expected {
    let dir = s.mkdir("expected-rootfs");
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(&dir),
        "untar the rootfs",
    );
    let sh = |script: &str, inner: &str| {
        let mut c = Command::new("sh");
        c.args(["-c", script, "sh"]).arg(&dir).arg(inner);
        c
    };
    let user_output = run_ok(
        &mut sh(AS_CONTAINER_USER, USER_SCRIPT),
        "user script, plain dir",
    );
    // The oracle itself must be right.
    assert_eq!(
        user_output, USER_OUTPUT,
        "the user script on a plain directory"
    );
    run_ok(
        &mut sh(AS_CONTAINER_ROOT, ROOT_SCRIPT),
        "root script, plain dir",
    );
    let tree = tar_snapshot(
        Command::new("sh")
            .args(["-c", &format!("cd \"$1\" && {TAR_CREATE}"), "sh"])
            .arg(&dir),
        &s.path("expected-copy"),
    );
    Expected { tree }
}

/// What one run of the container scenario saw.
struct Outcome {
    program: String,
    /// The mounted rootfs after the changes.
    changed: Tree,
    /// The committed image's rootfs.
    committed: Tree,
    mount_program_calls: Vec<String>,
}

/// The container scenario with one mount program. Steps that cannot go on
/// panic; anything else wrong is added to `problems`.
fn container_scenario(
    s: &Scratch,
    tag: &str,
    mode: Mode,
    program: MountProgram,
    log_argv: bool,
    tar: &Path,
    problems: &mut Vec<String>,
) -> Outcome {
    let name = program.name();
    let store = PodmanStore::new(&s.path(&format!("podman-{tag}")), mode, program, log_argv);
    let mut problem = |p: String| problems.push(format!("[{name}] {p}"));

    store.podman_ok(&[
        "import".as_ref(),
        tar.as_os_str(),
        "plyfs-test-base".as_ref(),
    ]);
    store.podman_ok(&[
        "create",
        "--name",
        "plyfs-c1",
        "--network",
        "none",
        "plyfs-test-base",
        "/bin/sh",
    ]);
    let mp = store.mount("plyfs-c1");
    match store.mount_entry(&mp) {
        None => panic!(
            "[{name}] podman mount returned {}, not a mount point",
            mp.display()
        ),
        Some(e) if e.fstype != store.program.fstype() => problem(format!(
            "the rootfs mount has type {:?}, not {:?} (fuse-overlayfs's mounts show fuse.fuse-overlayfs): {e:?}",
            e.fstype,
            store.program.fstype()
        )),
        Some(_) => {}
    }

    let out =
        run(&mut store
            .as_container_root(AS_CONTAINER_USER, &[mp.as_os_str(), USER_SCRIPT.as_ref()]));
    let user_output = String::from_utf8_lossy(&out.stdout).into_owned();
    if user_output != USER_OUTPUT || !out.status.success() {
        problem(format!(
            "container uid 1000 in the mounted rootfs ({}):\n--- expected\n{USER_OUTPUT}--- got\n{user_output}--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out =
        run(&mut store
            .as_container_root(AS_CONTAINER_ROOT, &[mp.as_os_str(), ROOT_SCRIPT.as_ref()]));
    if !out.status.success() {
        problem(format!(
            "container root's changes failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let changed = store.snapshot(&mp, &s.path(&format!("{tag}-changed")));

    store.unmount("plyfs-c1");
    if let Some(e) = store.mount_entry(&mp) {
        problem(format!("still mounted after podman unmount: {e:?}"));
    }
    store.podman_ok(&["commit", "-q", "plyfs-c1", "plyfs-test-committed"]);
    store.podman_ok(&[
        "create",
        "--name",
        "plyfs-c2",
        "--network",
        "none",
        "plyfs-test-committed",
        "/bin/sh",
    ]);
    let mp2 = store.mount("plyfs-c2");
    let committed = store.snapshot(&mp2, &s.path(&format!("{tag}-committed")));
    store.unmount("plyfs-c2");
    let calls = store.mount_program_calls();
    if !calls.is_empty() {
        eprintln!("[{name}] mount_program calls:");
        for c in &calls {
            eprintln!("  {c}");
        }
    }
    Outcome {
        program: name,
        changed,
        committed,
        mount_program_calls: calls,
    }
}

/// Compares a run's trees with the plain-directory oracle's (its user's
/// output was checked by the scenario).
fn check_against_expected(exp: &Expected, got: &Outcome, problems: &mut Vec<String>) {
    let name = &got.program;
    for (what, tree) in [
        ("the mounted rootfs after the changes", &got.changed),
        ("the committed image", &got.committed),
    ] {
        let d = diff_trees(&exp.tree, tree, Compare::default());
        if !d.is_empty() {
            problems.push(format!(
                "[{name}] {what} differs from the same steps on a plain directory (first: plain, second: {name}):\n{}",
                d.join("\n")
            ));
        }
    }
}

/// Compares a run with another mount program's run of the same steps.
fn check_against_oracle(oracle: &Outcome, got: &Outcome, problems: &mut Vec<String>) {
    for (what, a, b) in [
        (
            "the mounted rootfs after the changes",
            &oracle.changed,
            &got.changed,
        ),
        ("the committed image", &oracle.committed, &got.committed),
    ] {
        let d = diff_trees(a, b, Compare::default());
        if !d.is_empty() {
            problems.push(format!(
                "[{}] {what} differs from {}'s (first: {}, second: {}):\n{}",
                got.program,
                oracle.program,
                oracle.program,
                got.program,
                d.join("\n")
            ));
        }
    }
}

/// containers-storage's command lines for a mount program, the forms plyfs
/// must take: `-o lowerdir=L1:L2...,upperdir=U,workdir=W MERGED` for a
/// container, and `-o lowerdir=DIFF:EMPTY MERGED` (read-only: no upper) for
/// a layer it mounts while committing. `mountopt` flags (nodev) are applied
/// by containers-storage itself, not passed.
fn check_mount_program_calls(calls: &[String], uid: &str) {
    let parsed: Vec<Vec<&str>> = calls
        .iter()
        .map(|c| {
            let (who, args) = c.split_once(':').expect("log line");
            assert_eq!(who, format!("uid={uid}"), "{c}");
            args.trim()
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .expect("bracketed args")
                .split("] [")
                .collect()
        })
        .collect();
    for (c, args) in calls.iter().zip(&parsed) {
        assert_eq!(args.len(), 3, "{c}");
        assert_eq!(args[0], "-o", "{c}");
        assert!(args[1].starts_with("lowerdir="), "{c}");
        assert!(args[2].ends_with("/merged"), "{c}");
    }
    let writable = parsed
        .iter()
        .filter(|a| a[1].contains(",upperdir=") && a[1].contains(",workdir="))
        .count();
    let read_only = parsed
        .iter()
        .filter(|a| !a[1].contains("upperdir="))
        .count();
    assert!(
        writable >= 2 && read_only >= 1,
        "expected writable container mounts and a read-only layer mount: {calls:#?}"
    );
}

#[test]
fn root_podman_with_fuse_overlayfs_and_kernel_overlay() {
    if !ready(PODMAN_TOOLS) {
        return;
    }
    let s = open_scratch();
    let tar = build_rootfs_tar(&s);
    let exp = expected_rootfs(&s, &tar);
    let mut problems = Vec::new();
    let fo = container_scenario(
        &s,
        "fo",
        Mode::Root,
        MountProgram::fuse_overlayfs(),
        true,
        &tar,
        &mut problems,
    );
    check_against_expected(&exp, &fo, &mut problems);
    check_mount_program_calls(&fo.mount_program_calls, "0");
    let kernel = container_scenario(
        &s,
        "kernel",
        Mode::Root,
        MountProgram::Kernel,
        false,
        &tar,
        &mut problems,
    );
    check_against_expected(&exp, &kernel, &mut problems);
    check_against_oracle(&kernel, &fo, &mut problems);
    assert_no_problems("root podman, fuse-overlayfs and kernel overlay", &problems);
}

#[test]
fn root_podman_with_plyfs() {
    if !ready(PODMAN_TOOLS) {
        return;
    }
    let s = open_scratch();
    let tar = build_rootfs_tar(&s);
    let exp = expected_rootfs(&s, &tar);
    let log = std::env::var_os("PLYFS_TEST_MOUNT_ARGV").is_some();
    let mut problems = Vec::new();
    let plyfs = container_scenario(
        &s,
        "plyfs",
        Mode::Root,
        plyfs_program(&s),
        log,
        &tar,
        &mut problems,
    );
    check_against_expected(&exp, &plyfs, &mut problems);
    let kernel = container_scenario(
        &s,
        "kernel",
        Mode::Root,
        MountProgram::Kernel,
        false,
        &tar,
        &mut problems,
    );
    check_against_oracle(&kernel, &plyfs, &mut problems);
    assert_no_problems("root podman with plyfs as mount_program", &problems);
}

#[test]
fn rootless_podman_with_fuse_overlayfs() {
    if !ready(PODMAN_TOOLS) {
        return;
    }
    let user = ci_user().clone();
    let s = open_scratch();
    let tar = build_rootfs_tar(&s);
    let exp = expected_rootfs(&s, &tar);
    let mut problems = Vec::new();
    let fo = container_scenario(
        &s,
        "fo",
        Mode::Rootless(user),
        MountProgram::fuse_overlayfs(),
        true,
        &tar,
        &mut problems,
    );
    check_against_expected(&exp, &fo, &mut problems);
    // Inside `podman unshare` the program runs as the namespace's root.
    check_mount_program_calls(&fo.mount_program_calls, "0");
    assert_no_problems("rootless podman, fuse-overlayfs", &problems);
}

#[test]
fn rootless_podman_with_plyfs() {
    if !ready(PODMAN_TOOLS) {
        return;
    }
    let user = ci_user().clone();
    let s = open_scratch();
    let tar = build_rootfs_tar(&s);
    let exp = expected_rootfs(&s, &tar);
    let log = std::env::var_os("PLYFS_TEST_MOUNT_ARGV").is_some();
    let mut problems = Vec::new();
    let plyfs = container_scenario(
        &s,
        "plyfs",
        Mode::Rootless(user.clone()),
        plyfs_program(&s),
        log,
        &tar,
        &mut problems,
    );
    check_against_expected(&exp, &plyfs, &mut problems);
    let fo = container_scenario(
        &s,
        "fo",
        Mode::Rootless(user),
        MountProgram::fuse_overlayfs(),
        false,
        &tar,
        &mut problems,
    );
    check_against_oracle(&fo, &plyfs, &mut problems);
    assert_no_problems("rootless podman with plyfs as mount_program", &problems);
}

// ---------------------------------------------------------------------------
// Scenario 2: a plain user mounts a writable union through fusermount3, in
// directories it owns, with no namespace; changes it; unmounts; mounts it
// again and sees the same tree.

/// The user's changes, in the mount (the current directory).
const PLAIN_USER_SCRIPT: &str = r#"set -eu
umask 022
echo "more" >> keep
echo new > newfile
rm gone
mv dir dir2
rm -r olddir
mkdir made
echo m > made/f
ln -s newfile newlink
chmod 0600 dir2/a
echo changed > dir2/sub/b
"#;

/// Mounts, changes, unmounts, remounts as the plain user with `program`;
/// returns the trees seen before and after the remount and the expected
/// one (the same changes on a plain copy of the lower layer).
fn plain_user_scenario(
    s: &Scratch,
    tag: &str,
    program: &Path,
    problems: &mut Vec<String>,
) -> (Tree, Tree, Tree) {
    let user = ci_user();
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    let base = s.mkdir(&format!("user-{tag}"));
    // The lower layer, and a plain copy to do the same changes on.
    for d in ["lower", "plain"] {
        LayerBuilder::new(base.join(d))
            .file("keep", "keep\n")
            .file("gone", "gone\n")
            .file("dir/a", "a\n")
            .file("dir/sub/b", "b\n")
            .file("olddir/x", "x\n")
            .file("olddir/deeper/y", "y\n")
            .symlink("link", "keep");
    }
    let (upper, work, mnt, home) = (
        base.join("upper"),
        base.join("work"),
        base.join("mnt"),
        base.join("home"),
    );
    for d in [&upper, &work, &mnt, &home] {
        std::fs::create_dir_all(d).unwrap();
    }
    user.chown_tree(&base);
    let sh_in = |dir: &Path, script: &str| {
        let mut c = user.command("sh", &home);
        c.args(["-c", "cd \"$1\" && sh -c \"$2\"", "sh"])
            .arg(dir)
            .arg(script);
        c
    };
    let tar_of = |dir: &Path, dest: &str| {
        tar_snapshot(
            user.command("sh", &home)
                .args(["-c", &format!("cd \"$1\" && {TAR_CREATE}"), "sh"])
                .arg(dir),
            &s.path(&format!("{tag}-{dest}")),
        )
    };
    run_ok(
        &mut sh_in(&base.join("plain"), PLAIN_USER_SCRIPT),
        "the changes on a plain directory",
    );
    let expected = tar_of(&base.join("plain"), "expected");

    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.join("lower").display(),
        upper.display(),
        work.display()
    );
    let _guard = UserMounts {
        user,
        home: home.clone(),
        mps: vec![mnt.clone()],
        needle: base.to_string_lossy().into_owned(),
    };
    let mount = || {
        let out = run(user.command(program, &home).arg("-o").arg(&opts).arg(&mnt));
        assert!(
            out.status.success() && is_mounted(&mnt),
            "[{name}] a plain user's mount `{} -o {opts} {}` failed ({}), mounted: {}:\n{}{}",
            program.display(),
            mnt.display(),
            out.status,
            is_mounted(&mnt),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let unmount = |problems: &mut Vec<String>| {
        run_ok(
            user.command("fusermount3", &home).arg("-u").arg(&mnt),
            "fusermount3 -u",
        );
        if !wait_no_process_mentioning(&mnt.to_string_lossy(), Duration::from_secs(10)) {
            problems.push(format!(
                "[{name}] the daemon did not exit after fusermount3 -u"
            ));
        }
    };

    mount();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let entry = mount_at(&info, &mnt).expect("mounted");
    if entry.fstype != format!("fuse.{name}") {
        problems.push(format!(
            "[{name}] the mount has type {:?}, not \"fuse.{name}\": {entry:?}",
            entry.fstype
        ));
    }
    let out = run(&mut sh_in(&mnt, PLAIN_USER_SCRIPT));
    if !out.status.success() {
        problems.push(format!(
            "[{name}] the plain user's changes in the mount failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let before = tar_of(&mnt, "before");
    unmount(problems);
    assert!(
        !is_mounted(&mnt),
        "[{name}] still mounted after fusermount3 -u"
    );
    mount();
    let after = tar_of(&mnt, "after");
    unmount(problems);
    (expected, before, after)
}

fn check_plain_user(name: &str, trees: &(Tree, Tree, Tree), problems: &mut Vec<String>) {
    let (expected, before, after) = trees;
    for (what, a, b) in [
        (
            "the mount after the changes vs a plain directory after them",
            expected,
            before,
        ),
        ("the remount vs the mount before unmounting", before, after),
    ] {
        let d = diff_trees(a, b, Compare::default());
        if !d.is_empty() {
            problems.push(format!("[{name}] {what}:\n{}", d.join("\n")));
        }
    }
}

#[test]
fn plain_user_fusermount3_with_fuse_overlayfs() {
    if !ready(FUSERMOUNT_TOOLS) {
        return;
    }
    let s = open_scratch();
    let program = which("fuse-overlayfs").unwrap();
    let mut problems = Vec::new();
    let trees = plain_user_scenario(&s, "fo", &program, &mut problems);
    check_plain_user("fuse-overlayfs", &trees, &mut problems);
    assert_no_problems("plain user through fusermount3, fuse-overlayfs", &problems);
}

#[test]
fn plain_user_fusermount3_with_plyfs() {
    if !ready(FUSERMOUNT_TOOLS) {
        return;
    }
    let s = open_scratch();
    let program = plyfs_program(&s);
    let mut problems = Vec::new();
    let trees = plain_user_scenario(&s, "plyfs", fuse_path(&program), &mut problems);
    check_plain_user("plyfs", &trees, &mut problems);
    assert_no_problems("plain user through fusermount3, plyfs", &problems);
}

// ---------------------------------------------------------------------------
// Scenario 3: `mount -t fuse.NAME SOURCE MOUNTPOINT -o OPTS` (fstab's way):
// mount(8) runs mount.fuse3, which runs `NAME SOURCE MOUNTPOINT -o OPTS`
// (adding `dev,suid` for root).

/// A root mount made by mount(8); dropping it unmounts and ends its daemon.
struct RootMount {
    mp: PathBuf,
    needle: String,
}

impl Drop for RootMount {
    fn drop(&mut self) {
        unmount_all_under(&self.mp);
        kill_processes_mentioning(&self.needle);
    }
}

fn mount_helper_scenario(s: &Scratch, program: &Path, problems: &mut Vec<String>) {
    let name = program.file_name().unwrap().to_string_lossy().into_owned();
    let base = s.mkdir(&format!("helper-{name}"));
    LayerBuilder::new(base.join("lower"))
        .file("a", "lower a\n")
        .file("d/b", "lower b\n");
    let (upper, work, mnt) = (base.join("upper"), base.join("work"), base.join("mnt"));
    for d in [&upper, &work, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        base.join("lower").display(),
        upper.display(),
        work.display()
    );
    let _guard = RootMount {
        mp: mnt.clone(),
        needle: base.to_string_lossy().into_owned(),
    };
    // mount(8) runs mount.fuse3 with a PATH of its own (the sbin and bin
    // directories), where an installed plyfs would be; this one is not
    // installed, so mount.fuse3 is run as mount(8) would run it, with
    // mount(8)'s `rw`, and a PATH that finds the program.
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        program.parent().unwrap().display()
    );
    let out = run(Command::new(which("mount.fuse3").unwrap())
        .env("PATH", &path)
        .arg("plyfs-test-source")
        .arg(&mnt)
        .args(["-t", &name, "-o"])
        .arg(format!("rw,{opts}")));
    if !out.status.success() || !is_mounted(&mnt) {
        problems.push(format!(
            "[{name}] `mount.fuse3 plyfs-test-source {} -t {name} -o rw,{opts}` (mount -t fuse.{name}), which runs `{name} plyfs-test-source {} -o rw,{opts},dev,suid`, failed ({}):\n{}{}",
            mnt.display(),
            mnt.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        return;
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let entry = mount_at(&info, &mnt).expect("mounted");
    if entry.fstype != format!("fuse.{name}") {
        problems.push(format!(
            "[{name}] the mount has type {:?}, not \"fuse.{name}\": {entry:?}",
            entry.fstype
        ));
    }
    match std::fs::read_to_string(mnt.join("d/b")) {
        Ok(c) if c == "lower b\n" => {}
        other => problems.push(format!("[{name}] reading d/b through the mount: {other:?}")),
    }
    if let Err(e) = std::fs::write(mnt.join("d/new"), "new\n") {
        problems.push(format!("[{name}] writing d/new through the mount: {e}"));
    }
    run_ok(Command::new("umount").arg(&mnt), "umount");
    if !wait_no_process_mentioning(&base.to_string_lossy(), Duration::from_secs(10)) {
        problems.push(format!("[{name}] the daemon did not exit after umount"));
    }
    if std::fs::read_to_string(upper.join("d/new")).ok().as_deref() != Some("new\n") {
        problems.push(format!("[{name}] d/new is not in the upper layer"));
    }
}

#[test]
fn mount_helper_form_with_fuse_overlayfs() {
    if !ready(MOUNT_HELPER_TOOLS) {
        return;
    }
    let s = open_scratch();
    let mut problems = Vec::new();
    mount_helper_scenario(&s, &which("fuse-overlayfs").unwrap(), &mut problems);
    assert_no_problems("mount -t fuse.fuse-overlayfs", &problems);
}

#[test]
fn mount_helper_form_with_plyfs() {
    if !ready(MOUNT_HELPER_TOOLS) {
        return;
    }
    let s = open_scratch();
    let program = plyfs_program(&s);
    let mut problems = Vec::new();
    mount_helper_scenario(&s, fuse_path(&program), &mut problems);
    assert_no_problems("mount -t fuse.plyfs", &problems);
}

//! POSIX ACLs, against the kernel's overlayfs: the same layers, the same
//! commands (`setfacl`, `getfacl`, `cat`, `touch`, `mkdir`, `chmod`...)
//! run by root and by other users on both, every answer compared. That
//! covers access allowed and denied by ACL entries, modes after setfacl,
//! the ACL mask after chmod, default ACLs and the umask on new objects
//! (also where they are built in the work directory, over whiteouts),
//! ACLs of lower files and of their copies, the set-group-ID bit an ACL
//! change clears. Both data paths; root's mount and a plain user's
//! (through fusermount3); layers on a filesystem without ACLs; a work
//! directory with ACLs of its own; and what only plyfs has: `noacl`, id
//! mappings inside ACLs, override layers, entries a user namespace cannot
//! name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::ops::Twin;
use common::users::{User, UserMounts, ci_user, run, run_ok, which};
use common::*;

/// The ACL tools must be there: a developer run without them skips, CI
/// fails (.ci/run installs the `acl` package).
fn acl_tools() -> bool {
    let missing: Vec<&str> = ["setfacl", "getfacl", "getfattr", "setpriv"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("missing {missing:?} (apt-get install -y acl attr util-linux)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI must install them (.ci/run)");
    }
    eprintln!("SKIPPED: {why}");
    false
}

/// Runs each shell command line of `ops` in `root` as uid:gid (no
/// supplementary groups, umask 022 unless the line sets one); returns
/// each one's output (stdout and stderr) and exit status.
fn run_ops(root: &Path, uid: u32, gid: u32, ops: &[String]) -> Vec<String> {
    const RUNNER: &str = r#"cd "$1" || exit 99
shift
umask 022
for op in "$@"; do
  out=$( (eval "$op") 2>&1 )
  printf '%s [rc=%s]\036' "$out" "$?"
done"#;
    let out = Command::new("sh")
        .args(["-c", RUNNER, "sh"])
        .arg(root)
        .args(ops)
        .env("LC_ALL", "C")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "runner failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Vec<String> = text
        .split('\u{1e}')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(v.len(), ops.len(), "{text}");
    v
}

/// The differences between the kernel's answers and plyfs's.
fn differences(who: &str, ops: &[String], k: &[String], p: &[String]) -> Vec<String> {
    ops.iter()
        .zip(k.iter().zip(p))
        .filter(|(_, (a, b))| a != b)
        .map(|(op, (a, b))| format!("{who}: `{op}`\n  kernel: {a:?}\n  plyfs:  {b:?}"))
        .collect()
}

fn setfacl(path: &Path, args: &[&str]) {
    run_ok(Command::new("setfacl").args(args).arg(path), "setfacl");
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).expect("chown");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The lower layer of the root scenarios. Users: 1000 (gid 1000) owns a
/// few files, 1001 is named by ACL entries, 1002 is nobody special, 1003
/// is in group 2000.
fn build(dir: &Path, _i: usize) {
    let l = LayerBuilder::new(dir);
    l.file_mode("denied", "secret\n", 0o666)
        .file_mode("granted", "granted\n", 0o600)
        .file_mode("grouped", "grouped\n", 0o640)
        .file_mode("plainfile", "plain\n", 0o644)
        .file_mode("maskfile", "mask\n", 0o664)
        .file_mode("chmodfile", "chmod\n", 0o664)
        .file_mode("own", "own\n", 0o644)
        .file_mode("sgidfile", "sgid\n", 0o2775)
        .file_mode("stripped", "strip\n", 0o644)
        .dir("inherit/lowerdir")
        .file("inherit/lowerfile", "lower\n")
        .dir("plain")
        .dir("closed")
        .file("closed/inside", "inside\n")
        .dir("sgiddir");
    let p = |rel: &str| dir.join(rel);
    setfacl(&p("denied"), &["-m", "u:1001:---"]);
    setfacl(&p("granted"), &["-m", "u:1001:rw-"]);
    setfacl(&p("grouped"), &["-m", "g:2000:r--"]);
    setfacl(&p("maskfile"), &["-m", "u:1002:rw-"]);
    setfacl(&p("chmodfile"), &["-m", "u:1002:rw-"]);
    setfacl(&p("stripped"), &["-m", "u:1001:r--,g:2000:rw-"]);
    chown(&p("own"), 1000, 1000);
    chown(&p("sgidfile"), 1000, 2000);
    chmod(&p("sgidfile"), 0o2775);
    for d in ["inherit", "plain", "closed", "sgiddir"] {
        chmod(&p(d), 0o777);
    }
    chmod(&p("sgiddir"), 0o2777);
    chown(&p("sgiddir"), 0, 2000);
    setfacl(
        &p("inherit"),
        &["-d", "-m", "u:1001:rwx,g::r-x,g:2000:rwx,m::rwx,o::r-x"],
    );
    setfacl(&p("closed"), &["-m", "u:1001:---"]);
    setfacl(&p("sgiddir"), &["-d", "-m", "g:2000:rwx,o::---"]);
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// (uid, gid, commands), run in this order on both mounts.
fn root_scenario() -> Vec<(u32, u32, Vec<String>)> {
    let root = strings(&[
        // ACLs of lower files, as they are.
        "getfacl -n denied granted grouped inherit closed sgiddir",
        "getfattr -d -m - -e hex denied",
        "cat denied granted",
        // setfacl on a lower file copies it up; the mode follows the ACL.
        "setfacl -m u:1001:--- plainfile && stat -c %a plainfile && getfacl -n plainfile",
        "setfacl -m m::r-- maskfile && stat -c %a maskfile && getfacl -n maskfile",
        "setfacl -m u:1002:rwx,m::rwx plainfile && stat -c %a plainfile",
        // chmod moves the mask.
        "chmod 0644 chmodfile && getfacl -n chmodfile",
        "chmod 0600 stripped && getfacl -n stripped && setfacl -b stripped && stat -c %a stripped && getfacl -n stripped",
        "setfacl -x u:1001 plainfile && getfacl -n plainfile && stat -c %a plainfile",
        // A default ACL replaces the umask; without one the umask is it.
        "umask 077; touch inherit/f && mkdir inherit/d && mkfifo inherit/p && mknod inherit/c c 1 3 && ln -s f inherit/s && stat -c '%n %a' inherit/f inherit/d inherit/p inherit/c inherit/s && getfacl -n inherit/f inherit/d inherit/p inherit/c",
        "umask 077; mkdir inherit/d/e && touch inherit/d/e/g && stat -c '%n %a' inherit/d/e inherit/d/e/g && getfacl -n inherit/d/e/g",
        "umask 077; touch plain/f && mkdir plain/d && stat -c '%n %a' plain/f plain/d && getfacl -n plain/f",
        "umask 022; touch plain/g && stat -c %a plain/g",
        // Over whiteouts: the objects are built in the work directory.
        "umask 077; rm inherit/lowerfile && touch inherit/lowerfile && rmdir inherit/lowerdir && mkdir inherit/lowerdir && stat -c '%n %a' inherit/lowerfile inherit/lowerdir && getfacl -n inherit/lowerfile inherit/lowerdir",
        // A default ACL set through the mount, one removed.
        "setfacl -d -m u:1002:r-x plain && umask 077 && touch plain/after && mkdir plain/dafter && stat -c '%n %a' plain/after plain/dafter && getfacl -n plain/after plain/dafter",
        "setfacl -k inherit && umask 077 && touch inherit/nodefault && stat -c %a inherit/nodefault && getfacl -n inherit",
        // Set-group-ID directories and default ACLs together.
        "cd sgiddir && touch f && mkdir d && stat -c '%n %a %g' f d && getfacl -n f d",
        // A default ACL on a file is refused.
        "setfacl -d -m u:1001:r plainfile",
    ]);
    let u1000 = strings(&[
        // The owner may set ACLs; one outside the file's group loses its
        // set-group-ID bit doing so.
        "setfacl -m u:1001:rw- own && getfacl -n own",
        "setfacl -m u:1001:r-- sgidfile; stat -c %a sgidfile",
        "setfacl -m u:1001:rwx granted",
        "cat grouped",
        "umask 027; touch inherit/by1000 plain/by1000 && stat -c '%n %a' inherit/by1000 plain/by1000 && getfacl -n inherit/by1000 plain/by1000",
    ]);
    let u1001 = strings(&[
        "cat denied",
        "test -r denied && echo r || echo not-r",
        "cat granted && echo more >> granted && cat granted",
        "cat grouped",
        "cat plainfile",
        "echo x >> own && cat own",
        "ls closed",
        "cat closed/inside",
        "cat stripped",
        "umask 022; touch inherit/by1001 && mkdir inherit/d1001 && stat -c '%n %a %u' inherit/by1001 inherit/d1001 && getfacl -n inherit/by1001",
        "setfacl -m u:1001:rwx own",
    ]);
    let u1002 = strings(&[
        "cat denied",
        "cat granted",
        "echo x >> maskfile",
        "echo x >> chmodfile",
        "echo x >> plainfile && cat plainfile",
        "ls closed && cat closed/inside",
        "touch sgiddir/by1002",
    ]);
    let u1003 = strings(&[
        "cat grouped",
        "echo x >> stripped",
        "touch inherit/d/e/by1003 sgiddir/by1003 && stat -c '%n %a %g' inherit/d/e/by1003 sgiddir/by1003",
    ]);
    vec![
        (0, 0, root),
        (1000, 1000, u1000),
        (1001, 1001, u1001),
        (1002, 1002, u1002),
        (1003, 2000, u1003),
    ]
}

#[test]
fn acls_are_enforced_kept_and_inherited_as_the_kernel_does() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    // Both data paths: passthrough, and the page cache with writes going
    // through plyfs.
    for opts in ["", "passthrough=0"] {
        let mut t = Twin::with_opts(1, opts, build);
        chmod(t.scratch.dir.path(), 0o755);
        let mut diffs = Vec::new();
        let mut answers = Vec::new();
        for (uid, gid, ops) in root_scenario() {
            let k = run_ops(&t.kmnt(), uid, gid, &ops);
            let p = run_ops(&t.pmnt(), uid, gid, &ops);
            diffs.extend(differences(&format!("[{opts}] uid {uid}"), &ops, &k, &p));
            answers.push((uid, ops, p));
        }
        assert!(diffs.is_empty(), "{}", diffs.join("\n"));
        // The three complaints, answered (the kernel agreeing is above):
        // an ACL denies what the mode allows, a default ACL wins over the
        // umask, and setfacl changes the mode shown.
        let answer = |uid: u32, op: &str| -> String {
            let (_, ops, p) = answers.iter().find(|(u, _, _)| *u == uid).unwrap();
            let i = ops.iter().position(|o| o == op).unwrap();
            p[i].clone()
        };
        assert!(answer(1001, "cat denied").contains("Permission denied"));
        assert!(answer(0, &root_scenario()[0].2[9]).contains("inherit/f 664"));
        assert!(answer(0, &root_scenario()[0].2[4]).starts_with("644"));
        t.assert_same_tree();
        // The upper plyfs wrote reads the same under the kernel.
        t.assert_kernel_reads_plyfs_upper();
    }
}

/// `noacl` (fuse-overlayfs's option; the kernel's overlayfs has none): no
/// enforcement, no inheritance by plyfs, the kernel applies the umask; the
/// attributes are still there as attributes.
#[test]
fn noacl_turns_acls_off() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    let s = Scratch::new();
    chmod(s.dir.path(), 0o755);
    build(&s.path("l"), 0);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.path("l").display(),
        s.mkdir("u").display(),
        s.mkdir("w").display()
    );
    for (extra, acls) in [(",noacl", false), ("", true)] {
        let mnt = s.path(if acls { "m-acl" } else { "m-noacl" });
        let p = PlyfsMount::new(&format!("{opts}{extra}"), &mnt);
        let ops = strings(&["cat denied", "getfacl -n denied"]);
        let got = run_ops(&p.mnt, 1001, 1001, &ops);
        assert_eq!(
            got[0].contains("Permission denied"),
            acls,
            "{extra}: {got:?}"
        );
        assert!(got[1].contains("user:1001:---"), "{got:?}");
        let made = format!("umask 077; touch plain/n{extra} && stat -c %a plain/n{extra}");
        let got = run_ops(&p.mnt, 0, 0, &[made]);
        assert!(got[0].starts_with("600"), "{extra}: {got:?}");
    }
    // With noacl the daemon inherits nothing itself: a new object in a
    // directory with a default ACL gets the kernel's umasked mode.
    let p = PlyfsMount::new(&format!("{opts},noacl"), &s.path("m-noacl2"));
    let got = run_ops(
        &p.mnt,
        0,
        0,
        &strings(&["umask 077; touch inherit/n && stat -c %a inherit/n"]),
    );
    assert!(got[0].starts_with("600"), "{got:?}");
}

/// Id mappings translate the ids inside ACLs as they translate owners:
/// shown through the mapping, stored through it back, an id without one
/// refused (EINVAL) on the way in and shown as the overflow id on the way
/// out; and the kernel enforces the translated entries.
#[test]
fn id_mappings_translate_acl_entries() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    let s = Scratch::new();
    chmod(s.dir.path(), 0o755);
    let l = LayerBuilder::new(s.path("l"));
    l.file_mode("f", "f\n", 0o640).file_mode("g", "g\n", 0o640);
    setfacl(&s.path("l/f"), &["-m", "u:1001:r--,u:4500:rw-,g:1001:r--"]);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.path("l").display(),
        s.mkdir("u").display(),
        s.mkdir("w").display()
    );
    // Layer ids 0..1000 are themselves, 1001 is 5001, 1002..4001 are
    // themselves; 4002 and up have no mapping (nor has 1001 through the
    // mount).
    let map = "0:0:1001:1001:5001:1:1002:1002:3000";
    let p = PlyfsMount::new(
        &format!("{opts},uidmapping={map},gidmapping={map}"),
        &s.path("m"),
    );
    let got = run_ops(&p.mnt, 0, 0, &strings(&["getfacl -n f"]));
    for want in ["user:5001:r--", "user:65534:rw-", "group:5001:r--"] {
        assert!(got[0].contains(want), "{want} in {got:?}");
    }
    // The kernel checks the caller's (mount) id against the entries.
    assert!(run_ops(&p.mnt, 5001, 5001, &strings(&["cat f"]))[0].starts_with("f [rc=0]"));
    assert!(run_ops(&p.mnt, 1002, 1002, &strings(&["cat f"]))[0].contains("Permission denied"));
    let got = run_ops(
        &p.mnt,
        0,
        0,
        &strings(&[
            "setfacl -m u:5001:---,g:1500:rw- g && getfacl -n g",
            "setfacl -m u:1001:r-- g",
        ]),
    );
    assert!(
        got[0].contains("user:5001:---") && got[0].contains("group:1500:rw-"),
        "{got:?}"
    );
    assert!(got[1].contains("Invalid argument"), "{got:?}");
    // On disk: the layer's ids.
    let disk = run_ok(
        Command::new("getfacl")
            .args(["-n", "-c"])
            .arg(s.path("u/g")),
        "getfacl",
    );
    assert!(
        disk.contains("user:1001:---") && disk.contains("group:1500:rw-"),
        "{disk}"
    );
    assert!(run_ops(&p.mnt, 5001, 5001, &strings(&["cat g"]))[0].contains("Permission denied"));
    drop(p);

    // squash_to_*: every id shows as the squashed one, inside ACLs too.
    let p = PlyfsMount::new(
        &format!("{opts},squash_to_uid=7,squash_to_gid=8"),
        &s.path("m2"),
    );
    let got = run_ops(&p.mnt, 0, 0, &strings(&["getfacl -n f"]));
    assert!(
        got[0].contains("user:7:r--") && got[0].contains("group:8:r--"),
        "{got:?}"
    );
}

/// An override layer (`xattr_permissions`) keeps the mode in its
/// attribute: an ACL set through the mount changes that mode, the real
/// file keeps the daemon's, and the ACL reads with the mode shown.
#[test]
fn override_layers_keep_the_acl_and_the_shown_mode_in_step() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    let s = Scratch::new();
    chmod(s.dir.path(), 0o755);
    let l = LayerBuilder::new(s.path("l"));
    l.file_mode("f", "f\n", 0o604).dir("d");
    chmod(&s.path("l/d"), 0o777);
    setfacl(&s.path("l/d"), &["-d", "-m", "u:1001:rwx,o::---"]);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},xattr_permissions=2",
        s.path("l").display(),
        s.mkdir("u").display(),
        s.mkdir("w").display()
    );
    let p = PlyfsMount::new(&opts, &s.path("m"));
    let got = run_ops(
        &p.mnt,
        0,
        0,
        &strings(&[
            "setfacl -m u:1001:rw-,m::r-- f && stat -c %a f && getfacl -n -c f",
            "chmod 0640 f && getfacl -n -c f",
            "umask 077; touch d/n && stat -c %a d/n && getfacl -n -c d/n",
        ]),
    );
    assert!(got[0].starts_with("644\n"), "{got:?}");
    assert!(
        got[1].contains("mask::r--") && got[1].contains("other::---"),
        "{got:?}"
    );
    assert!(
        got[2].starts_with("660\n") && got[2].contains("user:1001:rwx"),
        "{got:?}"
    );
    // The real copy is the daemon's, readable and writable by it.
    let real = std::fs::metadata(s.path("u/f"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(real & 0o600, 0o600, "{real:o}");
    assert!(run_ops(&p.mnt, 1001, 1001, &strings(&["cat f"]))[0].starts_with("f [rc=0]"));
    assert!(run_ops(&p.mnt, 1002, 1002, &strings(&["cat f"]))[0].contains("Permission denied"));
}

/// A ramfs: a filesystem with no ACLs (nor attributes) at all.
struct Ramfs(PathBuf);

impl Ramfs {
    fn new(p: PathBuf) -> Ramfs {
        std::fs::create_dir_all(&p).unwrap();
        run_ok(
            Command::new("mount").args(["-t", "ramfs", "ramfs"]).arg(&p),
            "mount ramfs",
        );
        Ramfs(p)
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Layers on a filesystem without ACLs: a lower file has none (and
/// non-owners still get in by its mode: the kernel's FUSE must not be
/// told EOPNOTSUPP for them), setfacl on an upper without them fails with
/// EOPNOTSUPP, as in the kernel's overlayfs.
#[test]
fn layers_without_acl_support() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    let s = Scratch::new();
    chmod(s.dir.path(), 0o755);
    let ram = Ramfs::new(s.path("ram"));
    chmod(&ram.0, 0o755);
    // A lower on the ramfs, an upper on the scratch disk; then the other
    // way round. Each kernel and plyfs with copies of the same.
    let ops = strings(&[
        "getfacl -n f",
        "getfattr -n system.posix_acl_access f",
        "setpriv --reuid=1001 --regid=1001 --clear-groups cat f",
        "setfacl -m u:1001:--- f; getfacl -n f",
        "setpriv --reuid=1001 --regid=1001 --clear-groups cat f",
        "umask 077; mkdir d && touch d/n && stat -c %a d/n",
    ]);
    for (case, lower_on_ram) in [("lower on ramfs", true), ("upper on ramfs", false)] {
        let mut answers = Vec::new();
        for side in ["k", "p"] {
            let base = if lower_on_ram {
                ram.0.clone()
            } else {
                s.path("disk")
            };
            let lower = base.join(format!("{side}-{lower_on_ram}-l"));
            LayerBuilder::new(&lower).file_mode("f", "f\n", 0o644);
            chmod(&lower, 0o755);
            let top = if lower_on_ram {
                s.path("disk")
            } else {
                ram.0.clone()
            };
            let (upper, work) = (
                top.join(format!("{side}-{lower_on_ram}-u")),
                top.join(format!("{side}-{lower_on_ram}-w")),
            );
            std::fs::create_dir_all(&upper).unwrap();
            std::fs::create_dir_all(&work).unwrap();
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            let mnt = s.path(&format!("{side}-{lower_on_ram}-m"));
            let got = if side == "k" {
                let k = KernelMount::new(&opts, &mnt);
                run_ops(&k.mnt, 0, 0, &ops)
            } else {
                let p = PlyfsMount::new(&opts, &mnt);
                run_ops(&p.mnt, 0, 0, &ops)
            };
            answers.push(got);
        }
        let d = differences(case, &ops, &answers[0], &answers[1]);
        assert!(d.is_empty(), "{}", d.join("\n"));
        assert!(
            answers[1][2].starts_with("f [rc=0]"),
            "{case}: {:?}",
            answers[1]
        );
        // As the kernel's: refused where the object is, even when the
        // upper would take it.
        assert!(
            answers[1][3].contains("Operation not supported"),
            "{case}: {:?}",
            answers[1]
        );
    }
}

// ---------------------------------------------------------------------------
// A plain user's mount, through fusermount3.

/// A plain user's plyfs mount at `mnt`, through fusermount3.
struct UserMount<'a> {
    mnt: PathBuf,
    _guard: UserMounts<'a>,
}

impl UserMount<'_> {
    fn new<'a>(user: &'a User, home: &Path, opts: &str, mnt: &Path) -> UserMount<'a> {
        let out = run(user.command(PLYFS, home).arg("-o").arg(opts).arg(mnt));
        // Unmounted on drop, also when the mount failed half-way.
        let guard = UserMounts {
            user,
            home: home.to_path_buf(),
            mps: vec![mnt.to_path_buf()],
            needle: mnt.to_string_lossy().into_owned(),
        };
        assert!(
            out.status.success() && is_mounted(mnt),
            "a plain user's mount failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        UserMount {
            mnt: mnt.to_path_buf(),
            _guard: guard,
        }
    }
}

/// A plain user mounts with fusermount3 (the daemon is the user, without
/// passthrough), and its ACL entries name its own ids (and another
/// user's). Compared with the kernel's overlayfs over copies of the same
/// layers, which root mounts and the same user uses.
#[test]
fn a_plain_users_mount_has_acls_too() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    if which("fusermount3").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install fuse3 (fusermount3)"
        );
        eprintln!("SKIPPED: fusermount3 is not installed");
        return;
    }
    let user = ci_user();
    let (uid, gid) = (user.uid, user.gid);
    let s = Scratch::new();
    chmod(s.dir.path(), 0o755);
    let home = s.mkdir("home");
    for side in ["k", "p"] {
        let l = LayerBuilder::new(s.path(&format!("{side}/l")));
        l.file_mode("own", "own\n", 0o644)
            .file_mode("withacl", "acl\n", 0o640)
            .file_mode("rootacl", "root\n", 0o644)
            .dir("inherit")
            .dir("plain");
        for d in ["upper", "work", "mnt"] {
            s.mkdir(&format!("{side}/{d}"));
        }
        user.chown_tree(&s.path(side));
        let p = |rel: &str| s.path(&format!("{side}/l/{rel}"));
        chown(&p("rootacl"), 0, 0);
        setfacl(&p("rootacl"), &["-m", &format!("u:{uid}:---")]);
        setfacl(&p("withacl"), &["-m", &format!("u:1001:r--,g:{gid}:rw-")]);
        setfacl(
            &p("inherit"),
            &["-d", "-m", &format!("u:{uid}:rwx,u:1001:r-x,o::---")],
        );
    }
    chown(&home, uid, gid);
    let ops = strings(&[
        "getfacl -n withacl inherit",
        // The mode allows it, the ACL does not (access(2): no daemon asked).
        "test -r rootacl && echo r || echo not-r",
        &format!("setfacl -m u:1001:r--,g:{gid}:rw- own && stat -c %a own && getfacl -n own"),
        "chmod 0600 own && getfacl -n own",
        "setfacl -m m::r-- withacl && stat -c %a withacl && getfacl -n withacl",
        "echo more >> withacl && getfacl -n withacl",
        "umask 077; touch inherit/f && mkdir inherit/d && stat -c '%n %a' inherit/f inherit/d && getfacl -n inherit/f inherit/d",
        "umask 077; touch plain/f && mkdir plain/d && stat -c '%n %a' plain/f plain/d",
        &format!(
            "setfacl -d -m u:{uid}:rwx,g::rwx,o::r-x plain && umask 077 && touch plain/g && stat -c %a plain/g && getfacl -n plain/g"
        ),
    ]);
    let opts = |side: &str| {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path(&format!("{side}/l")).display(),
            s.path(&format!("{side}/upper")).display(),
            s.path(&format!("{side}/work")).display()
        )
    };
    let k = KernelMount::new(&opts("k"), &s.path("k/mnt"));
    let kernel = run_ops(&k.mnt, uid, gid, &ops);
    let p = UserMount::new(user, &home, &opts("p"), &s.path("p/mnt"));
    let plyfs = run_ops(&p.mnt, uid, gid, &ops);
    let d = differences(&format!("uid {uid}"), &ops, &kernel, &plyfs);
    assert!(d.is_empty(), "{}", d.join("\n"));
    assert!(plyfs[1].starts_with("not-r"), "{plyfs:?}");
    assert!(plyfs[6].contains("inherit/f 660"), "{plyfs:?}");
    // The daemon is the user's: what it made belongs to it.
    let m = std::fs::metadata(s.path("p/upper/inherit/f")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&m), uid);
}

/// Inside a user namespace (`unshare -U -r -m`, as rootless podman runs
/// plyfs) the kernel hands the daemon an ACL entry naming an id the
/// namespace cannot name as -1, which the kernel's FUSE would refuse for
/// the whole ACL (EINVAL for every access that needs it). No process of
/// the namespace has such an id: the entry is left out, the others work.
#[test]
fn a_user_namespace_mount_reads_acls_naming_ids_it_cannot_name() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    let s = Scratch::new();
    let l = LayerBuilder::new(s.path("l"));
    l.file_mode("f", "f\n", 0o640);
    chown(&s.path("l/f"), 1001, 1001);
    setfacl(&s.path("l/f"), &["-m", "u:0:r--,u:1002:---"]);
    let (upper, work, mnt) = (s.mkdir("upper"), s.mkdir("work"), s.mkdir("mnt"));
    let script = format!(
        r#"set -e
{PLYFS} -o 'lowerdir={l},upperdir={u},workdir={w}' {m}
trap 'umount {m}' EXIT
cat {m}/f
getfacl -n -c {m}/f
"#,
        l = s.path("l").display(),
        u = upper.display(),
        w = work.display(),
        m = mnt.display()
    );
    let out = Command::new("unshare")
        .args(["-U", "-r", "-m", "--propagation", "private", "sh", "-c"])
        .arg(&script)
        .output()
        .expect("unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("f\n"), "{stdout}");
    assert!(stdout.contains("user:0:r--"), "{stdout}");
    assert!(!stdout.contains("4294967295"), "{stdout}");
}

/// A default ACL on the work directory reaches nothing: copies and
/// objects made over whiteouts are built there, and would inherit it (the
/// kernel's overlayfs removes it at mount, as plyfs does).
#[test]
fn a_default_acl_on_the_workdir_is_not_inherited() {
    if !require_mount_privileges() || !acl_tools() {
        return;
    }
    let s = Scratch::new();
    let ops = strings(&[
        "chmod 0600 f && getfacl -n f",
        "umask 022; rm d/x && touch d/x && rmdir d/y && mkdir d/y && getfacl -n d/x d/y",
        "getfacl -n d",
    ]);
    let mut answers = Vec::new();
    for side in ["k", "p"] {
        LayerBuilder::new(s.path(&format!("{side}/l")))
            .file_mode("f", "f\n", 0o644)
            .file("d/x", "x\n")
            .dir("d/y");
        let (upper, work) = (
            s.mkdir(&format!("{side}/upper")),
            s.mkdir(&format!("{side}/work")),
        );
        // Also on a work/ left by an earlier mount.
        let inner = s.mkdir(&format!("{side}/work/work"));
        for w in [&work, &inner] {
            setfacl(w, &["-d", "-m", "u:1001:rwx,o::rwx"]);
            setfacl(w, &["-m", "u:1001:rwx"]);
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path(&format!("{side}/l")).display(),
            upper.display(),
            work.display()
        );
        let mnt = s.path(&format!("{side}/mnt"));
        answers.push(if side == "k" {
            let k = KernelMount::new(&opts, &mnt);
            run_ops(&k.mnt, 0, 0, &ops)
        } else {
            let p = PlyfsMount::new(&opts, &mnt);
            run_ops(&p.mnt, 0, 0, &ops)
        });
    }
    let d = differences("workdir with ACLs", &ops, &answers[0], &answers[1]);
    assert!(d.is_empty(), "{}", d.join("\n"));
    assert!(!answers[1].concat().contains("1001"), "{:?}", answers[1]);
}

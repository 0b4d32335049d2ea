//! Multi-user behaviour compared with the kernel: operations run as other
//! users (a child process with their uid/gid) on both mounts, which plyfs
//! serves with allow_other,default_permissions. Permission checks, sticky
//! and set-group-ID directories, chown rules, umask, and set-ID bits
//! cleared on write and on chown, as pjdfstest-style suites check them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::ops::Twin;
use common::*;

/// Runs `ops` (one per line, "verb arg..." as the helper below reads
/// them) as uid/gid under `root`; returns one result line per op.
fn as_user(root: &Path, uid: u32, gid: u32, umask: u32, ops: &[&str]) -> Vec<String> {
    const HELPER: &str = r#"
import os, sys, errno
root, umask = sys.argv[1], int(sys.argv[2], 8)
os.umask(umask)
def st(p):
    s = os.lstat(p)
    return "mode=%o uid=%d gid=%d size=%d" % (s.st_mode, s.st_uid, s.st_gid, s.st_size)
for line in sys.argv[3:]:
    verb, *a = line.split()
    p = lambda i: os.path.join(root, a[i])
    try:
        if verb == "create": os.close(os.open(p(0), os.O_CREAT | os.O_EXCL | os.O_WRONLY, int(a[1], 8))); r = "ok"
        elif verb == "mkdir": os.mkdir(p(0), int(a[1], 8)); r = "ok"
        elif verb == "write":
            fd = os.open(p(0), os.O_WRONLY | os.O_APPEND); os.write(fd, b"w"); os.close(fd); r = "ok"
        elif verb == "read":
            with open(p(0), "rb") as f: r = "read %d" % len(f.read())
        elif verb == "ls": r = ",".join(sorted(os.listdir(p(0))))
        elif verb == "unlink": os.unlink(p(0)); r = "ok"
        elif verb == "rmdir": os.rmdir(p(0)); r = "ok"
        elif verb == "rename": os.rename(p(0), p(1)); r = "ok"
        elif verb == "link": os.link(p(0), p(1)); r = "ok"
        elif verb == "symlink": os.symlink(a[0], p(1)); r = "ok"
        elif verb == "chmod": os.chmod(p(0), int(a[1], 8)); r = "ok"
        elif verb == "chown": os.chown(p(0), int(a[1]), int(a[2])); r = "ok"
        elif verb == "truncate": os.truncate(p(0), int(a[1])); r = "ok"
        elif verb == "otrunc": os.close(os.open(p(0), os.O_WRONLY | os.O_TRUNC)); r = "ok"
        elif verb == "utime": os.utime(p(0), (1000, 2000)); r = "ok"
        elif verb == "utime_now": os.utime(p(0), None); r = "ok"
        elif verb == "setxattr": os.setxattr(p(0), a[1], b"v"); r = "ok"
        elif verb == "access": r = str(os.access(p(0), int(a[1])))
        elif verb == "stat": r = st(p(0))
        else: r = "bad verb"
    except OSError as e:
        r = "errno %s" % errno.errorcode.get(e.errno, e.errno)
    print(r, flush=True)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(HELPER)
        .arg(root)
        .arg(format!("{umask:o}"))
        .args(ops)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "helper failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn build(dir: &Path, _i: usize) {
    let l = LayerBuilder::new(dir);
    l.dir("pub")
        .dir("sticky")
        .dir("sgid")
        .dir("priv")
        .dir("shared");
    l.file("sticky/mine", "m")
        .file("sticky/theirs", "t")
        .file("priv/secret", "s");
    l.file("suid", "#!/bin/true\n")
        .file("ro", "ro")
        .file("own", "o")
        .file("shared/f", "f")
        .file("sgid_noexec", "g")
        .file("sgid_exec", "g")
        .file("trunc_suid", "tttt")
        .file("otrunc_suid", "tttt");
    let own =
        |p: &str, u: u32, g: u32| std::os::unix::fs::chown(dir.join(p), Some(u), Some(g)).unwrap();
    let mode = |p: &str, m: u32| {
        std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(m)).unwrap()
    };
    own("sticky/mine", 1000, 1000);
    own("sticky/theirs", 1001, 1001);
    own("sgid", 0, 2000);
    own("suid", 1000, 1000);
    own("ro", 1000, 1000);
    own("own", 1000, 1000);
    own("shared", 1000, 1000);
    mode("pub", 0o777);
    mode("sticky", 0o1777);
    mode("sgid", 0o2777);
    mode("priv", 0o700);
    mode("suid", 0o6777);
    // Set-ID bits a write, truncate or O_TRUNC by an unprivileged user
    // must kill (the group not executable, the writer not in the group:
    // the set-group-ID bit goes too, as the kernel's VFS decides).
    mode("sgid_noexec", 0o6666);
    mode("sgid_exec", 0o6777);
    mode("trunc_suid", 0o6666);
    mode("otrunc_suid", 0o6666);
    mode("ro", 0o444);
    mode("own", 0o644);
    mode("shared", 0o755);
}

#[test]
fn other_users_get_the_kernels_answers() {
    if !require_mount_privileges() {
        return;
    }
    // Both data paths: passthrough (writes never reach plyfs) and the
    // writeback cache (writes do, with the kernel's kill flag).
    for opts in ["allow_other", "allow_other,passthrough=0"] {
        other_users_scenarios(opts);
    }
}

fn other_users_scenarios(opts: &str) {
    let t = Twin::with_opts(1, opts, build);
    std::fs::set_permissions(t.scratch.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let scenarios: &[(u32, u32, u32, &[&str])] = &[
        (
            1000,
            1000,
            0o022,
            &[
                "create pub/a 666",
                "stat pub/a",
                "mkdir pub/d 777",
                "stat pub/d",
                "create sgid/f 2755",
                "stat sgid/f",
                "mkdir sgid/sub 755",
                "stat sgid/sub",
                "create sgid/sub/g 644",
                "stat sgid/sub/g",
                "read priv/secret",
                "ls priv",
                "create priv/x 644",
                "unlink priv/secret",
                "unlink sticky/theirs",
                "rename sticky/theirs pub/stolen",
                "unlink sticky/mine",
                "chmod sticky/theirs 777",
                "chown own 1001 1000",
                "chown own 1000 2000",
                "chown own 1000 1000",
                "chmod own 4755",
                "stat own",
                "write ro",
                "truncate ro 0",
                "chmod ro 644",
                "write ro",
                "stat ro",
                "utime sticky/theirs",
                "utime_now sticky/theirs",
                "utime own",
                "stat own",
                "setxattr own user.x",
                "setxattr sticky/theirs user.x",
                "access priv 4",
                "access own 2",
                "create shared/new 644",
                "link own pub/ownlink",
                "symlink own pub/ownsym",
            ],
        ),
        (
            1001,
            1001,
            0o027,
            &[
                "create pub/b 666",
                "stat pub/b",
                "write suid",
                "stat suid",
                "write sgid_noexec",
                "stat sgid_noexec",
                "write sgid_exec",
                "stat sgid_exec",
                "truncate trunc_suid 1",
                "stat trunc_suid",
                "otrunc otrunc_suid",
                "stat otrunc_suid",
                "write own",
                "create shared/x 644",
                "unlink sticky/theirs",
                "mkdir pub/e 777",
                "stat pub/e",
                "rmdir pub/d",
                "rename pub/a pub/a2",
                "ls sticky",
            ],
        ),
        (
            0,
            0,
            0o022,
            &[
                "chmod suid 6777",
                "chown suid 1000 1001",
                "stat suid",
                "stat sgid/f",
                "ls pub",
            ],
        ),
    ];
    for (uid, gid, umask, ops) in scenarios {
        let k = as_user(&t.kmnt(), *uid, *gid, *umask, ops);
        let p = as_user(&t.pmnt(), *uid, *gid, *umask, ops);
        assert_eq!(k.len(), ops.len());
        let diffs: Vec<String> = ops
            .iter()
            .zip(k.iter().zip(&p))
            .filter(|(_, (a, b))| a != b)
            .map(|(op, (a, b))| format!("{opts}: uid {uid}: {op}: kernel {a:?}, plyfs {b:?}"))
            .collect();
        assert!(
            diffs.is_empty(),
            "differences:\n{}\nkernel:\n{k:#?}",
            diffs.join("\n")
        );
        if std::env::var_os("PLYFS_TEST_SHOW").is_some() {
            for (op, r) in ops.iter().zip(&p) {
                eprintln!("uid {uid}: {op:<32} {r}");
            }
        }
        // The scenario means something: some things were refused.
        if *uid != 0 {
            assert!(
                k.iter()
                    .any(|r| r.contains("EACCES") || r.contains("EPERM")),
                "{k:?}"
            );
        }
    }
    t.assert_same_tree();
}

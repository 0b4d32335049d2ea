//! Registries: a real one (Debian's docker-registry, the CNCF
//! distribution registry) on a loopback port, with and without htpasswd
//! authentication, seeded by `skopeo copy`. plyfs pulls, mounts, commits
//! and pushes; podman pulls the same images from the same registry and
//! every view is compared; the registry's access log shows what was
//! fetched and sent. Also as a plain user through fusermount3, and the
//! failures a user meets: a wrong password, a missing tag, a corrupted
//! blob, a registry that is not there — one line each, the store as it
//! was.
//!
//! Needs root, docker-registry, skopeo, podman, htpasswd (apache2-utils)
//! and fuse3; under CI=true a missing one fails.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::images::*;
use common::oci::{Comp, ImageSpec, LayerTar, multi_arch_layout};
use common::podman::{Mode, MountProgram, PodmanStore};
use common::registry::{
    PASSWORD, Registry, USER, blob_digest, committed_digest, plyfs_fails, plyfs_run,
    podman_pull_tree, store_state,
};
use common::users::{TAR_CREATE, UserMounts, ci_user, require_tools, run_ok, tar_snapshot};
use common::*;

const PLYFS_REGISTRY: &str = env!("CARGO_BIN_EXE_plyfs-registry");

const TOOLS: &[&str] = &[
    "docker-registry",
    "skopeo",
    "podman",
    "htpasswd",
    "nm",
    "tar",
    "setpriv",
    "fusermount3",
    "useradd",
];

fn ready() -> bool {
    require_mount_privileges() && require_tools(TOOLS)
}

/// pull → mount (equal to podman's view of the same image from the same
/// registry) → change → commit → push (`skopeo inspect` shows the new
/// layer, podman pulls the change) → pull elsewhere (same digests, same
/// tree). `env` carries the credentials plyfs finds (auth files).
fn round_trip(s: &Scratch, reg: &Registry, env: &[(&str, &OsStr)]) {
    let a = reg.image("plyfs-test/a:1");
    let a2 = reg.image("plyfs-test/a:2");
    let store = s.path("store");
    let (out, _) = plyfs_run(&store, &["image", "pull", "-q", &a], env);
    let id = out.trim().to_string();
    assert_eq!(id.len(), 64, "pull prints the image id: {out}");
    let pstore = PodmanStore::new(&s.path("podman"), Mode::Root, MountProgram::Kernel, false);
    let creds = reg.creds.as_deref();
    let podman_a = podman_pull_tree(&pstore, &a, creds, &s.path("podman-a"));
    let inspected = pstore.podman_ok(&["image", "inspect", "--format", "{{.Id}}", &a]);
    assert_eq!(inspected, id, "plyfs and podman give the image one id");
    {
        let _m = mount_image(&store, &a, None, &s.path("mnt-a"));
        same(
            "plyfs pull + mount vs podman pull + mount",
            &podman_a,
            &tree_of(&s.path("mnt-a"), &s.path("plyfs-a")),
        );
    }

    let (upper, mp) = (s.path("ctr/upper"), s.path("ctr/mnt"));
    let changed = {
        let _m = mount_image(&store, &a, Some(&upper), &mp);
        run_ok(
            Command::new("sh").args(["-c", CHANGES]).current_dir(&mp),
            "the changes in the mount",
        );
        tree_of(&mp, &s.path("changed"))
    };
    let up = upper.to_str().unwrap();
    let (out, _) = plyfs_run(
        &store,
        &["commit", up, "--image", &a, "--tag", &a2, "--gzip"],
        env,
    );
    let layer = committed_digest(&out);
    let (pushed, err) = plyfs_run(&store, &["image", "push", &a2], env);
    let pushed = pushed.trim().to_string();
    assert!(err.contains("skipped: already exists"), "{err}");
    let info = reg.inspect("plyfs-test/a:2");
    let layers: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers.len(), 4, "{info}");
    assert_eq!(layers[3], layer, "skopeo inspect shows the committed layer");
    assert_eq!(info["Digest"].as_str(), Some(pushed.as_str()));
    let podman_a2 = podman_pull_tree(&pstore, &a2, creds, &s.path("podman-a2"));
    same("podman pull of the pushed image", &changed, &podman_a2);

    // Pushed again: every blob is there already, only the manifest goes.
    let uploads = |reg: &Registry| {
        reg.plyfs_requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
            .count()
    };
    let before = uploads(reg);
    let (_, err) = plyfs_run(&store, &["image", "push", &a2, &a2], env);
    assert_eq!(uploads(reg), before, "no blob sent twice:\n{err}");
    assert_eq!(err.matches("skipped: already exists").count(), 5, "{err}");

    // Elsewhere: another store pulls the same digests and the same tree.
    let elsewhere = s.path("store-elsewhere");
    plyfs_run(&elsewhere, &["image", "pull", "-q", &a2], env);
    let images: serde_json::Value =
        serde_json::from_slice(&std::fs::read(elsewhere.join("images.json")).unwrap()).unwrap();
    assert_eq!(
        images["images"][0]["manifest"]["digest"].as_str(),
        Some(pushed.as_str())
    );
    let _m = mount_image(&elsewhere, &a2, None, &s.path("mnt-elsewhere"));
    same(
        "the pushed image pulled elsewhere",
        &changed,
        &tree_of(&s.path("mnt-elsewhere"), &s.path("elsewhere")),
    );
}

/// A multi-platform image: this machine's platform by default, another
/// with --platform, one the index lacks refused in one line.
fn multi_arch(s: &Scratch, reg: &Registry) {
    let layout = s.path("multi");
    multi_arch_layout(&layout);
    run_ok(
        Command::new("skopeo")
            .args(["copy", "-q", "--all", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:multi", layout.display()))
            .arg(format!("docker://{}", reg.image("plyfs-test/multi:1"))),
        "skopeo copy --all",
    );
    let multi = reg.image("plyfs-test/multi:1");
    let arch_of = |store: &str, platform: Option<&str>| {
        let store = s.path(store);
        let mut args = vec!["image", "pull", "-q"];
        if let Some(p) = platform {
            args.extend(["--platform", p]);
        }
        args.push(&multi);
        plyfs_run(&store, &args, &[]);
        let mp = s.path(&format!("mnt-{}", store.display()).replace('/', "-"));
        let _m = mount_image(&store, &multi, None, &mp);
        std::fs::read_to_string(mp.join("etc/arch")).unwrap()
    };
    let native = match std::env::consts::ARCH {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    };
    if let Some(native) = native {
        assert_eq!(arch_of("store-native", None), native);
    }
    assert_eq!(arch_of("store-arm64", Some("linux/arm64")), "arm64");
    assert_eq!(arch_of("store-amd64", Some("linux/amd64")), "amd64");
    plyfs_fails(
        &s.path("store-s390x"),
        &["image", "pull", "-q", "--platform", "linux/s390x", &multi],
        &[],
        "no image for platform linux/s390x (the index has linux/amd64, linux/arm64)",
    );
}

/// A second image sharing A's base layer, with a top layer of its own.
fn image_b_of(base: Vec<u8>) -> ImageSpec {
    let mut t = LayerTar::new();
    t.dir("etc/", 0o755, 0).file("etc/b-only", "b\n", 0o644, 0);
    ImageSpec {
        name: B.into(),
        layers: vec![(base, Comp::None), (t.finish(), Comp::Gzip)],
    }
}

#[test]
fn anonymous_registry_pull_mount_commit_push() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let reg = Registry::start(&s.path("registry"), false);
    let a = write_archive(&s, "a.tar", &[image_a()]);
    let b_spec = image_b_of(base_layer());
    let b_top = common::oci::compress(&b_spec.layers[1].0, Comp::Gzip);
    let b = write_archive(&s, "b.tar", &[b_spec]);
    reg.seed(&a, "plyfs-test/a:1");
    reg.seed(&b, "plyfs-test/b:1");
    round_trip(&s, &reg, &[]);
    multi_arch(&s, &reg);

    // B shares A's base: the store has it, so it is not fetched again.
    // B's own layer was cut off half-way: the pull resumes it.
    let store = s.path("store");
    let top = blob_digest(&b_top);
    let half = b_top.len() / 2;
    std::fs::write(store.join("downloads").join(&top[7..]), &b_top[..half]).unwrap();
    let base_gets = |reg: &Registry| {
        let base = reg.inspect("plyfs-test/b:1")["Layers"][0]
            .as_str()
            .unwrap()
            .to_string();
        reg.blob_gets(&base).len()
    };
    // Fetched once by the store, once by the store elsewhere.
    assert_eq!(base_gets(&reg), 2);
    let (_, err) = plyfs_run(
        &store,
        &["image", "pull", &reg.image("plyfs-test/b:1")],
        &[],
    );
    assert!(err.contains("skipped: already in the store"), "{err}");
    assert_eq!(base_gets(&reg), 2, "the shared base is not fetched again");
    let top_gets = reg.blob_gets(&top);
    assert_eq!(top_gets.len(), 1, "{top_gets:?}");
    assert_eq!(
        top_gets[0].status, 206,
        "resumed with a range: {top_gets:?}"
    );
    assert_eq!(top_gets[0].bytes, (b_top.len() - half) as u64);
    assert_eq!(
        std::fs::read_dir(store.join("downloads")).unwrap().count(),
        0,
        "downloads taken by the store"
    );
    {
        let _m = mount_image(&store, &reg.image("plyfs-test/b:1"), None, &s.path("mnt-b"));
        assert_eq!(
            std::fs::read_to_string(s.path("mnt-b/etc/b-only")).unwrap(),
            "b\n"
        );
    }

    // A kept part that is wrong: the resumed whole fails its digest, so
    // the pull starts that blob over, and the store never sees the bad part.
    plyfs_run(&store, &["image", "rm", &reg.image("plyfs-test/b:1")], &[]);
    std::fs::write(store.join("downloads").join(&top[7..]), vec![0u8; half]).unwrap();
    plyfs_run(
        &store,
        &["image", "pull", "-q", &reg.image("plyfs-test/b:1")],
        &[],
    );
    let gets: Vec<(u16, u64)> = reg
        .blob_gets(&top)
        .iter()
        .map(|r| (r.status, r.bytes))
        .collect();
    let whole = b_top.len() as u64;
    let rest = whole - half as u64;
    assert_eq!(
        gets,
        [(206, rest), (206, rest), (200, whole)],
        "resumed, then started over"
    );

    // Two pulls of one image into one store at once: each blob fetched
    // once (the other waits on its download), both succeed.
    let shared = s.path("store-shared");
    let b1 = reg.image("plyfs-test/b:1");
    let before = reg.blob_gets(&top).len();
    let spawn = || {
        Command::new(PLYFS)
            .args(["image", "pull", "-q", &b1, "--store"])
            .arg(&shared)
            .output()
            .unwrap()
    };
    let (o1, o2) = std::thread::scope(|sc| {
        let h = sc.spawn(spawn);
        (spawn(), h.join().unwrap())
    });
    for o in [&o1, &o2] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(o1.stdout, o2.stdout, "the same image id");
    assert_eq!(reg.blob_gets(&top).len(), before + 1, "fetched once");
}

#[test]
fn htpasswd_registry_auth_files_and_failures() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let reg = Registry::start(&s.path("registry"), true);
    let a = write_archive(&s, "a.tar", &[image_a()]);
    reg.seed(&a, "plyfs-test/a:1");
    let store = s.path("store");
    let nowhere = s.path("no-such-auth.json");
    let anon = [("REGISTRY_AUTH_FILE", nowhere.as_os_str())];
    let a1 = reg.image("plyfs-test/a:1");

    // No credentials, wrong ones, no such tag, no registry: one line each.
    std::fs::create_dir_all(&store).unwrap();
    plyfs_run(&store, &["image", "ls"], &[]);
    let before = store_state(&store);
    plyfs_fails(
        &store,
        &["image", "pull", "-q", &a1],
        &anon,
        "none were found",
    );
    let wrong = format!("{USER}:wrong");
    plyfs_fails(
        &store,
        &["image", "pull", "-q", "--creds", &wrong, &a1],
        &anon,
        "refused the credentials of plyfs",
    );
    let creds = reg.creds.clone().unwrap();
    let missing = reg.image("plyfs-test/a:missing");
    plyfs_fails(
        &store,
        &["image", "pull", "-q", "--creds", &creds, &missing],
        &anon,
        "manifest unknown",
    );
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    plyfs_fails(
        &store,
        &[
            "image",
            "pull",
            "-q",
            &format!("127.0.0.1:{closed}/plyfs-test/a:1"),
        ],
        &anon,
        "unreachable",
    );
    // A blob changed in the registry's storage (same length).
    let mut t = LayerTar::new();
    // Hardly compressible, so that the blob is large enough to edit.
    let mut x: u64 = 7;
    let noise: String = (0..20_000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            char::from(b'a' + (x >> 59) as u8)
        })
        .collect();
    t.dir("etc/", 0o755, 0).file("etc/c", &noise, 0o644, 0);
    let c_layer = t.finish();
    let c = write_archive(
        &s,
        "c.tar",
        &[ImageSpec {
            name: "localhost/plyfs-test/c:1".into(),
            layers: vec![(c_layer, Comp::None)],
        }],
    );
    reg.seed(&c, "plyfs-test/c:1");
    let c_blob = reg.inspect("plyfs-test/c:1")["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let data = reg.blob_file(&c_blob);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&data, bytes).unwrap();
    plyfs_fails(
        &store,
        &[
            "image",
            "pull",
            "-q",
            "--creds",
            &creds,
            &reg.image("plyfs-test/c:1"),
        ],
        &anon,
        "digest mismatch",
    );
    assert!(
        before == store_state(&store),
        "a failed pull leaves the store as it was"
    );

    // plyfs image login checks the password and keeps it where podman would.
    let login_file = s.path("login/auth.json");
    let login = |pw: &str| {
        let mut c = Command::new(PLYFS);
        c.args(["image", "login", "-u", USER, "--password-stdin", &reg.host])
            .env("REGISTRY_AUTH_FILE", &login_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{pw}").unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = login("wrong");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.lines().count() == 1, "{err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!login_file.exists(), "refused credentials are not kept");
    let good = login(PASSWORD);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let le = [("REGISTRY_AUTH_FILE", login_file.as_os_str())];
    let (id, _) = plyfs_run(&s.path("store-login"), &["image", "pull", "-q", &a1], &le);
    assert_eq!(id.trim().len(), 64);

    // podman login writes podman's auth file; plyfs reads it.
    let authfile = s.path("auth.json");
    let pstore = PodmanStore::new(
        &s.path("podman-login"),
        Mode::Root,
        MountProgram::Kernel,
        false,
    );
    pstore.podman_ok(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile.to_str().unwrap(),
        "-u",
        USER,
        "-p",
        PASSWORD,
        &reg.host,
    ]);
    drop(pstore);
    let env = [("REGISTRY_AUTH_FILE", authfile.as_os_str())];
    round_trip(&s, &reg, &env);
}

#[test]
fn plain_user_pulls_mounts_commits_pushes() {
    if !ready() {
        return;
    }
    let s = open_scratch();
    let user = ci_user();
    let reg = Registry::start(&s.path("registry"), true);
    let a = write_archive(&s, "a.tar", &[readable_image()]);
    reg.seed(&a, "plyfs-test/a:1");
    // Both executables in one directory: plyfs finds plyfs-registry there.
    let bin = s.mkdir("bin");
    for (from, name) in [(PLYFS, "plyfs"), (PLYFS_REGISTRY, "plyfs-registry")] {
        std::fs::copy(from, bin.join(name)).unwrap();
        std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let base = s.mkdir("user");
    let home = base.join("home");
    // docker's config file, as `docker login` leaves it.
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        home.join(".docker/config.json"),
        serde_json::json!({"auths": {format!("http://{}", reg.host): {"auth": token}}}).to_string(),
    )
    .unwrap();
    user.chown_tree(&base);
    let store = base.join("store");
    let plyfs = |args: &[&OsStr]| {
        let mut c = user.command(bin.join("plyfs"), &home);
        c.args(args)
            .env("XDG_DATA_HOME", base.join("data"))
            .env("PLYFS_STORE", &store);
        run_ok(&mut c, &format!("plyfs {args:?} as {}", user.name))
    };
    let (a1, a2) = (reg.image("plyfs-test/a:1"), reg.image("plyfs-test/mine:1"));
    plyfs(&[os("image"), os("pull"), os("-q"), os(&a1)]);
    let (upper, mp) = (base.join("upper"), base.join("mnt"));
    std::fs::create_dir_all(&mp).unwrap();
    user.chown_tree(&base);
    let _guard = UserMounts {
        user,
        home: home.clone(),
        mps: vec![mp.clone()],
        needle: base.to_string_lossy().into_owned(),
    };
    plyfs(&[
        os("mount"),
        os("--image"),
        os(&a1),
        os("--upper"),
        upper.as_os_str(),
        mp.as_os_str(),
    ]);
    run_ok(
        user.command("sh", &home)
            .args([
                "-c",
                "cd \"$1\"/work && echo new > newfile && echo more >> notes && rm -r deep",
                "sh",
            ])
            .arg(&mp),
        "the user's changes",
    );
    let changed = tar_snapshot(
        user.command("sh", &home)
            .args(["-c", &format!("cd \"$1\" && {TAR_CREATE}"), "sh"])
            .arg(&mp),
        &s.path("user-changed"),
    );
    run_ok(
        user.command("fusermount3", &home).arg("-u").arg(&mp),
        "fusermount3 -u",
    );
    plyfs(&[
        os("commit"),
        upper.as_os_str(),
        os("--image"),
        os(&a1),
        os("--tag"),
        os(&a2),
    ]);
    plyfs(&[os("image"), os("push"), os("-q"), os(&a2)]);
    assert_eq!(
        reg.inspect("plyfs-test/mine:1")["Layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // Root pulls what the user pushed: the user's change, as podman shows it.
    let pstore = PodmanStore::new(&s.path("podman"), Mode::Root, MountProgram::Kernel, false);
    let pulled = podman_pull_tree(&pstore, &a2, reg.creds.as_deref(), &s.path("podman-mine"));
    for f in ["work/newfile", "work/notes"] {
        assert_eq!(
            changed.objs[Path::new(f)].content,
            pulled.objs[Path::new(f)].content,
            "{f}"
        );
    }
    assert!(!pulled.objs.contains_key(Path::new("work/deep")));
}

/// The `plyfs` executable (and so the mount daemon) links no HTTP stack
/// and no async runtime; `plyfs-registry` does. Without it, `plyfs image
/// pull` says so in one line.
#[test]
fn plyfs_links_no_http_stack() {
    if !require_tools(&["nm"]) {
        return;
    }
    let count = |bin: &str, pattern: &str| {
        let out = run_ok(Command::new("nm").arg(bin), "nm");
        out.lines()
            .filter(|l| pattern.split('|').any(|p| l.to_lowercase().contains(p)))
            .count()
    };
    assert!(count(PLYFS, "fuser") > 0, "nm reads plyfs's symbols");
    assert_eq!(
        count(PLYFS, "tokio|reqwest|hyper"),
        0,
        "plyfs links an HTTP stack"
    );
    assert!(count(PLYFS_REGISTRY, "tokio|reqwest|hyper") > 0);

    let s = Scratch::new();
    let lone = s.path("plyfs");
    std::fs::copy(PLYFS, &lone).unwrap();
    let out = Command::new(&lone)
        .args(["image", "pull", "localhost:5000/a:1"])
        .env("PATH", s.path("empty"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("plyfs-registry"), "{err}");
}

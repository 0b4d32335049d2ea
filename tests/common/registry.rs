//! A real registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free loopback port, its configuration and
//! storage in the test's own directory, with or without htpasswd
//! authentication; seeded with `skopeo copy`; its access log read back
//! to count what clients asked for. Dropping it stops the server (by
//! its pid: only what the test started).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::ffi::OsStr;

use super::cli::PLYFS;
use super::podman::PodmanStore;
use super::tree::Tree;
use super::users::{run, run_ok};

pub const USER: &str = "plyfs";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub host: String,
    pub dir: PathBuf,
    /// `USER:PASSWORD` when the registry wants them.
    pub creds: Option<String>,
    log: PathBuf,
    child: Child,
}

/// One line of the access log.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub agent: String,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl Registry {
    /// Starts a registry in `dir` (created); with `auth`, htpasswd
    /// (bcrypt, made by `htpasswd -B`) for [`USER`]/[`PASSWORD`].
    pub fn start(dir: &Path, auth: bool) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let mut auth_conf = String::new();
        if auth {
            let line = run_ok(
                Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]),
                "htpasswd -B",
            );
            std::fs::write(dir.join("htpasswd"), line.trim_end().to_string() + "\n").unwrap();
            auth_conf = format!(
                "auth:\n  htpasswd:\n    realm: plyfs-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        Self::launch(dir, &auth_conf, auth)
    }

    /// Starts a registry that wants bearer tokens from `realm`, signed by
    /// the key of the certificate `cert` (see [`super::token`]).
    pub fn start_token(dir: &Path, realm: &str, cert: &Path) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let auth_conf = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            super::token::SERVICE,
            super::token::ISSUER,
            cert.display()
        );
        Self::launch(dir, &auth_conf, true)
    }

    /// Starts a registry that speaks only TLS, with a self-signed
    /// certificate for 127.0.0.1 (made by `openssl`), and no accounts.
    pub fn start_tls(dir: &Path) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req -x509",
        );
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        Self::launch(dir, &tls, false)
    }

    /// `extra`: YAML appended to the configuration (under `http:` first).
    fn launch(dir: &Path, extra: &str, auth: bool) -> Registry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: plyfs-test-secret\n{extra}",
            dir.join("storage").display()
        );
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = dir.join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start docker-registry");
        let mut r = Registry {
            host,
            dir: dir.to_path_buf(),
            creds: auth.then(|| format!("{USER}:{PASSWORD}")),
            log,
            child,
        };
        let start = Instant::now();
        while TcpStream::connect(&r.host).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{}", r.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {}:\n{}",
                r.host,
                r.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `host/repo:tag` on this registry.
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }

    /// Every request of the access log so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                // IP - - [time] "METHOD PATH PROTO" STATUS BYTES "REFERER" "AGENT"
                let q: Vec<&str> = l.split('"').collect();
                let mut req = q.get(1)?.split(' ');
                let (method, path) = (req.next()?, req.next()?);
                let mut nums = q.get(2)?.split_whitespace();
                Some(Request {
                    method: method.into(),
                    path: path.into(),
                    status: nums.next()?.parse().ok()?,
                    bytes: nums.next()?.parse().ok()?,
                    agent: q.get(5).unwrap_or(&"").to_string(),
                })
            })
            .collect()
    }

    /// The requests plyfs made (by its user agent).
    pub fn plyfs_requests(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.agent.starts_with("plyfs/"))
            .collect()
    }

    /// plyfs's successful GETs of blob `digest` (any repository).
    pub fn blob_gets(&self, digest: &str) -> Vec<Request> {
        let tail = format!("/blobs/{digest}");
        self.plyfs_requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&tail) && r.status / 100 == 2)
            .collect()
    }

    /// Where the registry keeps blob `digest`'s bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// `skopeo copy oci-archive:ARCHIVE docker://HOST/REPO_TAG`.
    pub fn seed(&self, archive: &Path, repo_tag: &str) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "-q", "--dest-tls-verify=false"]);
        if let Some(creds) = &self.creds {
            c.arg("--dest-creds").arg(creds);
        }
        c.arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}", self.image(repo_tag)));
        run_ok(&mut c, "skopeo copy");
    }

    /// `skopeo inspect` of an image here, as JSON.
    pub fn inspect(&self, repo_tag: &str) -> serde_json::Value {
        let mut c = Command::new("skopeo");
        c.args(["inspect", "--tls-verify=false"]);
        if let Some(creds) = &self.creds {
            c.arg("--creds").arg(creds);
        }
        c.arg(format!("docker://{}", self.image(repo_tag)));
        serde_json::from_str(&run_ok(&mut c, "skopeo inspect")).expect("skopeo inspect JSON")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `plyfs ARGS --store STORE` with `env`; (exit code, stdout, stderr).
pub fn plyfs_env(store: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> (i32, String, String) {
    let mut c = Command::new(PLYFS);
    c.args(args).arg("--store").arg(store);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run(&mut c);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `plyfs ARGS --store STORE`, which must succeed: (stdout, stderr).
pub fn plyfs_run(store: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> (String, String) {
    let (code, out, err) = plyfs_env(store, args, env);
    assert_eq!(code, 0, "plyfs {args:?} failed:\n{out}\n{err}");
    (out, err)
}

/// A failure: exit code 1 and one line on stderr holding `words`.
pub fn plyfs_fails(store: &Path, args: &[&str], env: &[(&str, &OsStr)], words: &str) -> String {
    let (code, out, err) = plyfs_env(store, args, env);
    assert_eq!(code, 1, "plyfs {args:?} should fail:\n{out}\n{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "plyfs {args:?}: one line, not:\n{err}");
    assert!(
        lines[0].starts_with("plyfs: ") && lines[0].contains(words),
        "plyfs {args:?}: expected {words:?} in:\n{err}"
    );
    err
}

/// The digest of the blob `data` would be, and its layer's diff-id.
pub fn blob_digest(data: &[u8]) -> String {
    plyfs_image::Digest::of(data).to_string()
}

/// Every file of a store (path, size) and its images.json: what a failed
/// command must leave as it was.
pub fn store_state(store: &Path) -> (Vec<(String, u64)>, String) {
    let mut v = Vec::new();
    fn walk(root: &Path, dir: &Path, v: &mut Vec<(String, u64)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "lock" {
                continue;
            }
            if md.is_dir() {
                walk(root, &p, v);
            }
            v.push((rel, if md.is_file() { md.len() } else { 0 }));
        }
    }
    walk(store, store, &mut v);
    v.sort();
    let images = std::fs::read_to_string(store.join("images.json")).unwrap_or_default();
    (v, images)
}

/// `podman pull` of `image` (with `creds`) and the rootfs it mounts.
pub fn podman_pull_tree(p: &PodmanStore, image: &str, creds: Option<&str>, dest: &Path) -> Tree {
    let mut args = vec!["pull", "-q", "--tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(image);
    p.podman_ok(&args);
    let ctr = p.podman_ok(&["create", image, "/bin/true"]);
    let mp = p.mount(&ctr);
    let t = p.snapshot(&mp, dest);
    p.unmount(&ctr);
    t
}

/// The layer digest `commit` printed.
pub fn committed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("digest  "))
        .unwrap_or_else(|| panic!("no digest in:\n{out}"))
        .trim()
        .to_string()
}

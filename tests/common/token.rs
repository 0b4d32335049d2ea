//! A bearer-token server for the registry's `auth: token` (the docker
//! token protocol, as Docker Hub and most registries with accounts use
//! it): `GET /token?service=..&scope=repository:NAME:pull,push` with HTTP
//! basic credentials answers a JWT, RS256-signed by a key whose
//! self-signed certificate the registry trusts (made and used through the
//! `openssl` command). Test plumbing on loopback only, serving one
//! request per connection; dropping it stops its thread.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::registry::{PASSWORD, USER};
use super::users::run_ok;

pub const SERVICE: &str = "plyfs-test-registry";
pub const ISSUER: &str = "plyfs-test-issuer";

pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`: the registry's realm.
    pub realm: String,
    pub cert: PathBuf,
    /// Tokens handed out, and requests refused.
    pub issued: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=plyfs-test-token"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req -x509",
        );
        run_ok(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert)
                .args(["-out"])
                .arg(dir.join("cert.der")),
            "openssl x509 -outform DER",
        );
        let x5c = STANDARD.encode(std::fs::read(dir.join("cert.der")).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (issued, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let ctx = Signer {
            key,
            x5c,
            dir: dir.to_path_buf(),
        };
        let thread = {
            let (stop, issued, refused) = (stop.clone(), issued.clone(), refused.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        match serve(c, &ctx) {
                            Some(true) => issued.fetch_add(1, Ordering::SeqCst),
                            _ => refused.fetch_add(1, Ordering::SeqCst),
                        };
                    }
                }
            })
        };
        TokenServer {
            realm: format!("http://{addr}/token"),
            cert,
            issued,
            refused,
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Signer {
    key: PathBuf,
    x5c: String,
    dir: PathBuf,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request; Some(true) when a token went out.
fn serve(conn: TcpStream, s: &Signer) -> Option<bool> {
    let mut r = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let target = line.split(' ').nth(1)?.to_string();
    let mut authorized = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
            && let Some(b) = v.trim().strip_prefix("Basic ")
        {
            let want = STANDARD.encode(format!("{USER}:{PASSWORD}"));
            authorized = b.trim() == want;
        }
    }
    let mut conn = conn;
    if !authorized {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return Some(false);
    }
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut access = Vec::new();
    for kv in query.split('&') {
        if let Some(("scope", v)) = kv.split_once('=') {
            // repository:NAME:ACTIONS (NAME may hold no colon here)
            let v = unescape(v);
            let mut parts = v.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            access.push(serde_json::json!({
                "type": kind, "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [s.x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 600, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signing = s
        .dir
        .join(format!("input.{:?}", std::thread::current().id()));
    std::fs::write(&signing, &input).ok()?;
    let sig = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&s.key)
        .arg(&signing)
        .output()
        .ok()?;
    if !sig.status.success() {
        return None;
    }
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig.stdout));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    Some(true)
}

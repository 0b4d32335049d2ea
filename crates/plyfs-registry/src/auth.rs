//! Credentials, found where the ecosystem's tools keep them
//! (containers-auth.json(5)): `--creds`; else the auth file given
//! (`--authfile`, `REGISTRY_AUTH_FILE`) alone; else podman's
//! `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/UID/` without
//! it), `$XDG_CONFIG_HOME/containers/auth.json`, and docker's
//! `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`), first match
//! wins. In a file, the most specific key wins: `host/ns/repo`, then
//! `host/ns`, then `host`; docker's legacy spellings (`https://host/v1/`)
//! name the host.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Where credentials may come from (the command line's part).
#[derive(Clone, Debug, Default)]
pub struct AuthOptions {
    /// `USER[:PASSWORD]`, as podman's `--creds`.
    pub creds: Option<String>,
    /// `--authfile`: this file only.
    pub authfile: Option<PathBuf>,
}

impl AuthOptions {
    /// The file given explicitly, by option or `REGISTRY_AUTH_FILE`.
    fn explicit_file(&self) -> Option<PathBuf> {
        self.authfile.clone().or_else(|| {
            std::env::var_os("REGISTRY_AUTH_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// The files consulted, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        if let Some(f) = self.explicit_file() {
            return vec![f];
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let mut v = vec![runtime_auth_file()];
        let config_home = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config")));
        if let Some(c) = config_home {
            v.push(c.join("containers/auth.json"));
        }
        match env("DOCKER_CONFIG") {
            Some(d) => v.push(d.join("config.json")),
            None => {
                if let Some(h) = env("HOME") {
                    v.push(h.join(".docker/config.json"));
                }
            }
        }
        v
    }

    /// Where `login` writes: the explicit file, else podman's runtime one.
    pub fn login_file(&self) -> PathBuf {
        self.explicit_file().unwrap_or_else(runtime_auth_file)
    }

    /// The credentials for `reference` (anonymous when none are found).
    pub fn resolve(&self, reference: &Reference) -> Result<RegistryAuth> {
        if let Some(c) = &self.creds {
            let (user, pass) = c.split_once(':').unwrap_or((c, ""));
            return Ok(RegistryAuth::Basic(user.into(), pass.into()));
        }
        for f in self.files() {
            if let Some(a) = lookup(&f, reference)? {
                tracing::debug!(
                    "credentials for {} from {}",
                    reference.registry(),
                    f.display()
                );
                return Ok(a);
            }
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// podman's per-session auth file.
fn runtime_auth_file() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("containers/auth.json"),
        None => PathBuf::from(format!(
            "/run/containers/{}/auth.json",
            plyfs_sys::process::geteuid()
        )),
    }
}

/// A key of `auths` as a plain `host[/path]` (docker's legacy keys carry
/// a scheme and a `/v1/` suffix; `index.docker.io` is `docker.io`).
fn normalize_key(k: &str) -> String {
    let k = k
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    match k.split_once('/') {
        Some(("index.docker.io", rest)) => format!("docker.io/{rest}"),
        _ if k == "index.docker.io" => "docker.io".into(),
        _ => k.to_string(),
    }
}

/// The keys that may name `reference`'s credentials, most specific first.
fn candidates(reference: &Reference) -> Vec<String> {
    let mut v = Vec::new();
    let mut path = format!("{}/{}", reference.registry(), reference.repository());
    loop {
        v.push(path.clone());
        match path.rsplit_once('/') {
            Some((head, _)) => path = head.to_string(),
            None => break,
        }
    }
    v
}

fn read_file(path: &Path) -> Result<Option<Value>> {
    let bad = |what: String| Error::AuthFile {
        path: path.display().to_string(),
        what,
    };
    match std::fs::read(path) {
        Ok(raw) if raw.iter().all(u8::is_ascii_whitespace) => Ok(None),
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| bad(format!("does not read as JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn lookup(path: &Path, reference: &Reference) -> Result<Option<RegistryAuth>> {
    let Some(doc) = read_file(path)? else {
        return Ok(None);
    };
    let Some(auths) = doc.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    for want in candidates(reference) {
        let Some((_, entry)) = auths.iter().find(|(k, _)| normalize_key(k) == want) else {
            continue;
        };
        return decode(entry).map(Some).map_err(|what| Error::AuthFile {
            path: path.display().to_string(),
            what: format!("entry {want}: {what}"),
        });
    }
    Ok(None)
}

/// One entry: `auth` (base64 of `user:password`), or `username` and
/// `password`.
fn decode(entry: &Value) -> std::result::Result<RegistryAuth, String> {
    if let Some(a) = entry
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|e| format!("auth is not base64: {e}"))?;
        let s = String::from_utf8(raw).map_err(|_| "auth is not UTF-8".to_string())?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| "auth is not user:password".to_string())?;
        return Ok(RegistryAuth::Basic(u.into(), p.into()));
    }
    match (
        entry.get("username").and_then(Value::as_str),
        entry.get("password").and_then(Value::as_str),
    ) {
        (Some(u), Some(p)) => Ok(RegistryAuth::Basic(u.into(), p.into())),
        _ => Err("no auth, no username and password (credential helpers are not read)".into()),
    }
}

/// Records `user:password` for `registry` in `path` (created 0600 in a
/// 0700 directory if missing), keeping everything else in it.
pub fn store_credentials(path: &Path, registry: &str, user: &str, password: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let bad = |what: String| Error::AuthFile {
        path: path.display().to_string(),
        what,
    };
    let mut doc = read_file(path)?.unwrap_or_else(|| Value::Object(Map::new()));
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let auths = obj
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| bad("auths is not an object".into()))?;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    auths.insert(registry.into(), serde_json::json!({ "auth": token }));
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| bad(e.to_string()))?;
    }
    let raw = serde_json::to_vec_pretty(&doc).map_err(|e| bad(e.to_string()))?;
    // Written beside and renamed, so a reader never sees half a file.
    let tmp = path.with_extension(format!("plyfs-tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&raw)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        bad(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_entries() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("localhost:5000"), "localhost:5000");
        assert_eq!(normalize_key("http://localhost:5000/v2/"), "localhost:5000");
        let r: Reference = "localhost:5000/ns/app:1".parse().unwrap();
        assert_eq!(
            candidates(&r),
            [
                "localhost:5000/ns/app",
                "localhost:5000/ns",
                "localhost:5000"
            ]
        );
        let e = serde_json::json!({"auth": "dTpwOng="});
        match decode(&e).unwrap() {
            RegistryAuth::Basic(u, p) => assert_eq!((u.as_str(), p.as_str()), ("u", "p:x")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn most_specific_key_wins() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        store_credentials(&f, "localhost:5000", "a", "1").unwrap();
        store_credentials(&f, "localhost:5000/ns", "b", "2").unwrap();
        let r: Reference = "localhost:5000/ns/app:1".parse().unwrap();
        match lookup(&f, &r).unwrap() {
            Some(RegistryAuth::Basic(u, _)) => assert_eq!(u, "b"),
            other => panic!("{other:?}"),
        }
        let r: Reference = "localhost:5000/other:1".parse().unwrap();
        match lookup(&f, &r).unwrap() {
            Some(RegistryAuth::Basic(u, _)) => assert_eq!(u, "a"),
            other => panic!("{other:?}"),
        }
    }
}

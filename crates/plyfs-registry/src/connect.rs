//! Reaching a registry: which scheme, which certificates, which
//! credentials, and the session a pull or push goes through.
//!
//! As podman and skopeo: `--tls-verify=false` accepts any certificate and
//! falls back to plain http when the registry speaks no TLS at all; a
//! loopback registry (`localhost`, `127.0.0.0/8`, `::1`) gets that
//! fallback too (docker's rule for local registries), still verifying a
//! certificate it is offered. Everything else is https, verified.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use crate::auth::AuthOptions;
use crate::error::{Error, Result, classify};

/// How to reach registries (the command line's part).
#[derive(Clone, Debug, Default)]
pub struct Transport {
    /// `--tls-verify`: unset is true, with plain http allowed on loopback.
    pub tls_verify: Option<bool>,
}

/// A client that reached `reference`'s registry and authenticated for
/// one operation.
pub(crate) struct Session {
    pub client: Client,
    pub reference: Reference,
    /// The reference as the user wrote it, for messages.
    pub shown: String,
    pub auth: RegistryAuth,
}

const USER_AGENT: &str = concat!("plyfs/", env!("CARGO_PKG_VERSION"));

/// Whether `registry` (`host[:port]`) is this machine.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The schemes to try, in order, and whether certificates are checked.
fn attempts(registry: &str, t: &Transport) -> Vec<(ClientProtocol, bool)> {
    match t.tls_verify {
        Some(false) => vec![
            (ClientProtocol::Https, false),
            (ClientProtocol::Http, false),
        ],
        _ if is_loopback(registry) => {
            vec![(ClientProtocol::Https, true), (ClientProtocol::Http, true)]
        }
        _ => vec![(ClientProtocol::Https, true)],
    }
}

fn client(protocol: ClientProtocol, verify: bool) -> Result<Client> {
    let config = ClientConfig {
        protocol,
        accept_invalid_certificates: !verify,
        // Indexes are resolved here (`--platform`), from the raw bytes.
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    };
    Client::try_from(config)
        .map_err(|e| Error::Usage(format!("cannot set up the HTTP client: {e}")))
}

/// Parses `host[:port]/name[:tag][@sha256:…]`.
pub(crate) fn parse_reference(s: &str) -> Result<Reference> {
    s.parse::<Reference>()
        .map_err(|e| Error::Usage(format!("{s}: not an image reference ({e})")))
}

impl Session {
    /// Reaches the registry of `shown` and authenticates for `op`: the
    /// first request (`/v2/`) also tells which scheme the registry speaks.
    pub(crate) async fn open(
        shown: &str,
        transport: &Transport,
        auth: &AuthOptions,
        op: RegistryOperation,
    ) -> Result<Session> {
        let reference = parse_reference(shown)?;
        let registry = reference.resolve_registry().to_string();
        let creds = auth.resolve(&reference)?;
        let mut last = None;
        for (protocol, verify) in attempts(&registry, transport) {
            let c = client(protocol, verify)?;
            match c.auth(&reference, &creds, op).await {
                Ok(_) => {
                    return Ok(Session {
                        client: c,
                        reference,
                        shown: shown.to_string(),
                        auth: creds,
                    });
                }
                Err(e) => {
                    let e = in_terms_of(classify(shown, &registry, e), &registry, &creds);
                    // A registry that speaks TLS with a certificate we do not
                    // trust must not be retried in plain http.
                    if let Error::Unreachable { why, .. } = &e
                        && verify
                        && why.contains("certificate")
                    {
                        let at = why.find("invalid peer certificate").unwrap_or(0);
                        return Err(Error::Certificate {
                            registry,
                            why: why[at..].to_string(),
                        });
                    }
                    if !matches!(e, Error::Unreachable { .. }) {
                        return Err(e);
                    }
                    tracing::debug!("{e}; trying the next scheme");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Unreachable {
            registry,
            why: "no scheme to try".into(),
        }))
    }

    pub(crate) fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The client's error for this session, classified.
    pub(crate) fn error(&self, e: oci_client::errors::OciDistributionError) -> Error {
        let e = classify(&self.shown, self.registry(), e);
        in_terms_of(e, self.registry(), &self.auth)
    }

    /// The same repository at `digest` (a manifest an index names).
    pub(crate) fn at_digest(&self, digest: &str) -> Reference {
        self.reference.clone_with_digest(digest.to_string())
    }
}

/// A refusal explained by the credentials that were used (the registry's
/// own words say little: "authentication required").
fn in_terms_of(e: Error, registry: &str, auth: &RegistryAuth) -> Error {
    let Error::Unauthorized { reference, .. } = e else {
        return e;
    };
    let why = match auth {
        RegistryAuth::Anonymous => format!(
            "{registry} wants credentials and none were found (--creds, --authfile, plyfs image login, podman's or docker's auth file)"
        ),
        RegistryAuth::Basic(user, _) => format!("{registry} refused the credentials of {user}"),
        RegistryAuth::Bearer(_) => format!("{registry} refused the token"),
    };
    Error::Unauthorized { reference, why }
}

/// `login REGISTRY`: checks `user`/`password` with the registry (a
/// listing of a repository nobody has: refused credentials fail, an
/// unknown repository means they were taken) and records them in the
/// auth file podman reads. Returns that file.
pub fn login(
    registry: &str,
    user: &str,
    password: &str,
    transport: &Transport,
    auth: &AuthOptions,
) -> Result<std::path::PathBuf> {
    let probe = format!("{registry}/plyfs-login-check");
    let opts = AuthOptions {
        creds: Some(format!("{user}:{password}")),
        authfile: auth.authfile.clone(),
    };
    crate::block_on(async {
        let s = Session::open(&probe, transport, &opts, RegistryOperation::Pull).await?;
        match s
            .client
            .list_tags(&s.reference, &s.auth, Some(1), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match s.error(e) {
                Error::UnknownRepository { .. } | Error::UnknownTag { .. } => Ok(()),
                e @ Error::Unauthorized { .. } | e @ Error::Unreachable { .. } => Err(e),
                // Some registries refuse listings to everyone: not a verdict.
                _ => Ok(()),
            },
        }
    })??;
    let file = auth.login_file();
    crate::auth::store_credentials(&file, registry, user, password)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback() {
        for r in [
            "localhost:5000",
            "127.0.0.1:80",
            "127.3.4.5",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["example.com", "10.0.0.1:5000", "localhost.example.com"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}

//! Errors: each renders as one line that says what failed (the registry,
//! the reference, the blob) and why, in the words a user acts on.

use oci_client::errors::{OciDistributionError, OciErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("registry {registry} is unreachable: {why}")]
    Unreachable { registry: String, why: String },
    #[error(
        "registry {registry}: its TLS certificate is not trusted ({why}); --tls-verify=false accepts it"
    )]
    Certificate { registry: String, why: String },
    #[error("{reference}: unauthorized: {why}")]
    Unauthorized { reference: String, why: String },
    #[error("{reference}: manifest unknown: no such tag or digest in the registry")]
    UnknownTag { reference: String },
    #[error("{reference}: repository unknown to the registry")]
    UnknownRepository { reference: String },
    #[error("{reference}: blob {digest} is unknown to the registry")]
    UnknownBlob { reference: String, digest: String },
    #[error("{reference}: blob {digest}: digest mismatch: received {got}")]
    DigestMismatch {
        reference: String,
        digest: String,
        got: String,
    },
    #[error("{reference}: no image for platform {wanted} (the index has {available})")]
    Platform {
        reference: String,
        wanted: String,
        available: String,
    },
    #[error("{reference}: {what}")]
    Registry { reference: String, what: String },
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {why}")]
    Local { path: String, why: String },
    #[error("auth file {path}: {what}")]
    AuthFile { path: String, what: String },
    #[error(transparent)]
    Store(#[from] plyfs_image::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The client's error, told apart by what a user must do about it.
pub(crate) fn classify(reference: &str, registry: &str, e: OciDistributionError) -> Error {
    use OciDistributionError as E;
    let reference = reference.to_string();
    match e {
        E::AuthenticationFailure(why) => Error::Unauthorized {
            reference,
            why: first_line(&why, "the credentials were refused"),
        },
        E::UnauthorizedError { .. } => Error::Unauthorized {
            reference,
            why: "the credentials were refused".into(),
        },
        E::ImageManifestNotFoundError(_) => Error::UnknownTag { reference },
        E::RegistryError { envelope, .. } => {
            let first = envelope.errors.first();
            let message = first.map(|e| e.message.clone()).unwrap_or_default();
            match first.map(|e| &e.code) {
                Some(OciErrorCode::ManifestUnknown) => Error::UnknownTag { reference },
                Some(OciErrorCode::NameUnknown) => Error::UnknownRepository { reference },
                Some(OciErrorCode::Unauthorized) | Some(OciErrorCode::Denied) => {
                    Error::Unauthorized {
                        reference,
                        why: first_line(&message, "the credentials were refused"),
                    }
                }
                Some(OciErrorCode::BlobUnknown) => Error::Registry {
                    reference,
                    what: format!("blob unknown to the registry: {message}"),
                },
                _ => Error::Registry {
                    reference,
                    what: first_line(&message, "the registry refused the request"),
                },
            }
        }
        E::ServerError { code, message, .. } => match code {
            401 | 403 => Error::Unauthorized {
                reference,
                why: format!("HTTP {code}"),
            },
            404 => Error::UnknownTag { reference },
            _ => Error::Registry {
                reference,
                what: format!("HTTP {code}: {}", first_line(&message, "server error")),
            },
        },
        E::RequestError(r) if r.is_connect() || r.is_timeout() => Error::Unreachable {
            registry: registry.to_string(),
            why: source_chain(&r),
        },
        E::RequestError(r) => Error::Registry {
            reference,
            what: source_chain(&r),
        },
        E::DigestError(d) => Error::Registry {
            reference,
            what: format!("digest mismatch: {d}"),
        },
        other => Error::Registry {
            reference,
            what: first_line(&other.to_string(), "protocol error"),
        },
    }
}

/// An error and its causes on one line (reqwest hides the cause, as
/// "connection refused", a level down).
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    first_line(&s, "error")
}

fn first_line(s: &str, empty: &str) -> String {
    let l = s.lines().map(str::trim).find(|l| !l.is_empty());
    l.map_or_else(|| empty.to_string(), str::to_string)
}

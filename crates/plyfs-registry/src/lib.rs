//! plyfs-registry: images to and from registries over the OCI
//! distribution protocol, into and out of a plyfs-image store.
//!
//! This is the only part of plyfs with an HTTP stack and an async
//! runtime (oci-client over reqwest and rustls, driven by a
//! current-thread tokio runtime per command): the mount daemon and the
//! `plyfs` executable never link them. Users reach it through `plyfs
//! image pull|push|login`, which run the `plyfs-registry` executable.
//!
//! What lands in the store is checked and staged by plyfs-image
//! ([`plyfs_image::fetched`]), as an imported archive is.

pub mod auth;
mod connect;
mod download;
pub mod error;
pub mod platform;
pub mod pull;
pub mod push;

pub use auth::AuthOptions;
pub use connect::{Transport, login};
pub use error::{Error, Result};
pub use platform::Platform;

/// Runs `f` to completion on a runtime of this thread alone: the
/// commands wait on the network, they do not compute in parallel.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    // rustls without a default provider (no aws-lc-rs, no cmake): ring,
    // installed once per process; a second install is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the I/O runtime: {e}")))?;
    Ok(rt.block_on(f))
}

//! `push NAME REF`: an image of the store to a registry. Each blob the
//! manifest names is asked for first (HEAD) and sent only if the
//! registry lacks it, several at once, streamed from the store; then the
//! manifest, byte for byte as the store keeps it, so the image the
//! registry serves has the same digests as the one pushed.

use std::collections::HashSet;
use std::io::Read;

use futures_util::{StreamExt, TryStreamExt, stream};
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use plyfs_image::fetched;
use plyfs_image::{Digest, Progress, Step, Store};

use crate::auth::AuthOptions;
use crate::connect::{Session, Transport};
use crate::error::{Error, Result};

pub struct PushOptions {
    pub transport: Transport,
    pub auth: AuthOptions,
    /// Blobs sent at once.
    pub jobs: usize,
}

pub struct Pushed {
    pub reference: String,
    pub manifest_digest: Digest,
    pub uploaded: usize,
    pub skipped: usize,
}

/// How much of a blob goes in one request (the client's own chunk).
const CHUNK: usize = 4 << 20;

/// Pushes image `name` of `store` to `dest`; `note` gets one line per step.
pub fn push(
    store: &Store,
    name: &str,
    dest: &str,
    opts: &PushOptions,
    progress: &dyn Progress,
    note: &dyn Fn(String),
) -> Result<Pushed> {
    // Held to the end: no blob of the image goes while it is sent.
    let _lock = store.lock_shared()?;
    let images = store.images()?;
    let image = store.find(&images, name)?.clone();
    let manifest_digest = Digest::parse(&image.manifest.digest)?;
    let manifest = store.read_blob(&manifest_digest)?;
    let plan = fetched::plan(&manifest, None)?;
    let config = store.read_blob(&plan.config_digest)?;
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    for d in &plan.manifest.layers {
        let digest = Digest::parse(&d.digest)?;
        if seen.insert(digest.clone()) {
            blobs.push((digest, d.size));
        }
    }
    crate::block_on(async {
        let s = Session::open(dest, &opts.transport, &opts.auth, RegistryOperation::Push).await?;
        let s = &s;
        note(format!("Pushing {} to {}", name, s.reference.whole()));
        let results: Vec<bool> = stream::iter(blobs)
            .map(|(d, size)| async move {
                if exists(s, &d).await? {
                    note(format!(
                        "Copying blob {} skipped: already exists",
                        d.short()
                    ));
                    return Ok(false);
                }
                note(format!("Copying blob {} ({size} bytes)", d.short()));
                let step = progress.step(&format!("blob {}", d.short()), Some(size), true);
                upload(s, store, &d, size, step).await?;
                Ok::<bool, Error>(true)
            })
            .buffer_unordered(opts.jobs.max(1))
            .try_collect()
            .await?;
        let uploaded = results.iter().filter(|u| **u).count();
        let skipped = results.len() - uploaded;
        if exists(s, &plan.config_digest).await? {
            note(format!(
                "Copying config {} skipped: already exists",
                plan.config_digest.short()
            ));
        } else {
            note(format!("Copying config {}", plan.config_digest.short()));
            s.client
                .push_blob(&s.reference, config, plan.config_digest.as_str())
                .await
                .map_err(|e| s.error(e))?;
        }
        note("Writing manifest to the registry".into());
        let content_type = http::HeaderValue::from_str(&image.manifest.media_type)
            .map_err(|e| Error::Usage(format!("manifest media type: {e}")))?;
        s.client
            .push_manifest_raw(&s.reference, manifest, content_type)
            .await
            .map_err(|e| s.error(e))?;
        Ok(Pushed {
            reference: s.reference.whole(),
            manifest_digest,
            uploaded,
            skipped,
        })
    })?
}

async fn exists(s: &Session, d: &Digest) -> Result<bool> {
    s.client
        .blob_exists(&s.reference, d.as_str())
        .await
        .map_err(|e| s.error(e))
}

/// Sends blob `d` from the store, read in chunks as the client asks.
async fn upload(
    s: &Session,
    store: &Store,
    d: &Digest,
    size: u64,
    step: Box<dyn Step>,
) -> Result<()> {
    let path = store.blob_path(d);
    let file =
        std::fs::File::open(&path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    let chunks = stream::try_unfold((file, step), |(mut f, step)| async move {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(OciDistributionError::IoError(e)),
            }
        }
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        step.inc(n as u64);
        Ok(Some((bytes::Bytes::from(buf), (f, step))))
    });
    s.client
        .push_blob_stream(&s.reference, chunks, d.as_str(), Some(size))
        .await
        .map_err(|e| s.error(e))?;
    Ok(())
}

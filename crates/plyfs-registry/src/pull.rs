//! `pull REF`: the manifest (through a multi-platform index to this
//! machine's, or `--platform`'s), the configuration, and the layer blobs
//! the store lacks — several at once, each checked against its digest as
//! it arrives — then, under the store's lock, everything handed to
//! plyfs-image, which checks it again, unpacks the new layers and
//! renames it all into place. Nothing is unpacked before every blob
//! checked out; a failure leaves the store as it was (a download cut off
//! stays in `downloads/`, resumed by the next pull).

use std::collections::{HashMap, HashSet};

use futures_util::{StreamExt, TryStreamExt, stream};
use oci_client::RegistryOperation;
use plyfs_image::fetched::{self, FetchedImage};
use plyfs_image::import::Imported;
use plyfs_image::spec;
use plyfs_image::{Digest, Progress, Store, WhiteoutFormat};

use crate::auth::AuthOptions;
use crate::connect::{Session, Transport};
use crate::download::{self, Fetched};
use crate::error::{Error, Result};
use crate::platform::{self, Platform};

pub struct PullOptions {
    pub transport: Transport,
    pub auth: AuthOptions,
    /// The platform to take from an index (default: this machine's).
    pub platform: Option<Platform>,
    pub whiteouts: WhiteoutFormat,
    /// Blobs fetched at once.
    pub jobs: usize,
}

/// What a pull did.
pub struct Pulled {
    pub name: String,
    pub id: Digest,
    pub manifest_digest: Digest,
    /// Blobs fetched from the registry, and layer blobs the store had.
    pub fetched: usize,
    pub skipped: usize,
    pub imported: Imported,
}

const ACCEPTED: &[&str] = &[
    spec::OCI_MANIFEST,
    spec::DOCKER_MANIFEST,
    spec::OCI_INDEX,
    spec::DOCKER_LIST,
];

/// The media type a manifest document declares (or, without one, what
/// its shape says).
fn media_type_of(raw: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if v.get("manifests").is_some() => spec::OCI_INDEX.into(),
        None => spec::OCI_MANIFEST.into(),
    }
}

fn mismatch(s: &Session, want: &str, got: &Digest) -> Error {
    Error::DigestMismatch {
        reference: s.shown.clone(),
        digest: want.to_string(),
        got: got.to_string(),
    }
}

/// What the network part of a pull brings home.
struct Fetch {
    name: String,
    manifest: Vec<u8>,
    media_type: String,
    config: Vec<u8>,
    blobs: Vec<Fetched>,
    skipped: usize,
}

/// Pulls `reference` into `store`; `note` gets one line per step.
pub fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
    note: &dyn Fn(String),
) -> Result<Pulled> {
    let f = crate::block_on(fetch(store, reference, opts, progress, note))??;
    let manifest_digest = Digest::of(&f.manifest);
    let fetched_count = f.blobs.len();
    let image = FetchedImage {
        names: vec![f.name.clone()],
        manifest: f.manifest,
        manifest_media_type: f.media_type,
        config: f.config,
        blobs: f
            .blobs
            .iter()
            .map(|b| (b.digest.clone(), b.path.clone()))
            .collect::<HashMap<_, _>>(),
    };
    note("Writing manifest to the store".into());
    let _lock = store.lock_exclusive()?;
    let imported = fetched::add_fetched(store, image, opts.whiteouts, progress)?;
    // The downloads' locks go only now that the store has taken them.
    drop(f.blobs);
    let id = imported
        .images
        .first()
        .map(|(_, id)| id.clone())
        .ok_or_else(|| Error::Usage("the store added no image".into()))?;
    Ok(Pulled {
        name: f.name,
        id,
        manifest_digest,
        fetched: fetched_count,
        skipped: f.skipped,
        imported,
    })
}

async fn fetch(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
    note: &dyn Fn(String),
) -> Result<Fetch> {
    let s = Session::open(
        reference,
        &opts.transport,
        &opts.auth,
        RegistryOperation::Pull,
    )
    .await?;
    note(format!("Trying to pull {}...", s.reference.whole()));
    let (raw, _) = s
        .client
        .pull_manifest_raw(&s.reference, &s.auth, ACCEPTED)
        .await
        .map_err(|e| s.error(e))?;
    let mut manifest = raw.to_vec();
    if let Some(want) = s.reference.digest() {
        let got = Digest::of(&manifest);
        if got.as_str() != want {
            return Err(mismatch(&s, want, &got));
        }
    }
    let mut media_type = media_type_of(&manifest);
    if media_type == spec::OCI_INDEX || media_type == spec::DOCKER_LIST {
        let want = opts.platform.clone().unwrap_or_else(Platform::this_machine);
        let entry = platform::choose(&manifest, &want, &s.shown)?;
        note(format!("Platform {want}: manifest {}", entry.digest));
        let (raw, _) = s
            .client
            .pull_manifest_raw(&s.at_digest(&entry.digest), &s.auth, ACCEPTED)
            .await
            .map_err(|e| s.error(e))?;
        let got = Digest::of(&raw);
        if got.as_str() != entry.digest || raw.len() as u64 != entry.size {
            return Err(mismatch(&s, &entry.digest, &got));
        }
        manifest = raw.to_vec();
        media_type = if entry.media_type.is_empty() {
            media_type_of(&manifest)
        } else {
            entry.media_type
        };
    }
    if media_type != spec::OCI_MANIFEST && media_type != spec::DOCKER_MANIFEST {
        return Err(Error::Registry {
            reference: s.shown.clone(),
            what: format!("not an image manifest ({media_type})"),
        });
    }
    let plan = fetched::plan(&manifest, None)?;
    let config = if store.has_blob(&plan.config_digest) {
        store.read_blob(&plan.config_digest)?
    } else {
        let mut v = Vec::new();
        s.client
            .pull_blob(&s.reference, plan.config_digest.as_str(), &mut v)
            .await
            .map_err(|e| s.error(e))?;
        v
    };
    if let Err(e) = fetched::check(&plan.manifest.config, &config) {
        return Err(Error::Registry {
            reference: s.shown.clone(),
            what: e.to_string(),
        });
    }
    note(format!("Copying config {}", plan.config_digest.short()));
    let plan = fetched::plan(&manifest, Some(&config))?;
    let mut todo = Vec::new();
    let mut seen = HashSet::new();
    let mut skipped = 0;
    for (desc, _) in &plan.layers {
        let d = Digest::parse(&desc.digest)?;
        if store.has_blob(&d) {
            note(format!(
                "Copying blob {} skipped: already in the store",
                d.short()
            ));
            skipped += 1;
        } else if seen.insert(d.clone()) {
            note(format!("Copying blob {} ({} bytes)", d.short(), desc.size));
            todo.push((d, desc.size));
        }
    }
    let s = &s;
    let blobs: Vec<Option<Fetched>> = stream::iter(todo)
        .map(|(d, size)| {
            let step = progress.step(&format!("blob {}", d.short()), Some(size), true);
            async move { download::fetch(s, store, &d, size, step).await }
        })
        .buffer_unordered(opts.jobs.max(1))
        .try_collect()
        .await?;
    let blobs: Vec<Fetched> = blobs.into_iter().flatten().collect();
    Ok(Fetch {
        name: s.reference.whole(),
        manifest,
        media_type,
        config,
        blobs,
        skipped,
    })
}

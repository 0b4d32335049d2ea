//! One blob from the registry into the store's `downloads/`, checked
//! against its digest and size as it arrives. A download that was cut
//! off resumes where it stopped (an HTTP range request); if the whole
//! then does not match its digest, the part kept is thrown away and the
//! blob fetched once more from the start. The file is locked while it is
//! written, so two pulls of the same blob take turns, and nothing reads
//! it as a blob before it checked out.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use plyfs_image::digest::Hasher;
use plyfs_image::{Digest, Step, Store};
use plyfs_sys::fs::Lock;

use crate::connect::Session;
use crate::error::{Error, Result};

/// A blob fetched and checked; the open file keeps its lock until the
/// store has taken it.
pub(crate) struct Fetched {
    pub digest: Digest,
    pub path: PathBuf,
    _file: File,
}

fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Error {
    Error::Local {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

/// The download file of `path`, locked; `None` when the blob reached the
/// store meanwhile (another pull fetched it while this one waited).
fn open_locked(store: &Store, digest: &Digest, path: &std::path::Path) -> Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, e))?;
        plyfs_sys::fs::flock(file.as_fd(), Lock::Exclusive, true).map_err(|e| io(path, e))?;
        // The holder before us may have finished (its download name is
        // gone): ours must still be the one the name leads to.
        let ours = file.metadata().map_err(|e| io(path, e))?;
        let named =
            std::fs::metadata(path).is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
        if store.has_blob(digest) {
            // An empty download made by this open alone is not kept.
            if named && ours.len() == 0 {
                let _ = std::fs::remove_file(path);
            }
            return Ok(None);
        }
        if named {
            return Ok(Some(file));
        }
    }
}

/// Fetches blob `digest` of `size` bytes; `None` when another pull put
/// it in the store meanwhile.
pub(crate) async fn fetch(
    s: &Session,
    store: &Store,
    digest: &Digest,
    size: u64,
    step: Box<dyn Step>,
) -> Result<Option<Fetched>> {
    let path = store.download_path(digest);
    let Some(mut file) = open_locked(store, digest, &path)? else {
        return Ok(None);
    };
    let mut fresh_start = false;
    loop {
        match attempt(s, &mut file, &path, digest, size, &*step, fresh_start).await {
            Ok(()) => break,
            // A resumed download whose whole is wrong: the kept part was.
            Err(Attempt::Mismatch { resumed: true, .. }) if !fresh_start => {
                tracing::debug!("blob {digest}: resumed download did not check out; starting over");
                fresh_start = true;
            }
            Err(Attempt::Mismatch { got, .. }) => {
                let _ = std::fs::remove_file(&path);
                return Err(Error::DigestMismatch {
                    reference: s.shown.clone(),
                    digest: digest.to_string(),
                    got,
                });
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
    Ok(Some(Fetched {
        digest: digest.clone(),
        path,
        _file: file,
    }))
}

enum Attempt {
    Mismatch { resumed: bool, got: String },
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Attempt {
        Attempt::Failed(e)
    }
}

async fn attempt(
    s: &Session,
    file: &mut File,
    path: &std::path::Path,
    digest: &Digest,
    size: u64,
    step: &dyn Step,
    fresh_start: bool,
) -> std::result::Result<(), Attempt> {
    let mut have = file.metadata().map_err(|e| io(path, e))?.len();
    if fresh_start || have > size {
        file.set_len(0).map_err(|e| io(path, e))?;
        have = 0;
    }
    // The part kept from before counts toward the digest.
    let mut hasher = Hasher::default();
    if have > 0 {
        file.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut r = (&mut *file).take(have);
        loop {
            let n = r.read(&mut buf).map_err(|e| io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        step.inc(have);
    }
    let resumed = have > 0;
    if have < size {
        let stream = if resumed {
            match s
                .client
                .pull_blob_stream_partial(&s.reference, digest.as_str(), have, None)
                .await
                .map_err(|e| s.error(e))?
            {
                BlobResponse::Partial(st) => st,
                // The registry sent it all: the kept part goes.
                BlobResponse::Full(st) => {
                    file.set_len(0).map_err(|e| io(path, e))?;
                    hasher = Hasher::default();
                    have = 0;
                    st
                }
            }
        } else {
            s.client
                .pull_blob_stream(&s.reference, digest.as_str())
                .await
                .map_err(|e| s.error(e))?
        };
        file.seek(SeekFrom::Start(have)).map_err(|e| io(path, e))?;
        let mut stream = stream.stream;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut *file);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The client checks digests too: its verdict is ours.
                Err(e) if e.to_string().contains("Invalid digest") => {
                    drop(out);
                    return Err(Attempt::Mismatch {
                        resumed,
                        got: hasher.finish().to_string(),
                    });
                }
                Err(e) => {
                    return Err(Attempt::Failed(Error::Registry {
                        reference: s.shown.clone(),
                        what: format!(
                            "blob {digest}: download cut off after {have} bytes: {}",
                            crate::error::source_chain(&e)
                        ),
                    }));
                }
            };
            have += chunk.len() as u64;
            if have > size {
                drop(out);
                return Err(Attempt::Mismatch {
                    resumed,
                    got: format!("more than the manifest's {size} bytes"),
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).map_err(|e| io(path, e))?;
            step.inc(chunk.len() as u64);
        }
        out.flush().map_err(|e| io(path, e))?;
    }
    let got = hasher.finish();
    if have != size || got != *digest {
        return Err(Attempt::Mismatch {
            resumed,
            got: if have == size {
                got.to_string()
            } else {
                format!("{have} bytes where the manifest says {size}")
            },
        });
    }
    file.sync_all().map_err(|e| io(path, e))?;
    Ok(())
}

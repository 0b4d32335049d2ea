//! `commit`: an upper directory written as an OCI layer tar — new and
//! changed objects with their owners, modes, times, xattrs; hard links as
//! links; deletions as `.wh.NAME`, opaque directories with
//! `.wh..wh..opq` — read straight from the upper through
//! [`plyfs_core::changes`] (redirects and metacopy files resolved there).
//! The same upper gives the same bytes: names in byte order, times as
//! recorded, no user or group names, no access times.
//!
//! Also `diff`, the same walk printed as `docker diff` prints a
//! container's changes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use plyfs_core::changes::{Change, Changes, ChangesError, Object, What};
use plyfs_core::layer::{oci_opaque, oci_whiteout};
use tar::{EntryType, Header};

use crate::digest::{Digest, HashWriter};
use crate::error::{Error, IoContext, Result};
use crate::{Compression, Progress};

/// The layer a commit wrote.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Of the uncompressed tar.
    pub diff_id: Digest,
    /// Of the blob as written.
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    /// Entries written.
    pub entries: u64,
}

/// The compressor between the tar and the blob.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(w: W, c: Compression) -> std::io::Result<Encoder<W>> {
        Ok(match c {
            Compression::None => Encoder::Plain(w),
            // No name and time 0 in the header: the same input gives the
            // same bytes.
            Compression::Gzip => {
                Encoder::Gzip(flate2::GzBuilder::new().write(w, flate2::Compression::default()))
            }
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }

    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// Writes the change `changes` reads as a layer blob to `out`.
pub fn write_layer<W: Write>(
    changes: &Changes,
    out: W,
    compression: Compression,
    progress: &dyn Progress,
) -> Result<(Layer, W)> {
    let step = progress.step("committing", None, false);
    let io = |what: &str, e: std::io::Error| Error::Io {
        path: PathBuf::from(what),
        source: e,
    };
    let blob = HashWriter::new(out);
    let enc = Encoder::new(blob, compression).map_err(|e| io("compressor", e))?;
    let mut tar = tar::Builder::new(HashWriter::new(enc));
    let mut links: HashMap<(bool, u64, u64), PathBuf> = HashMap::new();
    let mut entries = 0u64;
    changes.walk(&mut |c: Change| -> Result<()> {
        let n = write_change(changes, &mut tar, &mut links, c)?;
        entries += n;
        step.inc(n);
        Ok(())
    })?;
    let diff = tar.into_inner().map_err(|e| io("layer", e))?;
    let (enc, diff_id, _) = diff.finish();
    let blob = enc.finish().map_err(|e| io("layer", e))?;
    let (out, digest, size) = blob.finish();
    Ok((
        Layer {
            diff_id,
            digest,
            size,
            compression,
            entries,
        },
        out,
    ))
}

fn header(kind: EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(0);
    h
}

/// Writes one change; returns how many entries it took.
fn write_change<W: Write>(
    changes: &Changes,
    tar: &mut tar::Builder<W>,
    links: &mut HashMap<(bool, u64, u64), PathBuf>,
    mut c: Change,
) -> Result<u64> {
    let io = |e: std::io::Error| Error::Io {
        path: c.path.clone(),
        source: e,
    };
    match &mut c.what {
        What::Deleted => {
            let name = c.path.file_name().unwrap_or_default();
            let wh = c.path.with_file_name(oci_whiteout(name));
            let mut h = header(EntryType::Regular, 0o644, 0, 0, 0);
            tar.append_data(&mut h, &wh, std::io::empty()).map_err(io)?;
            Ok(1)
        }
        What::Object(obj) => {
            if let Some(e) = obj.incomplete.take() {
                return Err(e.into());
            }
            write_object(changes, tar, links, &c.path, obj).map(|n| n as u64)
        }
    }
}

fn write_object<W: Write>(
    changes: &Changes,
    tar: &mut tar::Builder<W>,
    links: &mut HashMap<(bool, u64, u64), PathBuf>,
    path: &Path,
    obj: &Object,
) -> Result<usize> {
    let io = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let st = &obj.stat;
    let kind = st.st_mode & libc::S_IFMT;
    let mk = |k| header(k, st.st_mode, st.st_uid, st.st_gid, st.st_mtime);
    if !obj.xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = obj
            .xattrs
            .iter()
            .filter_map(|(n, v)| Some((format!("SCHILY.xattr.{}", n.to_str()?), v.as_slice())))
            .collect();
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(io)?;
    }
    if kind != libc::S_IFDIR && st.st_nlink > 1 {
        if let Some(first) = links.get(&obj.link_key) {
            let mut h = mk(EntryType::Link);
            tar.append_link(&mut h, path, first).map_err(io)?;
            return Ok(1);
        }
        links.insert(obj.link_key, path.to_path_buf());
    }
    match kind {
        libc::S_IFDIR => {
            let mut h = mk(EntryType::Directory);
            tar.append_data(&mut h, path, std::io::empty())
                .map_err(io)?;
            if obj.opaque {
                let mut h = header(EntryType::Regular, 0o644, 0, 0, 0);
                tar.append_data(&mut h, path.join(oci_opaque()), std::io::empty())
                    .map_err(io)?;
                return Ok(2);
            }
        }
        libc::S_IFREG => {
            let mut h = mk(EntryType::Regular);
            h.set_size(st.st_size as u64);
            let content = changes.open_content(path, obj)?;
            // Exactly the size the header says, or the tar is broken.
            let mut exact = Exact {
                inner: content,
                left: st.st_size as u64,
            };
            tar.append_data(&mut h, path, &mut exact).map_err(io)?;
        }
        libc::S_IFLNK => {
            let mut h = mk(EntryType::Symlink);
            let target = std::ffi::OsStr::from_bytes(obj.target.as_deref().unwrap_or_default());
            tar.append_link(&mut h, path, target).map_err(io)?;
        }
        libc::S_IFCHR | libc::S_IFBLK => {
            let mut h = mk(if kind == libc::S_IFCHR {
                EntryType::Char
            } else {
                EntryType::Block
            });
            h.set_device_major(libc::major(st.st_rdev)).map_err(io)?;
            h.set_device_minor(libc::minor(st.st_rdev)).map_err(io)?;
            tar.append_data(&mut h, path, std::io::empty())
                .map_err(io)?;
        }
        libc::S_IFIFO => {
            let mut h = mk(EntryType::Fifo);
            tar.append_data(&mut h, path, std::io::empty())
                .map_err(io)?;
        }
        // Sockets have no place in a tar (docker leaves them out too).
        _ => return Ok(0),
    }
    Ok(1)
}

/// A reader of exactly `left` bytes: a file that changed size since it
/// was looked at is an error, not a broken archive.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: std::io::Read> std::io::Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::other(
                "the file is shorter than its size: did it change during the commit?",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Writes the layer of `upper` to `path`; returns it.
pub fn write_layer_file(
    changes: &Changes,
    path: &Path,
    compression: Compression,
    progress: &dyn Progress,
) -> Result<Layer> {
    let f = std::fs::File::create(path).at(path)?;
    let (layer, w) = write_layer(changes, std::io::BufWriter::new(f), compression, progress)?;
    let f = w.into_inner().map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e.into_error(),
    })?;
    f.sync_all().at(path)?;
    Ok(layer)
}

/// One line of `diff`: `A`, `C` or `D` and the path (from `/`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiffLine {
    pub path: PathBuf,
    pub what: char,
}

impl std::fmt::Display for DiffLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} /{}", self.what, self.path.display())
    }
}

/// What a container changed, as `docker diff` prints it: `A` added, `C`
/// changed, `D` deleted, in path order. With the lowers known an object
/// is `C` when they have its path; without them, when it was copied up.
/// An opaque directory's hidden lower entries are each `D`.
pub fn diff(changes: &Changes) -> Result<Vec<DiffLine>> {
    let mut out = Vec::new();
    changes.walk(&mut |c: Change| -> Result<(), ChangesError> {
        match &c.what {
            What::Deleted => out.push(DiffLine {
                path: c.path,
                what: 'D',
            }),
            What::Object(obj) => {
                let existed = match changes.in_lowers(&c.path)? {
                    Some(b) => b,
                    None => obj.copied_up,
                };
                if obj.opaque && existed {
                    let mine = upper_names(&c.path, changes)?;
                    for n in changes.lower_names(&c.path)? {
                        if !mine.contains(&n) {
                            out.push(DiffLine {
                                path: c.path.join(n),
                                what: 'D',
                            });
                        }
                    }
                }
                out.push(DiffLine {
                    path: c.path,
                    what: if existed { 'C' } else { 'A' },
                });
            }
        }
        Ok(())
    })?;
    out.sort();
    Ok(out)
}

/// Names directory `path` of the upper holds.
fn upper_names(path: &Path, changes: &Changes) -> Result<Vec<OsString>, ChangesError> {
    let dir = changes.upper().join(path);
    let rd = std::fs::read_dir(&dir).map_err(|e| ChangesError::Io {
        path: dir.clone(),
        errno: plyfs_core::Errno::from(e),
    })?;
    Ok(rd.flatten().map(|e| e.file_name()).collect())
}

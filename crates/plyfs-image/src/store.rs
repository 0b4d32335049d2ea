//! The image store: a directory of content-addressed blobs, layers
//! unpacked once each (by diff-id) and shared by every image that uses
//! them, and an index of images by name.
//!
//! ```text
//! STORE/lock                     flock(2): shared to read, exclusive to change
//! STORE/images.json              the images: names, manifest, config, layers
//! STORE/blobs/sha256/HEX         manifests, configs, layer blobs as imported
//! STORE/layers/HEX/diff/         a layer's tree (HEX: its diff-id)
//! STORE/layers/HEX/layer.json    how it was unpacked
//! STORE/tmp/                     work in progress, renamed into place
//! STORE/downloads/HEX            a blob being fetched from a registry (kept
//!                                across an interrupted pull, so that the next
//!                                one resumes it; never read before its digest
//!                                checks out)
//! ```
//!
//! Every change is built under `tmp/` and renamed into place, and
//! `images.json` is replaced whole: a command that dies leaves the store
//! as it was (what it left in `tmp/` goes at the next change).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use plyfs_sys::fs::{self as sysfs, Lock};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::spec::Descriptor;

/// How a layer keeps whiteouts and opaque directories.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhiteoutFormat {
    /// As the archive has them: `.wh.NAME` files, `.wh..wh..opq`.
    Oci,
    /// The kernel's: char 0/0 devices, `overlay.opaque` attributes (the
    /// kernel's overlayfs mounts such layers too).
    Kernel,
}

/// One layer of an image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    pub diff_id: String,
    /// The blob as the image's manifest names it.
    pub blob: Descriptor,
}

/// One image: its names, its manifest and config blobs, its layers
/// bottom first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub names: Vec<String>,
    pub manifest: Descriptor,
    pub config: String,
    pub layers: Vec<LayerRef>,
    #[serde(default)]
    pub created: Option<String>,
}

impl ImageRecord {
    /// The image id: its config digest, as docker and podman show it.
    pub fn id(&self) -> Result<Digest> {
        Digest::parse(&self.config)
    }

    /// Whether `name` names this image: a name exactly, or without its
    /// `:latest` or `localhost/`, or a prefix of the id (4 digits or more).
    pub fn answers_to(&self, name: &str) -> bool {
        let wanted = normalize_name(name);
        let id = self.config.trim_start_matches("sha256:");
        self.names.iter().any(|n| {
            n == name || *n == wanted || n.strip_prefix("localhost/") == Some(wanted.as_str())
        }) || (name.len() >= 4
            && id.starts_with(name.trim_start_matches("sha256:"))
            && name.trim_start_matches("sha256:").len() >= 4)
    }
}

/// A name with `:latest` when it has no tag.
pub fn normalize_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[derive(Default, Serialize, Deserialize)]
struct ImagesFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// How a layer in the store was unpacked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: String,
    pub whiteouts: WhiteoutFormat,
    /// Owners and devices are in the override-stat attribute.
    pub rootless: bool,
    /// Bytes of file data.
    pub size: u64,
}

pub struct Store {
    root: PathBuf,
    /// Whether this process keeps ownership in attributes (not root).
    pub rootless: bool,
}

/// A held store lock; dropping it releases the lock.
pub struct StoreLock {
    _file: File,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The store a user gets without `--store`: `PLYFS_STORE`, else
    /// `/var/lib/plyfs` for root, else `$XDG_DATA_HOME/plyfs`
    /// (`~/.local/share/plyfs`).
    pub fn default_path() -> Result<PathBuf> {
        if let Some(p) = std::env::var_os("PLYFS_STORE").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        if plyfs_sys::process::geteuid() == 0 {
            return Ok(PathBuf::from("/var/lib/plyfs"));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(x).join("plyfs"));
        }
        match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(h) => Ok(PathBuf::from(h).join(".local/share/plyfs")),
            None => Err(Error::Usage(
                "no store given and neither XDG_DATA_HOME nor HOME is set: use --store DIR".into(),
            )),
        }
    }

    /// Opens the store at `root`, creating it if needed.
    pub fn open(root: &Path) -> Result<Store> {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        for sub in ["blobs/sha256", "layers", "tmp", "downloads"] {
            b.create(root.join(sub)).at(root.join(sub))?;
        }
        let root = std::fs::canonicalize(root).at(root)?;
        Ok(Store {
            root,
            rootless: plyfs_sys::process::geteuid() != 0,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self, how: Lock) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .at(&path)?;
        sysfs::flock(file.as_fd(), how, true).at(&path)?;
        Ok(StoreLock { _file: file })
    }

    /// For reading: no change happens while it is held.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        self.lock(Lock::Shared)
    }

    /// For changing; clears what a command that died left in `tmp/`
    /// (nobody else can be using it now).
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        let l = self.lock(Lock::Exclusive)?;
        let tmp = self.root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                remove_any(&e.path());
            }
        }
        Ok(l)
    }

    /// Removes what this process made under `tmp/` (after a failure).
    pub fn remove_own_tmp(&self) {
        let mark = format!(".{}.", std::process::id());
        let tmp = self.root.join("tmp");
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains(&mark) {
                    remove_any(&e.path());
                }
            }
        }
    }

    /// A fresh path under `tmp/` (nothing is created).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}.{}.{n}", std::process::id()))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Where blob `d` is fetched to before it is checked (see the module
    /// comment): whoever writes it holds an exclusive `flock` on it.
    pub fn download_path(&self, d: &Digest) -> PathBuf {
        self.root.join("downloads").join(d.hex())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// The tree of a layer: what a mount stacks.
    pub fn layer_diff(&self, diff_id: &Digest) -> PathBuf {
        self.layer_dir(diff_id).join("diff")
    }

    pub fn layer_info(&self, diff_id: &Digest) -> Option<LayerInfo> {
        let raw = std::fs::read(self.layer_dir(diff_id).join("layer.json")).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stores `data` as blob `d` (computed by the caller).
    pub fn put_blob(&self, d: &Digest, data: &[u8]) -> Result<()> {
        if self.has_blob(d) {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        write_synced(&tmp, data)?;
        self.adopt_blob(&tmp, d)
    }

    /// Renames a finished file under `tmp/` into place as blob `d`.
    pub fn adopt_blob(&self, tmp: &Path, d: &Digest) -> Result<()> {
        let dst = self.blob_path(d);
        if dst.is_file() {
            remove_any(tmp);
            return Ok(());
        }
        std::fs::rename(tmp, &dst).at(&dst)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let data = std::fs::read(&p).at(&p)?;
        if Digest::of(&data) != *d {
            return Err(Error::Blob {
                digest: d.to_string(),
                what: format!("the store's copy ({}) is corrupt", p.display()),
            });
        }
        Ok(data)
    }

    /// The images, from `images.json` (none in a new store).
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let p = self.root.join("images.json");
        match std::fs::read(&p) {
            Ok(raw) => {
                let f: ImagesFile = serde_json::from_slice(&raw).map_err(|e| Error::Store {
                    path: p.clone(),
                    what: format!("images.json does not read: {e}"),
                })?;
                Ok(f.images)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).at(p),
        }
    }

    /// Replaces `images.json` whole (under the exclusive lock).
    pub fn write_images(&self, images: &[ImageRecord]) -> Result<()> {
        let f = ImagesFile {
            version: 1,
            images: images.to_vec(),
        };
        let raw = serde_json::to_vec_pretty(&f).map_err(|e| Error::Store {
            path: self.root.clone(),
            what: format!("cannot encode images.json: {e}"),
        })?;
        let tmp = self.tmp_path("images.json");
        write_synced(&tmp, &raw)?;
        let dst = self.root.join("images.json");
        std::fs::rename(&tmp, &dst).at(dst)
    }

    /// The image `name` names.
    pub fn find<'a>(&self, images: &'a [ImageRecord], name: &str) -> Result<&'a ImageRecord> {
        let exact = images.iter().find(|i| i.names.iter().any(|n| n == name));
        exact
            .or_else(|| images.iter().find(|i| i.answers_to(name)))
            .ok_or_else(|| Error::NoImage(name.to_string()))
    }

    /// The layer trees of an image, top first (as `lowerdir=` lists them).
    pub fn lowerdirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for l in image.layers.iter().rev() {
            let d = Digest::parse(&l.diff_id)?;
            let p = self.layer_diff(&d);
            if !p.is_dir() {
                return Err(Error::Store {
                    path: self.root.clone(),
                    what: format!("layer {} of the image is missing", l.diff_id),
                });
            }
            v.push(p);
        }
        Ok(v)
    }

    /// Adds `image` (under the exclusive lock): its names leave any other
    /// image, as a tag moves in docker; the same image again gains them.
    pub fn add_image(&self, image: ImageRecord) -> Result<()> {
        let mut images = self.images()?;
        for other in &mut images {
            other.names.retain(|n| !image.names.contains(n));
        }
        // One image per id: the same image from another archive (another
        // manifest, say recompressed) only adds its names.
        match images.iter_mut().find(|i| i.config == image.config) {
            Some(same) => {
                for n in image.names {
                    if !same.names.contains(&n) {
                        same.names.push(n);
                    }
                }
            }
            None => images.push(image),
        }
        // An image that lost its last name to this one stays, by id.
        self.write_images(&images)
    }

    /// Holds `dirs` (an image's layers) for a mount: the layers stay
    /// until every copy of the returned files is closed, also if their
    /// image is removed meanwhile.
    pub fn hold_layers(&self, dirs: &[PathBuf]) -> Result<Vec<File>> {
        dirs.iter()
            .map(|d| {
                let f = File::open(d).at(d)?;
                sysfs::flock(f.as_fd(), Lock::Shared, true).at(d)?;
                Ok(f)
            })
            .collect()
    }

    /// Whether a mount holds the layer in `dir` (see [`Store::hold_layers`]).
    fn in_use(dir: &Path) -> bool {
        File::open(dir).is_ok_and(|f| sysfs::flock(f.as_fd(), Lock::Exclusive, false).is_err())
    }

    /// Removes layers and blobs no image uses any more (under the
    /// exclusive lock), but for layers a mount still holds; returns how
    /// many layers went and how many stay for now.
    pub fn collect_garbage(&self, images: &[ImageRecord]) -> Result<(usize, usize)> {
        let mut used_layers = std::collections::HashSet::new();
        let mut used_blobs = std::collections::HashSet::new();
        for i in images {
            used_blobs.insert(i.manifest.digest.trim_start_matches("sha256:").to_string());
            used_blobs.insert(i.config.trim_start_matches("sha256:").to_string());
            for l in &i.layers {
                used_layers.insert(l.diff_id.trim_start_matches("sha256:").to_string());
                used_blobs.insert(l.blob.digest.trim_start_matches("sha256:").to_string());
            }
        }
        let (mut removed, mut held) = (0, 0);
        let layers = self.root.join("layers");
        for e in std::fs::read_dir(&layers).at(&layers)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !used_layers.contains(&name) && Self::in_use(&e.path().join("diff")) {
                // A later collection takes it.
                held += 1;
            } else if !used_layers.contains(&name) {
                // Out of sight in one rename, then removed at leisure.
                let tmp = self.tmp_path("gone");
                std::fs::rename(e.path(), &tmp).at(e.path())?;
                remove_any(&tmp);
                removed += 1;
            }
        }
        let blobs = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs).at(&blobs)?.flatten() {
            if !used_blobs.contains(&*e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Downloads of pulls that never finished, unless one is under way.
        if let Ok(rd) = std::fs::read_dir(self.root.join("downloads")) {
            for e in rd.flatten() {
                if !Self::in_use(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok((removed, held))
    }
}

/// Writes a file and syncs it, so that the rename that publishes it
/// never publishes an empty one.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).at(path)?;
    f.write_all(data).at(path)?;
    f.sync_all().at(path)
}

/// Removes a file or a whole tree, never following a symlink in it. A
/// directory without write permission for us (a layer's) is made writable
/// first.
pub(crate) fn remove_any(path: &Path) {
    if std::fs::remove_dir_all(path).is_ok() || std::fs::remove_file(path).is_ok() {
        return;
    }
    make_writable(path);
    let _ = std::fs::remove_dir_all(path);
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !md.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700));
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

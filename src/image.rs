//! The image subcommands: `image import|ls|rm|lowerdir|save`, `mount
//! --image`, `commit`, `diff`. They parse, call plyfs-image (or mount
//! through the ordinary mount path) and report.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use plyfs_core::changes::Changes;
use plyfs_image::commit::{self, Layer};
use plyfs_image::store::{ImageRecord, StoreLock};
use plyfs_image::{Compression, Digest, Store, WhiteoutFormat};

use crate::daemon::Failure;
use crate::progress::Bars;

type Result<T> = std::result::Result<T, Failure>;

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure(e.to_string())
}

/// Where the image store is, and how much to say.
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// The image store (default: $PLYFS_STORE, /var/lib/plyfs as root,
    /// else $XDG_DATA_HOME/plyfs).
    #[arg(long, value_name = "DIR", global = true)]
    store: Option<PathBuf>,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
}

impl StoreArgs {
    fn open(&self) -> Result<Store> {
        let path = match &self.store {
            Some(p) => p.clone(),
            None => Store::default_path().map_err(fail)?,
        };
        Store::open(&path).map_err(fail)
    }
}

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    cmd: ImageCmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Whiteouts {
    /// `.wh.` files, as in the archive.
    Oci,
    /// Char 0/0 devices and opaque attributes: kernel overlayfs mounts them.
    Kernel,
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Import a docker/podman save archive or an OCI layout (directory or tar).
    Import {
        archive: PathBuf,
        /// How layers keep whiteouts and opaque directories.
        #[arg(long, value_enum, default_value = "oci")]
        whiteout_format: Whiteouts,
    },
    /// List the images of the store.
    Ls,
    /// Remove images (by name or id); layers no image uses go too.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print the lowerdir= value that mounts an image (top layer first).
    Lowerdir { name: String },
    /// Write an image as an OCI archive (podman load and docker load take it).
    Save { name: String, archive: PathBuf },
    /// Pull an image from a registry: REF [--platform OS/ARCH] [--tls-verify=false]
    /// [--creds USER:PASS] [--authfile FILE] (plyfs image pull --help).
    #[command(disable_help_flag = true)]
    Pull(RegistryArgs),
    /// Push an image of the store to a registry: NAME [REF] [--tls-verify=false]
    /// [--creds USER:PASS] [--authfile FILE] (plyfs image push --help).
    #[command(disable_help_flag = true)]
    Push(RegistryArgs),
    /// Check credentials with a registry and keep them in podman's auth file:
    /// REGISTRY -u USER --password-stdin (plyfs image login --help).
    #[command(disable_help_flag = true)]
    Login(RegistryArgs),
}

/// The arguments of a registry command, passed on as they are to
/// plyfs-registry, which parses them (and answers --help).
#[derive(Args, Debug)]
pub struct RegistryArgs {
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

pub fn image(a: ImageArgs) -> Result<()> {
    let remote = match &a.cmd {
        ImageCmd::Pull(r) => Some(("pull", &r.args)),
        ImageCmd::Push(r) => Some(("push", &r.args)),
        ImageCmd::Login(r) => Some(("login", &r.args)),
        _ => None,
    };
    if let Some((verb, args)) = remote {
        return crate::registry::exec(verb, a.store.store.as_deref(), a.store.quiet, args);
    }
    let store = a.store.open()?;
    let bars = Bars::new(a.store.quiet);
    match a.cmd {
        ImageCmd::Import {
            archive,
            whiteout_format,
        } => {
            let format = match whiteout_format {
                Whiteouts::Oci => WhiteoutFormat::Oci,
                Whiteouts::Kernel => WhiteoutFormat::Kernel,
            };
            let _lock = lock(&store, true)?;
            let done =
                plyfs_image::import::import(&store, &archive, format, &bars).map_err(fail)?;
            for (names, id) in &done.images {
                let shown = if names.is_empty() {
                    "<none>".to_string()
                } else {
                    names.join(" ")
                };
                println!("Loaded image {} {shown}", id.short());
            }
            eprintln!(
                "plyfs: {} layer(s) unpacked, {} already in the store",
                done.layers_unpacked, done.layers_shared
            );
            Ok(())
        }
        ImageCmd::Ls => {
            let _lock = lock(&store, false)?;
            let images = store.images().map_err(fail)?;
            println!(
                "{:<40} {:<12} {:>6} {:>10}  CREATED",
                "NAME", "ID", "LAYERS", "SIZE"
            );
            for i in &images {
                let size: u64 = i.layers.iter().map(|l| l.blob.size).sum();
                let id = i.id().map_err(fail)?;
                let created = i.created.as_deref().unwrap_or("-");
                let names: Vec<&str> = if i.names.is_empty() {
                    vec!["<none>"]
                } else {
                    i.names.iter().map(String::as_str).collect()
                };
                for n in names {
                    println!(
                        "{n:<40} {:<12} {:>6} {:>10}  {created}",
                        id.short(),
                        i.layers.len(),
                        human(size)
                    );
                }
            }
            Ok(())
        }
        ImageCmd::Rm { names } => {
            let _lock = lock(&store, true)?;
            let mut images = store.images().map_err(fail)?;
            for name in &names {
                let id = store.find(&images, name).map_err(fail)?.config.clone();
                let wanted = plyfs_image::store::normalize_name(name);
                let img = images
                    .iter_mut()
                    .find(|i| i.config == id)
                    .ok_or_else(|| fail("gone"))?;
                let by_name = img.names.iter().any(|n| n == name || *n == wanted);
                if by_name && img.names.len() > 1 {
                    img.names.retain(|n| n != name && *n != wanted);
                    println!("Untagged: {name}");
                } else {
                    images.retain(|i| i.config != id);
                    println!("Deleted: {id}");
                }
            }
            store.write_images(&images).map_err(fail)?;
            let (gone, held) = store.collect_garbage(&images).map_err(fail)?;
            eprintln!("plyfs: {gone} layer(s) no image uses removed");
            if held > 0 {
                eprintln!(
                    "plyfs: {held} layer(s) no image uses stay while a mount uses them \
                     (removed by the next plyfs image rm)"
                );
            }
            Ok(())
        }
        ImageCmd::Lowerdir { name } => {
            let _lock = lock(&store, false)?;
            let (_, dirs) = find(&store, &name)?;
            println!("lowerdir={}", join_layers(&dirs));
            Ok(())
        }
        ImageCmd::Save { name, archive } => {
            let _lock = lock(&store, false)?;
            let (img, _) = find(&store, &name)?;
            plyfs_image::save::save(&store, &img, &archive, &bars).map_err(fail)
        }
        // Sent to plyfs-registry before the store was opened.
        ImageCmd::Pull(_) | ImageCmd::Push(_) | ImageCmd::Login(_) => Ok(()),
    }
}

fn lock(store: &Store, exclusive: bool) -> Result<StoreLock> {
    if exclusive {
        store.lock_exclusive().map_err(fail)
    } else {
        store.lock_shared().map_err(fail)
    }
}

/// The image `name` names, and its layer trees (top first).
fn find(store: &Store, name: &str) -> Result<(ImageRecord, Vec<PathBuf>)> {
    let images = store.images().map_err(fail)?;
    let img = store.find(&images, name).map_err(fail)?.clone();
    let dirs = store.lowerdirs(&img).map_err(fail)?;
    Ok((img, dirs))
}

/// Layer paths as `lowerdir=` takes them (`:` and `,` escaped).
fn join_layers(dirs: &[PathBuf]) -> String {
    let v: Vec<String> = dirs.iter().map(|d| escape(d)).collect();
    v.join(":")
}

fn escape(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[derive(Args, Debug)]
pub struct MountArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The image to mount.
    #[arg(long, value_name = "NAME")]
    image: String,
    /// A writable layer over the image (created if missing); without it the
    /// mount is read-only.
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// The work directory, on the upper's filesystem (default: .NAME.work
    /// beside the upper).
    #[arg(long, value_name = "DIR", requires = "upper")]
    work: Option<PathBuf>,
    /// More mount options, as for any plyfs mount.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Log every request (implies -f).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    mountpoint: PathBuf,
}

pub fn mount(a: MountArgs) -> Result<()> {
    let store = a.store.open()?;
    // The layers stay while the mount lives, even if the image is
    // removed: the daemon inherits these descriptors and their locks.
    let (img, dirs, _held) = {
        let _lock = lock(&store, false)?;
        let (img, dirs) = find(&store, &a.image)?;
        let held = store.hold_layers(&dirs).map_err(fail)?;
        (img, dirs, held)
    };
    let mut opts = vec![format!("lowerdir={}", join_layers(&dirs))];
    if let Some(upper) = &a.upper {
        let work = match &a.work {
            Some(w) => w.clone(),
            None => sibling(upper, "work")?,
        };
        let fresh = !upper.exists();
        for d in [upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        }
        opts.push(format!(
            "upperdir={},workdir={}",
            escape(upper),
            escape(&work)
        ));
        // Without root, the layers keep owners in attributes, and so must
        // the upper, or a copy-up would hand files to the user.
        let rootless_layers = img
            .layers
            .first()
            .and_then(|l| Digest::parse(&l.diff_id).ok())
            .and_then(|d| store.layer_info(&d))
            .is_some_and(|i| i.rootless);
        if rootless_layers && !a.options.iter().any(|o| o.contains("xattr_permissions")) {
            opts.push("xattr_permissions=2".into());
        }
        if let Some(top) = dirs.first()
            && (fresh || rootless_layers)
        {
            prepare_upper_root(upper, top, rootless_layers)
                .map_err(|e| fail(format!("{}: {e}", upper.display())))?;
        }
    }
    if !a.options.iter().any(|o| o.contains("fsname=")) {
        let name = img
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| img.config.clone());
        opts.push(format!("fsname={}", name.replace(',', "\\,")));
    }
    opts.extend(a.options);
    crate::mount_union(&opts, &[a.mountpoint], a.foreground, a.debug)
}

/// Gives a new upper's root the owner and mode the image's root has (in
/// the override attribute for rootless layers), so that the union's root
/// shows the image's and not the user's own.
fn prepare_upper_root(
    upper: &Path,
    top: &Path,
    rootless: bool,
) -> std::result::Result<(), plyfs_core::Errno> {
    use plyfs_core::layer::{LayerWriter, Ownership, layer_override_ns};
    use std::os::fd::AsFd;
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let u = plyfs_sys::fs::open_path(upper, flags)?;
    if rootless && layer_override_ns(u.as_fd())?.is_some() {
        return Ok(());
    }
    let t = plyfs_sys::fs::open_path(top, flags)?;
    let mut st = plyfs_sys::fs::fstat(t.as_fd())?;
    let dot = std::ffi::OsStr::new(".");
    if let Some(o) = layer_override_ns(t.as_fd())? {
        o.apply(t.as_fd(), dot, &mut st)?;
    }
    if !rootless {
        plyfs_sys::fs::fchownat(u.as_fd(), dot, st.st_uid, st.st_gid)?;
        return plyfs_sys::fs::fchmodat(u.as_fd(), dot, st.st_mode & 0o7777);
    }
    let own = Ownership {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        kind: libc::S_IFDIR,
        rdev: 0,
    };
    LayerWriter::new(true).set_ownership(u.as_fd(), dot, own)
}

/// `.NAME.WHAT` beside `dir`.
fn sibling(dir: &Path, what: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| fail(format!("{}: not a directory name", dir.display())))?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{}.{what}", name.to_string_lossy())))
}

/// The lowers an upper was made over: an image's, or given.
#[derive(Args, Debug)]
pub struct LowerArgs {
    /// The image the upper was mounted over (resolves renamed directories
    /// and metacopy files; tells added from changed).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// The lower layers, top first (instead of --image).
    #[arg(long, value_name = "A:B:...", conflicts_with = "image")]
    lowerdir: Option<String>,
    /// The work directory of the upper's mounts, whose index holds the
    /// changed copies of hard-linked files (default: `.NAME.work` beside
    /// the upper, where `plyfs mount --image` keeps it, if it exists).
    #[arg(long, value_name = "DIR", visible_alias = "workdir")]
    work: Option<PathBuf>,
}

impl LowerArgs {
    /// The base image (if named) and the lowers, top first.
    fn resolve(&self, store: Option<&Store>) -> Result<(Option<ImageRecord>, Vec<PathBuf>)> {
        if let (Some(name), Some(store)) = (&self.image, store) {
            let (img, dirs) = find(store, name)?;
            return Ok((Some(img), dirs));
        }
        let Some(l) = self.lowerdir.as_deref() else {
            return Ok((None, Vec::new()));
        };
        let (dirs, data) = crate::options::split_lowers(l).map_err(fail)?;
        if !data.is_empty() {
            return Err(fail(
                "--lowerdir: data-only layers (after ::) cannot be read here",
            ));
        }
        Ok((None, dirs))
    }

    /// The work directory of `upper`'s mounts, if there is one.
    fn work(&self, upper: &Path) -> Option<PathBuf> {
        self.work
            .clone()
            .or_else(|| sibling(upper, "work").ok().filter(|w| w.is_dir()))
    }
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The upper directory (of a mount that has ended).
    upper: PathBuf,
    #[command(flatten)]
    lowers: LowerArgs,
    /// Add a new image of this name: the --image's layers and the new one.
    #[arg(long, value_name = "NEW")]
    tag: Option<String>,
    /// Write the layer blob to this file.
    #[arg(short = 'o', long = "output", value_name = "LAYER.tar")]
    output: Option<PathBuf>,
    /// Compress the layer with gzip.
    #[arg(long, conflicts_with = "zstd")]
    gzip: bool,
    /// Compress the layer with zstd.
    #[arg(long)]
    zstd: bool,
}

pub fn commit(a: CommitArgs) -> Result<()> {
    if a.output.is_none() && a.tag.is_none() {
        return Err(fail(
            "nothing to write: give -o LAYER.tar, or --tag NEW (with --image BASE)",
        ));
    }
    let compression = if a.gzip {
        Compression::Gzip
    } else if a.zstd {
        Compression::Zstd
    } else {
        Compression::None
    };
    let bars = Bars::new(a.store.quiet);
    let store = if a.tag.is_some() || a.lowers.image.is_some() {
        Some(a.store.open()?)
    } else {
        None
    };
    // A new image changes the store: it stays locked from start to end.
    let _lock = match &store {
        Some(s) => Some(lock(s, a.tag.is_some())?),
        None => None,
    };
    let (base, lowers) = a.lowers.resolve(store.as_ref())?;
    let work = a.lowers.work(&a.upper);
    let changes = Changes::open(&a.upper, &lowers, work.as_deref()).map_err(fail)?;
    let (path, keep) = match (&a.output, &store) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(s)) => (s.tmp_path("commit"), false),
        (None, None) => return Err(fail("nothing to write: give -o LAYER.tar")),
    };
    let layer: Layer =
        commit::write_layer_file(&changes, &path, compression, &bars).map_err(fail)?;
    println!("diff-id {}", layer.diff_id);
    println!("digest  {}", layer.digest);
    let result = match (&a.tag, &store) {
        (Some(tag), Some(s)) => {
            plyfs_image::build::add_committed_image(s, base.as_ref(), &path, &layer, tag)
                .map(|id| {
                    println!(
                        "image   {} {}",
                        id.short(),
                        plyfs_image::store::normalize_name(tag)
                    )
                })
                .map_err(fail)
        }
        _ => Ok(()),
    };
    if !keep {
        let _ = std::fs::remove_file(&path);
    }
    result
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The upper directory.
    upper: PathBuf,
    #[command(flatten)]
    lowers: LowerArgs,
}

pub fn diff(a: DiffArgs) -> Result<()> {
    let (lowers, work) = upper_context(&a.store, &a.lowers, &a.upper)?;
    let changes = Changes::open(&a.upper, &lowers, work.as_deref()).map_err(fail)?;
    for line in commit::diff(&changes).map_err(fail)? {
        println!("{line}");
    }
    Ok(())
}

/// The lowers (top first) and the work directory of an upper, for the
/// commands that read one offline (`diff`, `check`).
pub(crate) fn upper_context(
    store: &StoreArgs,
    lowers: &LowerArgs,
    upper: &Path,
) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let dirs = if lowers.image.is_some() {
        let store = store.open()?;
        let _lock = lock(&store, false)?;
        lowers.resolve(Some(&store))?.1
    } else {
        lowers.resolve(None)?.1
    };
    Ok((dirs, lowers.work(upper)))
}

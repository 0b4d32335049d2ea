//! plyfs: mounts a union of layer directories through FUSE, in the form
//! fuse-overlayfs takes: `plyfs -o lowerdir=A:B,upperdir=U,workdir=W MNT`.
//! The binary only parses, mounts and reports; the semantics live in
//! plyfs-core and the FUSE translation in plyfs-fuse.

mod check;
mod cli;
mod daemon;
mod demo;
mod image;
mod options;
mod progress;
mod registry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "plyfs",
    about = "Union filesystem in userspace with the kernel overlayfs's semantics",
    args_conflicts_with_subcommands = true,
    disable_version_flag = true,
    override_usage = "plyfs [-f] [-d] -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W][,OPTS] MOUNTPOINT\n       \
                      plyfs [SOURCE] MOUNTPOINT -o OPTS   (mount.fuse3's form: mount -t fuse.plyfs, fstab)\n       \
                      plyfs image import|ls|rm|lowerdir|save|pull|push|login ...\n       \
                      plyfs mount --image NAME [--upper DIR] MOUNTPOINT\n       \
                      plyfs commit UPPER [--image NAME --tag NEW] [-o LAYER.tar] [--gzip|--zstd]\n       \
                      plyfs diff UPPER | demo | completions SHELL | man\n       \
                      plyfs check UPPER [--lowerdir A:B] [--work W] [--repair]"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Mount options, comma-separated (see the README for all of them):
    /// lowerdir=, upperdir=, workdir=, allow_other, default_permissions,
    /// ro, fsname=, userxattr, volatile, uidmapping=, gidmapping=,
    /// squash_to_root, xattr_permissions=, passthrough=, threads=, debug,
    /// and kernel flags (nodev, nosuid, noexec, noatime).
    #[arg(short = 'o', value_name = "OPTIONS", action = ArgAction::Append)]
    options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    foreground: bool,
    /// Log every request (implies -f).
    #[arg(short = 'd', long = "debug")]
    debug: bool,
    /// Print the version (first line as fuse-overlayfs prints it).
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// [SOURCE] MOUNTPOINT: where to mount the union; a SOURCE before it
    /// (as mount.fuse3 passes it) names the mount (its fsname).
    #[arg(value_name = "MOUNTPOINT", num_args = 0..=2)]
    targets: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a three-layer example image in a temporary directory, mount
    /// it, show and change it, and unmount.
    Demo,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. plyfs man > plyfs.1
    Man,
    /// Container images: import, list, remove, save, pull, push; their layers.
    Image(image::ImageArgs),
    /// Mount an image of the store, read-only or over an upper directory.
    Mount(image::MountArgs),
    /// Write an upper directory as an OCI layer, and optionally a new image.
    Commit(image::CommitArgs),
    /// Print what an upper directory changes, as `docker diff` does.
    Diff(image::DiffArgs),
    /// Check an upper directory offline (after a crash, say), and repair
    /// what is safe to repair. Exit code: 0 nothing wrong, 1 repaired,
    /// 4 defects left, 8 the check could not run.
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>("plyfs --help") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cli.version {
        // Container tools parse the first line.
        println!("plyfs: version {}", env!("CARGO_PKG_VERSION"));
        println!("FUSE library: fuser (no libfuse)");
        return ExitCode::SUCCESS;
    }
    let result = match cli.command {
        Some(Command::Demo) => {
            init_logging(false);
            demo::run()
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "plyfs", &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Man) => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| daemon::Failure(format!("cannot write the manual page: {e}"))),
        Some(Command::Image(a)) => image::image(a),
        Some(Command::Mount(a)) => image::mount(a),
        Some(Command::Commit(a)) => image::commit(a),
        Some(Command::Diff(a)) => image::diff(a),
        // Its exit code says what it found.
        Some(Command::Check(a)) => return check::run(a),
        None => mount_union(&cli.options, &cli.targets, cli.foreground, cli.debug),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Mounts a union: `-o OPTIONS`, `[SOURCE] MOUNTPOINT`.
pub(crate) fn mount_union(
    options: &[String],
    targets: &[PathBuf],
    foreground: bool,
    debug: bool,
) -> Result<(), daemon::Failure> {
    let defaults = options::Defaults {
        root: plyfs_sys::process::geteuid() == 0,
    };
    let mut req = options::parse(options, defaults).map_err(|e| daemon::Failure(e.to_string()))?;
    let mountpoint = match targets {
        [mp] => mp.clone(),
        [source, mp] => {
            // mount.fuse3's SOURCE names the mount, unless fsname= does.
            if !options.iter().any(|o| o.contains("fsname=")) {
                req.spec.fsname = source.to_string_lossy().into_owned();
            }
            mp.clone()
        }
        _ => {
            return Err(daemon::Failure(
                "no mount point given (see plyfs --help)".into(),
            ));
        }
    };
    req.debug |= debug;
    init_logging(req.debug);
    let foreground = foreground || req.debug;
    daemon::run(req, &mountpoint, foreground)
}

/// `-d`/`-o debug` log every request; otherwise RUST_LOG decides, and
/// warnings show by default.
pub(crate) fn init_logging(debug: bool) {
    let filter = if debug {
        EnvFilter::new("debug")
    } else {
        // fuser warns when the mount it would undo at exit is gone already
        // (umount ended the session): not worth a line.
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,fuser::session=error"))
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs go to files and journals too.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

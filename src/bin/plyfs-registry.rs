//! plyfs-registry: `plyfs image pull|push|login`, run by `plyfs` (which
//! execs it) so that the `plyfs` executable and its mount daemon never
//! carry an HTTP stack or an async runtime. Also usable by itself.

#[path = "../cli.rs"]
mod cli;
#[path = "../progress.rs"]
mod progress;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use plyfs_image::{Store, WhiteoutFormat};
use plyfs_registry::pull::{PullOptions, pull};
use plyfs_registry::push::{PushOptions, push};
use plyfs_registry::{AuthOptions, Platform, Transport};

use crate::progress::Bars;

#[derive(Parser, Debug)]
#[command(
    name = "plyfs image",
    bin_name = "plyfs image",
    about = "Pull images from registries into a plyfs store, push them back (run by plyfs image pull|push|login)",
    disable_version_flag = true
)]
struct Cli {
    /// The image store (default: $PLYFS_STORE, /var/lib/plyfs as root,
    /// else $XDG_DATA_HOME/plyfs).
    #[arg(long, value_name = "DIR", global = true)]
    store: Option<PathBuf>,
    /// No progress bars and no step lines.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// How to reach the registry and whom to be there.
#[derive(Args, Debug)]
struct Remote {
    /// false: accept any certificate, and plain http where the registry
    /// speaks no TLS (loopback registries get the http fallback anyway).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = clap::ArgAction::Set)]
    tls_verify: Option<bool>,
    /// USER[:PASSWORD] for the registry (else the auth files).
    #[arg(long, value_name = "USER[:PASSWORD]")]
    creds: Option<String>,
    /// Read credentials from this file only (default: $REGISTRY_AUTH_FILE,
    /// podman's auth.json, docker's config.json).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
}

impl Remote {
    fn transport(&self) -> Transport {
        Transport {
            tls_verify: self.tls_verify,
        }
    }

    fn auth(&self) -> AuthOptions {
        AuthOptions {
            creds: self.creds.clone(),
            authfile: self.authfile.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Whiteouts {
    Oci,
    Kernel,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Pull an image (host[:port]/name[:tag] or ...@sha256:...) into the store.
    Pull {
        reference: String,
        #[command(flatten)]
        remote: Remote,
        /// OS/ARCH[/VARIANT] to take from a multi-platform image
        /// (default: this machine's).
        #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
        platform: Option<String>,
        /// How the layers keep whiteouts (as plyfs image import).
        #[arg(long, value_enum, default_value = "oci")]
        whiteout_format: Whiteouts,
        /// Blobs fetched at once.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
    },
    /// Push an image of the store to a registry (REF defaults to NAME).
    Push {
        name: String,
        reference: Option<String>,
        #[command(flatten)]
        remote: Remote,
        /// Blobs sent at once.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
    },
    /// Check credentials with a registry and record them in podman's auth file.
    Login {
        registry: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(short, long)]
        username: String,
        /// The password (else --password-stdin).
        #[arg(short, long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>("plyfs image --help") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Only this crate's warnings: the TLS stack logs each
                // failure it also returns, and errors are one line.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("plyfs_registry=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open_store(path: &Option<PathBuf>) -> Result<Store, String> {
    let p = match path {
        Some(p) => p.clone(),
        None => Store::default_path().map_err(|e| e.to_string())?,
    };
    Store::open(&p).map_err(|e| e.to_string())
}

fn run(cli: Cli) -> Result<(), String> {
    let quiet = cli.quiet;
    let bars = Bars::new(quiet);
    let note = |line: String| {
        if !quiet {
            bars.note(&line);
        }
    };
    match cli.cmd {
        Cmd::Pull {
            reference,
            remote,
            platform,
            whiteout_format,
            jobs,
        } => {
            let store = open_store(&cli.store)?;
            let opts = PullOptions {
                transport: remote.transport(),
                auth: remote.auth(),
                platform: platform
                    .as_deref()
                    .map(Platform::parse)
                    .transpose()
                    .map_err(|e| e.to_string())?,
                whiteouts: match whiteout_format {
                    Whiteouts::Oci => WhiteoutFormat::Oci,
                    Whiteouts::Kernel => WhiteoutFormat::Kernel,
                },
                jobs,
            };
            let p = pull(&store, &reference, &opts, &bars, &note).map_err(|e| e.to_string())?;
            note(format!(
                "{}: {} blob(s) fetched, {} already in the store; {} layer(s) unpacked; digest {}",
                p.name, p.fetched, p.skipped, p.imported.layers_unpacked, p.manifest_digest
            ));
            println!("{}", p.id.hex());
            Ok(())
        }
        Cmd::Push {
            name,
            reference,
            remote,
            jobs,
        } => {
            let store = open_store(&cli.store)?;
            let dest = reference.unwrap_or_else(|| name.clone());
            let opts = PushOptions {
                transport: remote.transport(),
                auth: remote.auth(),
                jobs,
            };
            let p = push(&store, &name, &dest, &opts, &bars, &note).map_err(|e| e.to_string())?;
            note(format!(
                "{}: {} blob(s) sent, {} the registry had",
                p.reference, p.uploaded, p.skipped
            ));
            println!("{}", p.manifest_digest);
            Ok(())
        }
        Cmd::Login {
            registry,
            remote,
            username,
            password,
            password_stdin,
        } => {
            let password = match password {
                Some(p) => p,
                None if password_stdin => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
                    line.trim_end_matches(['\n', '\r']).to_string()
                }
                None => return Err("give --password-stdin (or -p PASSWORD)".into()),
            };
            let file = plyfs_registry::login(
                &registry,
                &username,
                &password,
                &remote.transport(),
                &remote.auth(),
            )
            .map_err(|e| e.to_string())?;
            println!("Login Succeeded! (credentials in {})", file.display());
            Ok(())
        }
    }
}

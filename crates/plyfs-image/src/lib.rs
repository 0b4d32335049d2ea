//! plyfs-image: container images without a container engine. An image
//! store of content-addressed blobs and layers unpacked once each
//! ([`store`]); importing `docker save`/`podman save` archives and OCI
//! image layouts with every digest checked ([`import`], [`unpack`]);
//! writing an upper directory as an OCI layer and a new image
//! ([`commit`]); saving an image as an OCI archive ([`save`]); adding an
//! image fetched from a registry by plyfs-registry ([`fetched`]).
//!
//! No FUSE, no network, no async runtime: mounting is the binary's
//! business, and what an upper means is plyfs-core's
//! ([`plyfs_core::changes`]).

mod archive;
pub mod build;
pub mod commit;
pub mod digest;
pub mod error;
pub mod fetched;
pub mod import;
pub mod save;
pub mod spec;
mod stage;
pub mod store;
pub mod unpack;

use std::io::{BufRead, Read};

pub use digest::Digest;
pub use error::{Error, Result};
pub use store::{ImageRecord, Store, WhiteoutFormat};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Tells a stream's compression from its first bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// A reader of the uncompressed stream of `r`, whose compression is
    /// told from its first bytes.
    pub fn decoder<'a, R: BufRead + 'a>(
        mut r: R,
    ) -> std::io::Result<(Compression, Box<dyn Read + 'a>)> {
        let c = Compression::sniff(r.fill_buf()?);
        let dec: Box<dyn Read + 'a> = match c {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        };
        Ok((c, dec))
    }
}

/// Where long steps report how far they are (the binary draws bars).
pub trait Progress {
    /// A step named `what`, of `total` units if known; `bytes`: the units
    /// are bytes (else items).
    fn step(&self, what: &str, total: Option<u64>, bytes: bool) -> Box<dyn Step>;
}

/// One step under way; dropping it ends it. Steps may run side by side
/// (several downloads at once), so they are shareable.
pub trait Step: Send + Sync {
    fn inc(&self, n: u64);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: &str, _: Option<u64>, _: bool) -> Box<dyn Step> {
        Box::new(Quiet)
    }
}

impl Step for Quiet {
    fn inc(&self, _: u64) {}
}

/// Counts what is read through it into a [`Step`].
pub(crate) struct StepReader<'a, R> {
    pub inner: R,
    pub step: &'a dyn Step,
}

impl<R: Read> Read for StepReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.step.inc(n as u64);
        Ok(n)
    }
}

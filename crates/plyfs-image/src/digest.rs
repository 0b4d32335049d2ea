//! Content digests (`sha256:HEX`), and readers and writers that compute
//! them on the way through.

use std::io::{Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A checked `sha256:` digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parses and checks a digest from an archive or the store: only
    /// `sha256:` and 64 lower-case hex digits, so it is also a safe file
    /// name.
    pub fn parse(s: &str) -> Result<Digest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| Error::Blob {
            digest: s.to_string(),
            what: "not a sha256 digest".into(),
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::Blob {
                digest: s.to_string(),
                what: "malformed digest".into(),
            });
        }
        Ok(Digest(s.to_string()))
    }

    pub fn of(data: &[u8]) -> Digest {
        Digest(format!("sha256:{:x}", Sha256::digest(data)))
    }

    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The first 12 hex digits, as image tools show ids.
    pub fn short(&self) -> &str {
        &self.0[7..19]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running sha256.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(format!("sha256:{:x}", self.0.finalize()))
    }
}

/// Hashes and counts what is read through it; refuses to read past
/// `limit` bytes (a blob longer than its manifest says).
pub struct HashReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
    limit: Option<u64>,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R, limit: Option<u64>) -> HashReader<R> {
        HashReader {
            inner,
            hasher: Hasher::default(),
            count: 0,
            limit,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads what is left (the tail a tar reader leaves: padding, or a
    /// compressed stream's trailer) so that the digest covers it all.
    pub fn drain(&mut self) -> std::io::Result<()> {
        std::io::copy(self, &mut std::io::sink()).map(drop)
    }

    pub fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

/// The error a [`HashReader`] gives when its limit is passed.
pub const OVER_LIMIT: &str = "more bytes than the manifest says";

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.limit.is_some_and(|l| self.count > l) {
            return Err(std::io::Error::other(OVER_LIMIT));
        }
        Ok(n)
    }
}

/// Hashes and counts what is written through it.
pub struct HashWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> HashWriter<W> {
        HashWriter {
            inner,
            hasher: Hasher::default(),
            count: 0,
        }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        for bad in [
            "md5:abc",
            "sha256:../../etc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        let mut r = HashReader::new(&b"hello"[..], Some(4));
        assert!(std::io::copy(&mut r, &mut std::io::sink()).is_err());
    }
}

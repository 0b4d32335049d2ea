//! The kernel's on-disk file handle format (`struct ovl_fb`), used for
//! `overlay.origin` and for index entry names, so that an upper written by
//! plyfs means the same to the kernel and back.

use crate::sys::handle::FileHandle;

const VERSION: u8 = 0;
const MAGIC: u8 = 0xfb;
const HEADER: usize = 5 + 16;
const FLAG_BIG_ENDIAN: u8 = 1 << 0;
const FLAG_ANY_ENDIAN: u8 = 1 << 1;
const FLAG_PATH_UPPER: u8 = 1 << 2;
const FLAGS_ALL: u8 = FLAG_BIG_ENDIAN | FLAG_ANY_ENDIAN | FLAG_PATH_UPPER;
const FLAG_CPU_ENDIAN: u8 = if cfg!(target_endian = "big") {
    FLAG_BIG_ENDIAN
} else {
    0
};

/// A decoded `ovl_fb`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginFh {
    pub uuid: [u8; 16],
    pub handle: FileHandle,
}

impl OriginFh {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.handle.bytes.len());
        v.push(VERSION);
        v.push(MAGIC);
        v.push((HEADER + self.handle.bytes.len()) as u8);
        v.push(FLAG_CPU_ENDIAN);
        v.push(self.handle.handle_type as u8);
        v.extend_from_slice(&self.uuid);
        v.extend_from_slice(&self.handle.bytes);
        v
    }

    /// Parses an `overlay.origin` value; `None` for anything the kernel
    /// would not accept either.
    pub fn decode(raw: &[u8]) -> Option<OriginFh> {
        if raw.len() < HEADER || raw.len() > 255 {
            return None;
        }
        let (version, magic, len, flags, ftype) = (raw[0], raw[1], raw[2], raw[3], raw[4]);
        if version != VERSION || magic != MAGIC || len as usize != raw.len() {
            return None;
        }
        if flags & !FLAGS_ALL != 0 || flags & FLAG_PATH_UPPER != 0 {
            return None;
        }
        if flags & FLAG_ANY_ENDIAN == 0 && flags & FLAG_BIG_ENDIAN != FLAG_CPU_ENDIAN {
            return None;
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&raw[5..HEADER]);
        Some(OriginFh {
            uuid,
            handle: FileHandle {
                handle_type: ftype as i32,
                bytes: raw[HEADER..].to_vec(),
            },
        })
    }

    /// The name of this object's entry in the index directory: the
    /// lowercase hex of the encoded handle, as the kernel names it.
    pub fn index_name(&self) -> String {
        self.encode().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernel_bytes() {
        // Read off an upper the kernel wrote on an ext4 with a null UUID.
        let kernel = hex("00fb1d0001000000000000000000000000000000001c00990095012592");
        let fh = OriginFh::decode(&kernel).unwrap();
        assert_eq!(fh.handle.handle_type, 1);
        assert_eq!(fh.handle.bytes.len(), 8);
        assert_eq!(fh.encode(), kernel);
        assert_eq!(
            fh.index_name(),
            "00fb1d0001000000000000000000000000000000001c00990095012592"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(OriginFh::decode(b"").is_none());
        let mut k = hex("00fb1d0001000000000000000000000000000000001c00990095012592");
        k[2] = 0x1c;
        assert!(OriginFh::decode(&k).is_none());
        k[2] = 0x1d;
        k[1] = 0xfa;
        assert!(OriginFh::decode(&k).is_none());
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}

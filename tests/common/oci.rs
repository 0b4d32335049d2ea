//! Image archives made in the test with the `tar` crate: layer tars entry
//! by entry (owners, modes, xattrs, hard links, devices, whiteouts, and
//! hostile entries a real tool would never write), and the OCI layouts and
//! docker archives that carry them.

use std::path::Path;

use plyfs_image::Digest;
use tar::{EntryType, Header};

/// A layer tar, built entry by entry, in order.
pub struct LayerTar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: EntryType, mode: u32, uid: u64, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Writes the path into the header as is (no checks, no `..` refusal:
    /// hostile names must reach the importer unchanged).
    fn raw(&mut self, mut h: Header, path: &str, data: &[u8]) -> &mut Self {
        let bytes = path.as_bytes();
        let name = &mut h.as_old_mut().name;
        name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32, uid: u64) -> &mut Self {
        self.raw(header(EntryType::Directory, mode, uid, 0), path, b"")
    }

    pub fn file(&mut self, path: &str, data: &str, mode: u32, uid: u64) -> &mut Self {
        self.raw(
            header(EntryType::Regular, mode, uid, data.len() as u64),
            path,
            data.as_bytes(),
        )
    }

    pub fn file_xattr(&mut self, path: &str, data: &str, name: &str, value: &[u8]) -> &mut Self {
        let key = format!("SCHILY.xattr.{name}");
        self.b
            .append_pax_extensions([(key.as_str(), value)])
            .unwrap();
        self.file(path, data, 0o644, 0)
    }

    fn link(&mut self, kind: EntryType, path: &str, target: &str, uid: u64) -> &mut Self {
        let mut h = header(kind, 0o777, uid, 0);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        self.raw(h, path, b"")
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Symlink, path, target, 0)
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(EntryType::Link, path, target, 0)
    }

    pub fn chardev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = header(EntryType::Char, 0o666, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, path, b"")
    }

    pub fn fifo(&mut self, path: &str) -> &mut Self {
        self.raw(header(EntryType::Fifo, 0o640, 0, 0), path, b"")
    }

    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&p, "", 0o644, 0)
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), "", 0o644, 0)
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// How a layer blob is stored in an archive.
#[derive(Clone, Copy)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
    /// A gzip header and then nonsense: a corrupt blob.
    Garbage,
}

pub fn compress(data: &[u8], c: Comp) -> Vec<u8> {
    use std::io::Write;
    match c {
        Comp::None => data.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(data, 1).unwrap(),
        Comp::Garbage => {
            let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
            v.extend(std::iter::repeat_n(0x55u8, 4000));
            v
        }
    }
}

/// One image of an archive: its layers (bottom first, uncompressed tars
/// with the compression their blob gets) and its name.
pub struct ImageSpec {
    pub name: String,
    pub layers: Vec<(Vec<u8>, Comp)>,
}

/// A blob as it goes into an archive, and what its manifest says of it
/// (tests of hostile archives change one without the other).
pub struct Blob {
    pub data: Vec<u8>,
    pub digest: String,
    pub size: u64,
}

impl Blob {
    pub fn of(data: Vec<u8>) -> Blob {
        Blob {
            digest: Digest::of(&data).to_string(),
            size: data.len() as u64,
            data,
        }
    }
}

/// An OCI image layout as a list of (name, content) files, so that a test
/// may change any of them before writing it.
pub struct Layout {
    pub files: Vec<(String, Vec<u8>)>,
}

impl Layout {
    /// The layout of `images`; `tamper` may change each layer blob after
    /// its descriptor is made (index: image, layer).
    pub fn oci(images: &[ImageSpec], mut tamper: impl FnMut(usize, usize, &mut Blob)) -> Layout {
        let mut files: Vec<(String, Vec<u8>)> = vec![(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        )];
        let mut manifests = Vec::new();
        for (ii, img) in images.iter().enumerate() {
            let mut diff_ids = Vec::new();
            let mut descs = Vec::new();
            for (li, (tar, comp)) in img.layers.iter().enumerate() {
                diff_ids.push(Digest::of(tar).to_string());
                let mut blob = Blob::of(compress(tar, *comp));
                let media = match comp {
                    Comp::None => "application/vnd.oci.image.layer.v1.tar",
                    Comp::Gzip | Comp::Garbage => "application/vnd.oci.image.layer.v1.tar+gzip",
                    Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
                };
                descs.push(serde_json::json!({"mediaType": media, "digest": blob.digest, "size": blob.size}));
                tamper(ii, li, &mut blob);
                let name = format!("blobs/sha256/{}", &blob.digest[7..]);
                if !blob.data.is_empty() || blob.size == 0 {
                    files.push((name, blob.data));
                }
            }
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh"]},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }))
            .unwrap();
            let cd = Digest::of(&config).to_string();
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
                "layers": descs,
            }))
            .unwrap();
            let md = Digest::of(&manifest).to_string();
            manifests.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": img.name},
            }));
            files.push((format!("blobs/sha256/{}", &cd[7..]), config));
            files.push((format!("blobs/sha256/{}", &md[7..]), manifest));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": manifests,
        }))
        .unwrap();
        files.push(("index.json".into(), index));
        Layout { files }
    }

    /// Writes the layout as a tar archive (each file once).
    pub fn write_tar(&self, path: &Path) {
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        let mut seen = std::collections::HashSet::new();
        for (name, data) in &self.files {
            if !seen.insert(name.clone()) {
                continue;
            }
            let mut h = Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.finish().unwrap();
    }
}

/// An OCI layout (a directory) whose one image is a multi-platform
/// index: linux/amd64 and linux/arm64, each with a file naming it.
pub fn multi_arch_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = Digest::of(data).to_string();
        std::fs::write(blobs.join(&d[7..]), data).unwrap();
        serde_json::json!({"digest": d, "size": data.len()})
    };
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut t = LayerTar::new();
        t.dir("etc/", 0o755, 0).file("etc/arch", arch, 0o644, 0);
        let tar = t.finish();
        let layer = put(&compress(&tar, Comp::Gzip));
        let config = put(serde_json::json!({"architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]}})
        .to_string()
        .as_bytes());
        let manifest = put(serde_json::json!({"schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": config["digest"], "size": config["size"]},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer["digest"], "size": layer["size"]}]})
        .to_string()
        .as_bytes());
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest["digest"], "size": manifest["size"],
            "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = put(serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})
    .to_string()
    .as_bytes());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index["digest"], "size": index["size"],
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

//! `image save`: an image as an OCI archive — `oci-layout`, `index.json`
//! naming it, its blobs — with a docker-archive `manifest.json` beside
//! them, so that both `podman load` and `docker load` take it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::spec::{self, DockerImage, Index};
use crate::store::{ImageRecord, Store};
use crate::{Progress, StepReader};

/// Writes `image` of `store` to the archive `out` (a tar).
pub fn save(store: &Store, image: &ImageRecord, out: &Path, progress: &dyn Progress) -> Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.plyfs-tmp",
        out.file_name()
            .map_or("archive".into(), |n| n.to_string_lossy())
    ));
    let r = write_archive(store, image, &tmp, progress);
    match r {
        Ok(()) => std::fs::rename(&tmp, out).at(out),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_archive(
    store: &Store,
    image: &ImageRecord,
    path: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let file = std::fs::File::create(path).at(path)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let io = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let add = |tar: &mut tar::Builder<_>, name: &str, data: &[u8]| {
        let mut h = header(data.len() as u64);
        tar.append_data(&mut h, name, data).map_err(io)
    };
    add(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut desc = image.manifest.clone();
    let mut annotations = BTreeMap::new();
    if let Some(name) = image.names.first() {
        annotations.insert(spec::REF_NAME.to_string(), name.clone());
    }
    desc.annotations = annotations;
    let index = Index {
        schema_version: 2,
        media_type: Some(spec::OCI_INDEX.into()),
        manifests: vec![desc],
    };
    let index_raw = serde_json::to_vec(&index).map_err(|e| Error::Usage(e.to_string()))?;
    add(&mut tar, "index.json", &index_raw)?;
    let blob_name = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker = vec![DockerImage {
        config: blob_name(&image.config),
        repo_tags: Some(image.names.clone()),
        layers: image
            .layers
            .iter()
            .map(|l| blob_name(&l.blob.digest))
            .collect(),
    }];
    let docker_raw = serde_json::to_vec(&docker).map_err(|e| Error::Usage(e.to_string()))?;
    add(&mut tar, "manifest.json", &docker_raw)?;
    let small = [Digest::parse(&image.manifest.digest)?, image.id()?];
    for d in &small {
        let data = store.read_blob(d)?;
        add(&mut tar, &blob_name(d.as_str()), &data)?;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, l) in image.layers.iter().enumerate() {
        let d = Digest::parse(&l.blob.digest)?;
        if !seen.insert(d.clone()) {
            continue;
        }
        let p = store.blob_path(&d);
        let f = std::fs::File::open(&p).at(&p)?;
        let size = f.metadata().at(&p)?.len();
        let step = progress.step(
            &format!("layer {}/{}", i + 1, image.layers.len()),
            Some(size),
            true,
        );
        let mut h = header(size);
        let r = StepReader {
            inner: f,
            step: &*step,
        };
        tar.append_data(&mut h, blob_name(d.as_str()), r)
            .map_err(io)?;
    }
    let mut w = tar.into_inner().map_err(io)?;
    w.flush().map_err(io)?;
    let f = w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}

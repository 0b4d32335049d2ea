//! Throwaway directories and the layers built in them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch directory for one test, removed at the end.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        // Under /var/tmp: the same (disk) filesystem as other layers, with
        // xattrs and file handles.
        let dir = tempfile::Builder::new()
            .prefix("plyfs-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

/// Builds the content of one layer directory.
pub struct LayerBuilder {
    pub root: PathBuf,
}

impl LayerBuilder {
    pub fn new(root: impl Into<PathBuf>) -> LayerBuilder {
        let root = root.into();
        std::fs::create_dir_all(&root).expect("layer dir");
        LayerBuilder { root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("parent dirs");
        }
        p
    }

    pub fn file(&self, rel: &str, content: &str) -> &Self {
        std::fs::write(self.p(rel), content).expect("write");
        self
    }

    pub fn file_mode(&self, rel: &str, content: &str, mode: u32) -> &Self {
        let p = self.p(rel);
        std::fs::write(&p, content).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.p(rel)).expect("mkdir");
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.p(rel)).expect("symlink");
        self
    }

    pub fn hardlink(&self, existing: &str, rel: &str) -> &Self {
        std::fs::hard_link(self.root.join(existing), self.p(rel)).expect("link");
        self
    }

    /// Kernel-format whiteout: a 0/0 character device.
    pub fn whiteout(&self, rel: &str) -> &Self {
        mknod(&self.p(rel), libc::S_IFCHR, 0);
        self
    }

    pub fn fifo(&self, rel: &str) -> &Self {
        mknod(&self.p(rel), libc::S_IFIFO | 0o644, 0);
        self
    }

    pub fn xattr(&self, rel: &str, name: &str, value: &[u8]) -> &Self {
        xattr::set(self.root.join(rel), name, value).expect("setxattr");
        self
    }

    /// Kernel-format opaque directory.
    pub fn opaque(&self, rel: &str) -> &Self {
        self.dir(rel).xattr(rel, "trusted.overlay.opaque", b"y")
    }

    /// OCI whiteout `.wh.NAME`.
    pub fn oci_whiteout(&self, rel: &str) -> &Self {
        let p = Path::new(rel);
        let name = format!(".wh.{}", p.file_name().unwrap().to_string_lossy());
        let target = p
            .parent()
            .map(|d| d.join(&name))
            .unwrap_or_else(|| PathBuf::from(&name));
        self.file(target.to_str().unwrap(), "")
    }

    /// OCI opaque directory.
    pub fn oci_opaque(&self, rel: &str) -> &Self {
        self.dir(rel).file(&format!("{rel}/.wh..wh..opq"), "")
    }
}

pub fn mknod(p: &Path, mode: u32, dev: u64) {
    use std::os::fd::AsFd;
    let parent =
        plyfs_sys::fs::open_path(p.parent().unwrap(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
    plyfs_sys::fs::mknodat(parent.as_fd(), p.file_name().unwrap(), mode, dev)
        .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
}

/// Appends `data` to the file at `p` (open O_APPEND, write, close).
pub fn append(p: &Path, data: &[u8]) {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
}

/// Rewrites a layer's OCI markers in the kernel's format, in place (the
/// kernel's overlayfs reads no OCI markers, so it needs this to be the
/// oracle of a stack that has them): `.wh.NAME` becomes a 0/0 character
/// device NAME, `.wh..wh..opq` becomes `NS.opaque=y` on its directory
/// (NS: `trusted.overlay` or `user.overlay`). Everything else, inode
/// numbers included, stays as it was.
pub fn oci_to_kernel_format(dir: &Path, ns: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name == ".wh..wh..opq" {
            std::fs::remove_file(&path).expect("remove OCI opaque marker");
            xattr::set(dir, format!("{ns}.opaque"), b"y").expect("set opaque");
        } else if let Some(hidden) = name.strip_prefix(".wh.") {
            std::fs::remove_file(&path).expect("remove OCI whiteout");
            mknod(&dir.join(hidden), libc::S_IFCHR, 0);
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            oci_to_kernel_format(&path, ns);
        }
    }
}

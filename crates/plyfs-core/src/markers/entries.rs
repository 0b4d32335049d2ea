//! Classifying the entries of one layer directory: which names are real
//! objects, which are whiteouts (in any format) and whether the directory
//! is OCI-opaque. Lower listings and the upper's part of readdir both read
//! their directories through here.

use std::ffi::OsString;
use std::os::fd::BorrowedFd;

use super::{OCI_OPAQUE, is_whiteout, is_xwhiteout, oci_whiteout_target};
use crate::error::{Errno, Result};
use crate::sys::fs;
use crate::util;

/// What a name is in one layer directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A char 0/0 whiteout, or an OCI `.wh.` file (listed under the name it
    /// hides).
    Whiteout,
    /// An xattr whiteout (only looked for in directories marked to hold
    /// them).
    XWhiteout,
    /// A real object, with its `d_type`.
    Object(u8),
}

/// The classified entries of one layer directory.
#[derive(Debug, Default)]
pub(crate) struct LayerDir {
    /// The directory holds the OCI opaque marker.
    pub oci_opaque: bool,
    /// (name, kind, d_ino); whiteouts have no inode number of interest.
    pub entries: Vec<(OsString, Kind, u64)>,
}

/// Reads directory `dir` of some layer. `xwhiteouts`: it is marked as
/// holding xattr whiteouts, so its empty regular files need a look.
/// `touch_atime`: the read may update its access time (an upper directory
/// in a mount that allows it; never a lower).
pub(crate) fn read_layer_dir(
    dir: BorrowedFd<'_>,
    xwhiteouts: bool,
    touch_atime: bool,
) -> Result<LayerDir> {
    let mut out = LayerDir::default();
    // Entries whose kind d_type alone does not tell.
    let mut unsure: Vec<(OsString, u64)> = Vec::new();
    fs::read_dir_atime(dir, touch_atime, |e| {
        if e.name == OCI_OPAQUE {
            out.oci_opaque = true;
        } else if let Some(target) = oci_whiteout_target(e.name) {
            out.entries.push((target.to_os_string(), Kind::Whiteout, 0));
        } else if e.dtype == libc::DT_CHR
            || e.dtype == libc::DT_UNKNOWN
            || (e.dtype == libc::DT_REG && xwhiteouts)
        {
            unsure.push((e.name.to_os_string(), e.ino));
        } else {
            out.entries
                .push((e.name.to_os_string(), Kind::Object(e.dtype), e.ino));
        }
    })?;
    for (name, ino) in unsure {
        let st = match fs::fstatat(dir, &name) {
            Ok(st) => st,
            Err(e) if e == Errno::ENOENT => continue,
            Err(e) => return Err(e),
        };
        let kind = if is_whiteout(&st) {
            Kind::Whiteout
        } else if xwhiteouts && is_xwhiteout(dir, &name, &st)? {
            Kind::XWhiteout
        } else {
            Kind::Object(util::dtype_of(st.st_mode))
        };
        out.entries.push((name, kind, ino));
    }
    Ok(out)
}

//! Names as nodes keep them: one word each. A node holds its union name
//! and the name of its real object (the same allocation when they agree),
//! and a cached tree holds a node per object, so the second word of a
//! fat `Name` would cost every cached inode 16 bytes.

use std::borrow::Borrow;
use std::ffi::OsStr;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;

use triomphe::ThinArc;

#[derive(Clone)]
pub(crate) struct Name(ThinArc<(), u8>);

impl Name {
    pub fn new(name: &OsStr) -> Name {
        Name(ThinArc::from_header_and_slice((), name.as_bytes()))
    }
}

impl From<&OsStr> for Name {
    fn from(name: &OsStr) -> Name {
        Name::new(name)
    }
}

impl Deref for Name {
    type Target = OsStr;

    fn deref(&self) -> &OsStr {
        OsStr::from_bytes(&self.0.slice)
    }
}

impl AsRef<OsStr> for Name {
    fn as_ref(&self) -> &OsStr {
        self
    }
}

/// Maps keyed by `Name` are searched with a plain `&OsStr`: equality and
/// hashing are the string's.
impl Borrow<OsStr> for Name {
    fn borrow(&self) -> &OsStr {
        self
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        **self == **other
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

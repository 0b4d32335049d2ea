//! Id mapping, as fuse-overlayfs's `uidmapping=`/`gidmapping=` and
//! `squash_to_*`: the ids stored in the layers are translated to the ids
//! the mount reports, and back for the ids a request carries. Nothing on
//! disk changes, which is the point: one copy of an image serves user
//! namespaces with different mappings without being chowned.

/// One range: ids `disk..disk+len` in the layers are `mount..mount+len`
/// through the mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub disk: u32,
    pub mount: u32,
    pub len: u32,
}

/// The mapping of one kind of id (user or group).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    /// Empty: ids pass unchanged.
    pub ranges: Vec<IdRange>,
    /// Every object reports this owner, whatever is stored.
    pub squash: Option<u32>,
}

/// Why a mapping option cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error("expected DISK:MOUNT:LENGTH triples joined by ':'")]
    NotTriples,
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("a range of length 0")]
    Empty,
    #[error("the range {0}:{1}:{2} goes beyond the largest id")]
    TooLong(u32, u32, u32),
}

impl IdMap {
    /// Parses `DISK:MOUNT:LEN[:DISK2:MOUNT2:LEN2...]`, the form
    /// containers-storage passes (a user namespace's map on one line).
    pub fn parse(s: &str) -> Result<Vec<IdRange>, IdMapError> {
        let nums = s
            .split(':')
            .map(|n| {
                n.trim()
                    .parse::<u32>()
                    .map_err(|_| IdMapError::NotANumber(n.to_string()))
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if nums.is_empty() || nums.len() % 3 != 0 {
            return Err(IdMapError::NotTriples);
        }
        nums.chunks(3)
            .map(|c| {
                let (disk, mount, len) = (c[0], c[1], c[2]);
                if len == 0 {
                    return Err(IdMapError::Empty);
                }
                let fits = |start: u32| start.checked_add(len - 1).is_some();
                if !fits(disk) || !fits(mount) {
                    return Err(IdMapError::TooLong(disk, mount, len));
                }
                Ok(IdRange { disk, mount, len })
            })
            .collect()
    }

    /// The id the mount reports for an id stored in a layer; ids outside
    /// every range report as `overflow`.
    pub fn to_mount(&self, disk: u32, overflow: u32) -> u32 {
        if let Some(id) = self.squash {
            return id;
        }
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find(|r| disk >= r.disk && disk - r.disk < r.len)
            .map_or(overflow, |r| r.mount + (disk - r.disk))
    }

    /// The id to store for an id a request names; `None` when it has no
    /// mapping (it cannot be stored).
    pub fn to_disk(&self, mount: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(mount);
        }
        self.ranges
            .iter()
            .find(|r| mount >= r.mount && mount - r.mount < r.len)
            .map(|r| r.disk + (mount - r.mount))
    }
}

/// Both mappings, and the ids that stand for "no mapping".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: IdMap,
    pub gids: IdMap,
    overflow_uid: u32,
    overflow_gid: u32,
}

impl Default for IdMapping {
    fn default() -> Self {
        IdMapping {
            uids: IdMap::default(),
            gids: IdMap::default(),
            overflow_uid: overflow("uid"),
            overflow_gid: overflow("gid"),
        }
    }
}

/// The kernel's overflow id (65534 unless the system says otherwise).
fn overflow(kind: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/kernel/overflow{kind}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

impl IdMapping {
    /// Whether anything is translated at all.
    pub fn is_identity(&self) -> bool {
        self.uids == IdMap::default() && self.gids == IdMap::default()
    }

    pub fn uid_to_mount(&self, uid: u32) -> u32 {
        self.uids.to_mount(uid, self.overflow_uid)
    }

    pub fn gid_to_mount(&self, gid: u32) -> u32 {
        self.gids.to_mount(gid, self.overflow_gid)
    }

    /// A requester's ids as stored: one without a mapping gets the
    /// overflow ids (what it creates belongs to nobody it could name).
    pub fn caller_to_disk(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.uids.to_disk(uid).unwrap_or(self.overflow_uid),
            self.gids.to_disk(gid).unwrap_or(self.overflow_gid),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_storage_form() {
        let r = IdMap::parse("0:1000:1:1:110000:65536").unwrap();
        assert_eq!(
            r,
            vec![
                IdRange {
                    disk: 0,
                    mount: 1000,
                    len: 1
                },
                IdRange {
                    disk: 1,
                    mount: 110000,
                    len: 65536
                }
            ]
        );
        let m = IdMap {
            ranges: r,
            squash: None,
        };
        assert_eq!(m.to_mount(0, 65534), 1000);
        assert_eq!(m.to_mount(5, 65534), 110004);
        assert_eq!(m.to_mount(70000, 65534), 65534);
        assert_eq!(m.to_disk(110004), Some(5));
        assert_eq!(m.to_disk(999), None);
        assert_eq!(
            IdMap::default().to_mount(42, 65534),
            42,
            "no mapping: identity"
        );
        let sq = IdMap {
            ranges: Vec::new(),
            squash: Some(0),
        };
        assert_eq!(sq.to_mount(42, 65534), 0);
    }

    #[test]
    fn bad_mappings() {
        assert_eq!(IdMap::parse("0:1000"), Err(IdMapError::NotTriples));
        assert_eq!(IdMap::parse(""), Err(IdMapError::NotANumber(String::new())));
        assert_eq!(
            IdMap::parse("0:x:1"),
            Err(IdMapError::NotANumber("x".into()))
        );
        assert_eq!(IdMap::parse("0:1:0"), Err(IdMapError::Empty));
        assert_eq!(
            IdMap::parse("4294967295:0:2"),
            Err(IdMapError::TooLong(4294967295, 0, 2))
        );
    }
}

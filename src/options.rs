//! The `-o` option string, in the form fuse-overlayfs takes it, so that
//! scripts and container tools can call either program.

use std::path::PathBuf;
use std::time::Duration;

use plyfs_core::{Config, OverrideStat};
use plyfs_fuse::{FuseOptions, IdMap, MountSpec};

/// Everything a mount command asks for.
#[derive(Debug, Default)]
pub struct MountRequest {
    pub config: Config,
    pub spec: MountSpec,
    pub fuse: FuseOptions,
    pub debug: bool,
    /// Options not known, to warn about.
    pub ignored: Vec<String>,
}

/// What the defaults depend on: fuse-overlayfs mounts root's unions (also
/// those of root in a user namespace, as rootless podman runs it) for every
/// user of the container, and with set-ID programs working.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    pub root: bool,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("malformed -o option string: {0}")]
    Malformed(String),
    #[error("option {0} needs a value ({0}=...)")]
    MissingValue(String),
    #[error("option {opt} has an invalid value {value:?}: {why}")]
    BadValue {
        opt: String,
        value: String,
        why: String,
    },
    #[error(
        "no lowerdir= given: plyfs -o lowerdir=TOP:...:BOTTOM[,upperdir=U,workdir=W] MOUNTPOINT"
    )]
    NoLowerdir,
    #[error(
        "upperdir {0} needs a workdir= on its filesystem (upperdir and workdir must be given together)"
    )]
    UpperWithoutWork(String),
}

/// Splits one `-o` argument at commas, honouring `\,` and double quotes
/// (`context="a,b"` stays one option). Backslashes before anything but a
/// comma are kept: lowerdir uses `\:` itself.
pub fn split_options(s: &str) -> Result<Vec<String>, OptionError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => cur.push(','),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => {
                    return Err(OptionError::Malformed(format!(
                        "{s:?} ends with a lone backslash"
                    )));
                }
            },
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(OptionError::Malformed(format!(
            "unterminated quote in {s:?}"
        )));
    }
    out.push(cur);
    Ok(out.into_iter().filter(|o| !o.is_empty()).collect())
}

/// Splits lowerdir at `:`; `\\:` is a colon inside a path. Layers after a
/// `::` are data-only (the kernel's `lowerdir=L1:L2::DATA1::DATA2`):
/// returns (lowers, data-only lowers).
pub fn split_lowers(v: &str) -> Result<(Vec<PathBuf>, Vec<PathBuf>), OptionError> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ':' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    let (mut lowers, mut data) = (Vec::new(), Vec::new());
    let mut in_data = false;
    let mut iter = parts.into_iter().peekable();
    while let Some(p) = iter.next() {
        if !p.is_empty() {
            let to = if in_data { &mut data } else { &mut lowers };
            to.push(PathBuf::from(p));
            continue;
        }
        // An empty part is the middle of a `::`, between two layers.
        let between = !lowers.is_empty() && iter.peek().is_some_and(|n| !n.is_empty());
        if !between {
            return Err(bad("lowerdir", v, "a layer path is empty"));
        }
        in_data = true;
    }
    if lowers.is_empty() {
        return Err(bad("lowerdir", v, "a layer path is empty"));
    }
    Ok((lowers, data))
}

/// Kernel mount flags that pass straight through, in groups whose members
/// undo each other (the later one wins): atime updates are one mode of
/// four, as for mount(8).
const FLAGS: &[&[&str]] = &[
    &["nodev", "dev"],
    &["nosuid", "suid"],
    &["noexec", "exec"],
    &["noatime", "atime", "relatime", "strictatime"],
    &["nodiratime", "diratime"],
    &["lazytime", "nolazytime"],
    &["sync", "async"],
    &["dirsync"],
];

/// Options that only concern mount(8), fstab or other programs, and
/// fuse-overlayfs options whose effect plyfs always has: accepted, and
/// documented as such.
const ACCEPTED: &[&str] = &[
    "defaults",
    "nofail",
    "_netdev",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "private",
    "shared",
    "slave",
    "xino",
    "redirect_dir",
    "index",
    "nfs_export",
];

/// SELinux labels: the kernel takes them where SELinux is enabled.
const LABELS: &[&str] = &["context", "fscontext", "defcontext", "rootcontext"];

pub fn parse(args: &[String], defaults: Defaults) -> Result<MountRequest, OptionError> {
    let mut r = MountRequest {
        spec: MountSpec {
            fsname: "plyfs".into(),
            subtype: "plyfs".into(),
            default_permissions: true,
            allow_other: defaults.root,
            ..MountSpec::default()
        },
        ..MountRequest::default()
    };
    set_flag(&mut r.spec.flags, "noatime");
    if defaults.root {
        set_flag(&mut r.spec.flags, "suid");
    }
    let mut lowers = None;
    let (mut squash_root, mut squash_uid, mut squash_gid) = (false, None, None);
    for arg in args {
        for opt in split_options(arg)? {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            let need = || value.ok_or_else(|| OptionError::MissingValue(key.to_string()));
            match key {
                "lowerdir" => {
                    let (l, data) = split_lowers(need()?)?;
                    lowers = Some(l);
                    r.config.data_lowers = data;
                }
                "metacopy" => {
                    r.config.metacopy = match need()? {
                        "on" => true,
                        "off" => false,
                        v => return Err(bad(key, v, "expected on or off")),
                    }
                }
                "upperdir" => r.config.upper = Some(path(key, need()?)?),
                "workdir" => r.config.work = Some(path(key, need()?)?),
                "fsname" => r.spec.fsname = need()?.to_string(),
                "subtype" => r.spec.subtype = need()?.to_string(),
                "allow_other" => r.spec.allow_other = true,
                "allow_root" => r.spec.allow_root = true,
                "default_permissions" => r.spec.default_permissions = true,
                "ro" => {
                    r.spec.read_only = true;
                    r.config.read_only = true;
                }
                "rw" => {
                    r.spec.read_only = false;
                    r.config.read_only = false;
                }
                "debug" => r.debug = true,
                "userxattr" => r.config.userxattr = true,
                "volatile" => r.config.volatile = true,
                "fsync" => r.config.volatile = !switch(key, need()?)?,
                "timeout" => {
                    let v = need()?;
                    let secs: f64 = v.parse().map_err(|_| bad(key, v, "expected seconds"))?;
                    if !(0.0..=1e10).contains(&secs) {
                        return Err(bad(key, v, "out of range"));
                    }
                    r.fuse.timeout = Duration::from_secs_f64(secs);
                }
                "passthrough" => r.fuse.passthrough = switch(key, need()?)?,
                "writeback" => r.fuse.writeback = switch(key, need()?)?,
                "threads" => {
                    let v = need()?;
                    let n: usize = v.parse().map_err(|_| bad(key, v, "expected a number"))?;
                    if !(1..=256).contains(&n) {
                        return Err(bad(key, v, "expected 1 to 256"));
                    }
                    r.fuse.threads = n;
                }
                "uidmapping" | "gidmapping" => {
                    let v = need()?;
                    let ranges = IdMap::parse(v).map_err(|e| bad(key, v, e))?;
                    let map = if key == "uidmapping" {
                        &mut r.fuse.ids.uids
                    } else {
                        &mut r.fuse.ids.gids
                    };
                    map.ranges = ranges;
                }
                "squash_to_root" => squash_root = true,
                "squash_to_uid" => squash_uid = Some(id(key, need()?)?),
                "squash_to_gid" => squash_gid = Some(id(key, need()?)?),
                "xattr_permissions" => {
                    r.config.override_stat = match need()? {
                        "0" => None,
                        "1" => Some(OverrideStat::Privileged),
                        "2" => Some(OverrideStat::User),
                        v => return Err(bad(key, v, "expected 0, 1 or 2")),
                    }
                }
                "noxattrs" => r.config.no_xattrs = switch(key, need()?)?,
                // fuse-overlayfs's: no POSIX ACL semantics (the kernel's
                // overlayfs has no such option: it always has them).
                "noacl" => r.config.no_acl = true,
                "static_nlink" => r.config.static_nlink = true,
                "ino32_t" => r.config.ino32 = true,
                k if LABELS.contains(&k) => {
                    need()?;
                    if selinux_enabled() {
                        r.spec.flags.push(opt.clone());
                    }
                }
                k if ACCEPTED.contains(&k) => {}
                k if value.is_none() && FLAGS.iter().any(|g| g.contains(&k)) => {
                    set_flag(&mut r.spec.flags, k)
                }
                "" => {
                    return Err(OptionError::Malformed(format!(
                        "option {opt:?} has no name"
                    )));
                }
                _ => r.ignored.push(opt.clone()),
            }
        }
    }
    r.config.lowers = lowers.ok_or(OptionError::NoLowerdir)?;
    // A mount's upper always comes with a work directory, also read-only
    // (plyfs-core lets only a reader of an unmounted upper go without).
    if let (Some(u), None) = (&r.config.upper, &r.config.work) {
        return Err(OptionError::UpperWithoutWork(u.display().to_string()));
    }
    // squash_to_uid/gid win over squash_to_root, in any order.
    r.fuse.ids.uids.squash = squash_uid.or(squash_root.then_some(0));
    r.fuse.ids.gids.squash = squash_gid.or(squash_root.then_some(0));
    // Without an upper nothing can change: say so to the kernel too, which
    // then refuses writes itself and keeps atimes cached.
    if r.config.upper.is_none() {
        r.spec.read_only = true;
    }
    // What plyfs's own reads of the layers may update (see Config).
    let has = |f: &str| r.spec.flags.iter().any(|x| x == f);
    r.config.noatime = has("noatime");
    r.config.nodiratime = has("nodiratime");
    Ok(r)
}

/// Adds a kernel flag, dropping the one it undoes.
fn set_flag(flags: &mut Vec<String>, flag: &str) {
    if let Some(group) = FLAGS.iter().find(|g| g.contains(&flag)) {
        flags.retain(|f| !group.contains(&f.as_str()));
    }
    flags.push(flag.to_string());
}

fn selinux_enabled() -> bool {
    std::path::Path::new("/sys/fs/selinux/enforce").exists()
}

fn id(key: &str, v: &str) -> Result<u32, OptionError> {
    v.parse()
        .ok()
        .filter(|&n: &u32| n != u32::MAX)
        .ok_or_else(|| bad(key, v, "expected a user or group id"))
}

fn path(key: &str, v: &str) -> Result<PathBuf, OptionError> {
    if v.is_empty() {
        return Err(bad(key, v, "the path is empty"));
    }
    Ok(PathBuf::from(v))
}

/// An on/off option, written 1 or 0.
fn switch(key: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(bad(key, v, "expected 0 or 1")),
    }
}

fn bad(key: &str, v: &str, why: impl ToString) -> OptionError {
    OptionError::BadValue {
        opt: key.to_string(),
        value: v.to_string(),
        why: why.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: Defaults = Defaults { root: false };
    const ROOT: Defaults = Defaults { root: true };

    fn p(s: &str) -> Result<MountRequest, OptionError> {
        parse(&[s.to_string()], USER)
    }

    #[test]
    fn fuse_overlayfs_form() {
        let r = p("lowerdir=/a:/b\\:c:/d,upperdir=/u,workdir=/w,allow_other").unwrap();
        assert_eq!(
            r.config.lowers,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d")
            ]
        );
        assert_eq!(r.config.upper, Some(PathBuf::from("/u")));
        assert_eq!(r.config.work, Some(PathBuf::from("/w")));
        assert!(r.spec.allow_other && r.spec.default_permissions);
        assert!(r.ignored.is_empty());
    }

    /// fuse-overlayfs's implicit options: root (also in a user namespace)
    /// serves every user, with set-ID programs; everyone gets noatime.
    #[test]
    fn defaults_as_fuse_overlayfs() {
        let r = parse(&["lowerdir=/a".into()], ROOT).unwrap();
        assert!(r.spec.allow_other && r.spec.default_permissions);
        assert_eq!(r.spec.flags, vec!["noatime".to_string(), "suid".into()]);
        let r = parse(&["lowerdir=/a".into()], USER).unwrap();
        assert!(!r.spec.allow_other && r.spec.default_permissions);
        assert_eq!(r.spec.flags, vec!["noatime".to_string()]);
        let r = parse(&["lowerdir=/a,atime,nosuid".into()], ROOT).unwrap();
        assert_eq!(r.spec.flags, vec!["atime".to_string(), "nosuid".into()]);
        assert!(!r.config.noatime);
        let r = parse(
            &["lowerdir=/a,strictatime,nodiratime,lazytime".into()],
            USER,
        )
        .unwrap();
        assert_eq!(
            r.spec.flags,
            vec![
                "strictatime".to_string(),
                "nodiratime".into(),
                "lazytime".into()
            ]
        );
        assert!(!r.config.noatime && r.config.nodiratime);
        let r = parse(&["lowerdir=/a,relatime,noatime".into()], USER).unwrap();
        assert_eq!(r.spec.flags, vec!["noatime".to_string()]);
        assert!(r.config.noatime);
    }

    #[test]
    fn fuse_overlayfs_options() {
        let r = p("lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_root,squash_to_gid=7,xattr_permissions=2,noxattrs=1,static_nlink,ino32_t,xino=auto,private,noacl").unwrap();
        assert!(r.ignored.is_empty(), "{:?}", r.ignored);
        assert_eq!(r.fuse.ids.uids.ranges.len(), 2);
        assert_eq!(r.fuse.ids.gids.ranges.len(), 1);
        assert_eq!(r.fuse.ids.uids.squash, Some(0));
        assert_eq!(r.fuse.ids.gids.squash, Some(7));
        assert_eq!(r.config.override_stat, Some(OverrideStat::User));
        assert!(r.config.no_xattrs && r.config.static_nlink && r.config.ino32);
        assert!(r.config.no_acl);
        assert!(!p("lowerdir=/a").unwrap().config.no_acl, "ACLs by default");
        assert!(matches!(
            p("lowerdir=/a,uidmapping=0:1").unwrap_err(),
            OptionError::BadValue { .. }
        ));
        assert!(matches!(
            p("lowerdir=/a,xattr_permissions=3").unwrap_err(),
            OptionError::BadValue { .. }
        ));
        assert!(matches!(
            p("lowerdir=/a,squash_to_uid=me").unwrap_err(),
            OptionError::BadValue { .. }
        ));
    }

    #[test]
    fn unknown_options_are_kept_for_a_warning() {
        let r =
            p("lowerdir=/a,context=\"system_u:object_r:container_file_t:s0:c1,c2\",frobnicate=1")
                .unwrap();
        assert_eq!(r.ignored, vec!["frobnicate=1".to_string()]);
    }

    #[test]
    fn several_o_arguments_and_escapes() {
        let r = parse(
            &[
                "lowerdir=/a\\,b".into(),
                "ro,noatime,timeout=2.5,threads=3".into(),
            ],
            USER,
        )
        .unwrap();
        assert_eq!(r.config.lowers, vec![PathBuf::from("/a,b")]);
        assert!(r.config.read_only && r.spec.read_only);
        assert_eq!(r.spec.flags, vec!["noatime".to_string()]);
        assert_eq!(r.fuse.timeout, Duration::from_millis(2500));
        assert_eq!(r.fuse.threads, 3);
    }

    /// The kernel's data-only layers: after a `::`.
    #[test]
    fn data_only_layers() {
        let r = p("lowerdir=/a:/b::/d1::/d2,metacopy=on").unwrap();
        assert_eq!(
            r.config.lowers,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(
            r.config.data_lowers,
            vec![PathBuf::from("/d1"), PathBuf::from("/d2")]
        );
        assert!(r.config.metacopy);
        assert!(matches!(
            p("lowerdir=/a,metacopy=yes").unwrap_err(),
            OptionError::BadValue { .. }
        ));
    }

    #[test]
    fn bad_strings() {
        assert_eq!(p("upperdir=/u").unwrap_err(), OptionError::NoLowerdir);
        assert!(matches!(
            p("lowerdir=").unwrap_err(),
            OptionError::BadValue { .. }
        ));
        for bad in [
            "lowerdir=/a:",
            "lowerdir=::/b",
            "lowerdir=/a::",
            "lowerdir=/a:::/b",
        ] {
            assert!(
                matches!(p(bad).unwrap_err(), OptionError::BadValue { .. }),
                "{bad}"
            );
        }
        assert!(matches!(
            p("lowerdir").unwrap_err(),
            OptionError::MissingValue(_)
        ));
        assert!(matches!(
            p("lowerdir=/a,context=\"x").unwrap_err(),
            OptionError::Malformed(_)
        ));
        assert!(matches!(
            p("lowerdir=/a,=x").unwrap_err(),
            OptionError::Malformed(_)
        ));
        assert!(matches!(
            p("lowerdir=/a,timeout=soon").unwrap_err(),
            OptionError::BadValue { .. }
        ));
        assert!(matches!(
            p("lowerdir=/a,upperdir=").unwrap_err(),
            OptionError::BadValue { .. }
        ));
        assert!(matches!(
            p("lowerdir=/a\\").unwrap_err(),
            OptionError::Malformed(_)
        ));
    }
}

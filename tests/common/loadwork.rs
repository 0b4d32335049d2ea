//! The workers of the load test, each a process of its own (the test
//! binary run again): what each does, and which errnos it may meet. Any
//! other errno, or data that reads back wrong, ends the worker with a
//! failure.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use super::lanes::Rng;

/// Names several workers fight over.
const SHARED: u64 = 32;
/// Lower files per mixed worker.
pub const LOWER_FILES: usize = 40;
/// Files a mixed worker keeps in its own directory at most.
const OWN_MAX: usize = 300;

/// What a lower file of worker `w` holds.
pub fn lower_content(w: usize, i: usize) -> Vec<u8> {
    format!("lower file {i} of worker {w}\n")
        .repeat(1 + i % 7)
        .into_bytes()
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn fail(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

/// Changes to names others change too: only these errnos may come back.
fn shared_ok(e: &std::io::Error) -> bool {
    matches!(
        errno(e),
        libc::ENOENT | libc::EEXIST | libc::ENOTEMPTY | libc::EISDIR | libc::ENOTDIR
    )
}

/// A worker with a directory of its own (every result known), lower files
/// of its own (copied up by appends and chmods) and a directory shared
/// with the others (races, so some errnos are expected).
pub fn mixed(root: &Path, w: usize, until: Instant, rng: &mut Rng) -> Result<u64, String> {
    let own = root.join(format!("own{w}"));
    std::fs::create_dir(&own).map_err(|e| fail("mkdir", &own, e))?;
    let lower = root.join(format!("lower/w{w}"));
    let shared = root.join("shared");
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut lowers: Vec<Vec<u8>> = (0..LOWER_FILES).map(|i| lower_content(w, i)).collect();
    let (mut n, mut ops) = (0u64, 0u64);
    while Instant::now() < until {
        ops += 1;
        let names: Vec<String> = files.keys().cloned().collect();
        // The tree stays bounded (so should the daemon's memory): past
        // a few hundred files, a create becomes an unlink.
        let full = files.len() >= OWN_MAX;
        match rng.below(20) {
            0..4 if full => {
                if let Some(a) = rng.pick(&names) {
                    std::fs::remove_file(own.join(a))
                        .map_err(|e| fail("unlink", &own.join(a), e))?;
                    files.remove(a);
                }
            }
            0..4 => {
                n += 1;
                let name = format!("o{n}");
                let len = 1 + rng.below(8192) as usize;
                let data = rng.bytes(len);
                let p = own.join(&name);
                std::fs::write(&p, &data).map_err(|e| fail("create", &p, e))?;
                files.insert(name, data);
            }
            4 => {
                if let Some(a) = rng.pick(&names) {
                    n += 1;
                    let b = format!("o{n}");
                    std::fs::rename(own.join(a), own.join(&b))
                        .map_err(|e| fail("rename", &own.join(a), e))?;
                    let d = files.remove(a).unwrap_or_default();
                    files.insert(b, d);
                }
            }
            5 => {
                if let Some(a) = rng.pick(&names) {
                    std::fs::remove_file(own.join(a))
                        .map_err(|e| fail("unlink", &own.join(a), e))?;
                    files.remove(a);
                }
            }
            6 | 11 => {
                if let Some(a) = rng.pick(&names) {
                    let p = own.join(a);
                    if rng.below(2) == 0 {
                        let len = rng.below(files[a].len() as u64 + 1);
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&p)
                            .and_then(|f| f.set_len(len))
                            .map_err(|e| fail("truncate", &p, e))?;
                        if let Some(d) = files.get_mut(a) {
                            d.truncate(len as usize);
                        }
                    }
                    let got = std::fs::read(&p).map_err(|e| fail("read", &p, e))?;
                    if got != files[a] {
                        return Err(format!("{}: read back other data", p.display()));
                    }
                }
            }
            7 => {
                let d = own.join(format!("d{}", rng.below(4)));
                std::fs::create_dir(&d).map_err(|e| fail("mkdir", &d, e))?;
                std::fs::write(d.join("x"), b"x").map_err(|e| fail("create in", &d, e))?;
                match std::fs::remove_dir(&d) {
                    Err(e) if errno(&e) == libc::ENOTEMPTY => {}
                    r => return Err(format!("rmdir of a full {}: {r:?}", d.display())),
                }
                std::fs::remove_file(d.join("x")).map_err(|e| fail("unlink in", &d, e))?;
                std::fs::remove_dir(&d).map_err(|e| fail("rmdir", &d, e))?;
            }
            8 => {
                let l = own.join("link");
                std::os::unix::fs::symlink("target", &l).map_err(|e| fail("symlink", &l, e))?;
                let t = std::fs::read_link(&l).map_err(|e| fail("readlink", &l, e))?;
                std::fs::remove_file(&l).map_err(|e| fail("unlink", &l, e))?;
                if t != Path::new("target") {
                    return Err(format!("{}: target {}", l.display(), t.display()));
                }
            }
            9 => {
                if let Some(a) = rng.pick(&names) {
                    let h = own.join("hard");
                    std::fs::hard_link(own.join(a), &h).map_err(|e| fail("link", &h, e))?;
                    let nl = std::os::unix::fs::MetadataExt::nlink(
                        &std::fs::metadata(&h).map_err(|e| fail("stat", &h, e))?,
                    );
                    std::fs::remove_file(&h).map_err(|e| fail("unlink", &h, e))?;
                    if nl != 2 {
                        return Err(format!("{}: {nl} links, expected 2", h.display()));
                    }
                }
            }
            10 => {
                if let Some(a) = rng.pick(&names) {
                    let p = own.join(a);
                    let v = rng.bytes(16);
                    xattr::set(&p, "user.load", &v).map_err(|e| fail("setxattr", &p, e))?;
                    let got = xattr::get(&p, "user.load").map_err(|e| fail("getxattr", &p, e))?;
                    if got.as_deref() != Some(&v[..]) {
                        return Err(format!("{}: xattr read back {got:?}", p.display()));
                    }
                }
            }
            12..15 => {
                let i = rng.below(LOWER_FILES as u64) as usize;
                let p = lower.join(format!("l{i}"));
                match rng.below(3) {
                    0 => {
                        let len = 1 + rng.below(100) as usize;
                        let data = rng.bytes(len);
                        std::fs::OpenOptions::new()
                            .append(true)
                            .open(&p)
                            .and_then(|mut f| f.write_all(&data))
                            .map_err(|e| fail("append to", &p, e))?;
                        lowers[i].extend_from_slice(&data);
                    }
                    1 => std::fs::set_permissions(
                        &p,
                        std::fs::Permissions::from_mode(0o600 | (rng.below(2) as u32 * 0o44)),
                    )
                    .map_err(|e| fail("chmod", &p, e))?,
                    _ => {}
                }
                let mut got = Vec::new();
                std::fs::File::open(&p)
                    .and_then(|mut f| f.read_to_end(&mut got))
                    .map_err(|e| fail("read", &p, e))?;
                if got != lowers[i] {
                    return Err(format!("{}: read back other data", p.display()));
                }
            }
            15..19 => shared_op(&shared, rng)?,
            _ => {
                let seen: BTreeSet<String> = std::fs::read_dir(&own)
                    .map_err(|e| fail("readdir", &own, e))?
                    .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| fail("readdir", &own, e))?;
                let want: BTreeSet<String> = files.keys().cloned().collect();
                if seen != want {
                    return Err(format!(
                        "{}: listed {:?}, expected {:?}",
                        own.display(),
                        seen.symmetric_difference(&want).collect::<Vec<_>>(),
                        ()
                    ));
                }
            }
        }
    }
    Ok(ops)
}

/// One change in the shared directory.
fn shared_op(shared: &Path, rng: &mut Rng) -> Result<(), String> {
    let p = shared.join(format!("s{}", rng.below(SHARED)));
    let q = shared.join(format!("s{}", rng.below(SHARED)));
    let r = match rng.below(8) {
        0 => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .and_then(|mut f| f.write_all(b"shared")),
        1 => std::fs::remove_file(&p),
        2 => std::fs::create_dir(&p),
        3 => std::fs::remove_dir(&p),
        4 => std::fs::rename(&p, &q),
        5 => std::fs::symlink_metadata(&p).map(drop),
        6 => std::fs::read_dir(shared).and_then(|mut d| d.try_for_each(|e| e.map(drop))),
        _ => std::fs::read(&p).map(drop),
    };
    match r {
        Err(e) if !shared_ok(&e) => Err(fail("shared op on", &p, e)),
        _ => Ok(()),
    }
}

/// Lists the large directory again and again while another worker
/// changes it: every name no one changes is listed exactly once, and no
/// name twice.
pub fn lister(dir: &Path, stable: usize, until: Instant) -> Result<u64, String> {
    let mut rounds = 0;
    while Instant::now() < until {
        let mut seen = BTreeSet::new();
        for e in std::fs::read_dir(dir).map_err(|e| fail("opendir", dir, e))? {
            let e = e.map_err(|e| fail("readdir", dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !seen.insert(name.clone()) {
                return Err(format!("{}: {name} listed twice", dir.display()));
            }
        }
        let missing = (0..stable)
            .filter(|i| !seen.contains(&format!("f{i}")))
            .count();
        if missing > 0 {
            return Err(format!(
                "{}: {missing} unchanged names not listed",
                dir.display()
            ));
        }
        rounds += 1;
    }
    Ok(rounds)
}

/// Changes the large directory: new names come and go, lower names are
/// deleted and made again.
pub fn changer(
    dir: &Path,
    changeable: usize,
    until: Instant,
    rng: &mut Rng,
) -> Result<u64, String> {
    let mut mine: BTreeSet<u64> = BTreeSet::new();
    let mut gone: BTreeSet<usize> = BTreeSet::new();
    let mut ops = 0;
    while Instant::now() < until {
        ops += 1;
        let k = rng.below(2000);
        let c = dir.join(format!("c{k}"));
        match rng.below(4) {
            0 if !mine.contains(&k) => {
                std::fs::write(&c, b"c").map_err(|e| fail("create", &c, e))?;
                mine.insert(k);
            }
            1 if mine.contains(&k) => {
                std::fs::remove_file(&c).map_err(|e| fail("unlink", &c, e))?;
                mine.remove(&k);
            }
            2 if mine.contains(&k) => {
                let j = rng.below(2000);
                if !mine.contains(&j) {
                    let to = dir.join(format!("c{j}"));
                    std::fs::rename(&c, &to).map_err(|e| fail("rename", &c, e))?;
                    mine.remove(&k);
                    mine.insert(j);
                }
            }
            _ => {
                let i = rng.below(changeable as u64) as usize;
                let g = dir.join(format!("g{i}"));
                if gone.remove(&i) {
                    std::fs::write(&g, b"again").map_err(|e| fail("create", &g, e))?;
                } else {
                    std::fs::remove_file(&g).map_err(|e| fail("unlink", &g, e))?;
                    gone.insert(i);
                }
            }
        }
    }
    Ok(ops)
}

/// A linker: thousands of outputs, each written through a shared mapping
/// and closed (python3's mmap module). A daemon that kept a descriptor per
/// output would run out of them.
pub const LINKER: &str = r#"
import mmap, os, sys, time, random
out, secs = sys.argv[1], float(sys.argv[2])
os.makedirs(out, exist_ok=True)
end = time.time() + secs
n = 0
while time.time() < end or n < 2000:
    p = os.path.join(out, "o%d" % (n % 3000))
    size = random.choice([4096, 65536, 300000])
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o755)
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size)
    m[0:4] = b"\x7fELF"
    m[size - 1:size] = b"\n"
    m.close()
    os.close(fd)
    with open(p, "rb") as f:
        if f.read(4) != b"\x7fELF":
            sys.exit("%s: the mapped write is not there" % p)
    n += 1
print(n)
"#;

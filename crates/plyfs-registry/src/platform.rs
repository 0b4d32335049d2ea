//! Platforms: this machine's, one given as `os/arch[/variant]`
//! (`--platform`, as podman spells it), and the manifest of a
//! multi-platform index that fits it.

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// This machine, in the OCI's (Go's) words.
    pub fn this_machine() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.into(),
            arch: arch.into(),
            variant: variant.map(str::to_string),
        }
    }

    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.into(),
                arch: arch.into(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.into(),
                    arch: arch.into(),
                    variant: Some(variant.into()),
                })
            }
            _ => Err(Error::Usage(format!(
                "--platform {s}: expected OS/ARCH[/VARIANT], e.g. linux/arm64"
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexEntry {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    platform: Option<EntryPlatform>,
}

#[derive(Debug, Deserialize)]
struct EntryPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

/// The entry of index `raw` for `want`: os and architecture equal; a
/// variant asked for must match, else an entry without one (or any) does.
pub(crate) fn choose(raw: &[u8], want: &Platform, reference: &str) -> Result<IndexEntry> {
    let index: Index = serde_json::from_slice(raw).map_err(|e| Error::Registry {
        reference: reference.into(),
        what: format!("the image index does not read: {e}"),
    })?;
    let fits = |e: &IndexEntry| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.arch)
    };
    let variant = |e: &IndexEntry| e.platform.as_ref().and_then(|p| p.variant.clone());
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    let mut candidates: Vec<IndexEntry> = index.manifests.into_iter().filter(fits).collect();
    let pick = match &want.variant {
        Some(v) => candidates
            .iter()
            .position(|e| variant(e).as_deref() == Some(v.as_str()))
            .or_else(|| candidates.iter().position(|e| variant(e).is_none())),
        None => candidates
            .iter()
            .position(|e| variant(e).is_none())
            .or((!candidates.is_empty()).then_some(0)),
    };
    match pick {
        Some(i) => Ok(candidates.swap_remove(i)),
        None => Err(Error::Platform {
            reference: reference.into(),
            wanted: want.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chooses_the_platform() {
        let raw = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"m","digest":"sha256:a","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"m","digest":"sha256:b","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v6"}},
            {"mediaType":"m","digest":"sha256:c","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"m","digest":"sha256:d","size":1,"platform":{"os":"unknown","architecture":"unknown"}}]}"#;
        let p = |s| Platform::parse(s).unwrap();
        assert_eq!(
            choose(raw, &p("linux/amd64"), "r").unwrap().digest,
            "sha256:a"
        );
        assert_eq!(
            choose(raw, &p("linux/arm/v7"), "r").unwrap().digest,
            "sha256:c"
        );
        let e = choose(raw, &p("linux/s390x"), "r").unwrap_err().to_string();
        assert!(
            e.contains("linux/arm/v6") && e.contains("linux/s390x"),
            "{e}"
        );
        assert!(Platform::parse("linux").is_err());
    }
}

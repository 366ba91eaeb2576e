//! The signed root of a suite: `dists/<suite>/InRelease`, checked with gpgv against Debian's archive
//! keyring, and the Packages indexes it vouches for by size and SHA256. Only the content gpgv
//! prints is used, so text outside the signature cannot smuggle in entries.

use super::cache::Cache;
use super::http;
use super::packages::Index;
use crate::util::cmd::cmd;
use crate::util::deb822;
use crate::util::host::{req, Requirement};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What reading the archive needs on the host.
pub fn requirements() -> Vec<Requirement> {
    vec![
        req("gpgv", "gpgv", "verifying the Debian archive's InRelease"),
        req(KEYRING, "debian-archive-keyring", "verifying the Debian archive"),
    ]
}

/// One file listed in the Release SHA256 section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// The verified Release fields we use.
#[derive(Clone, Debug)]
pub struct Release {
    /// Where it came from: "<mirror>/dists/<suite>/InRelease".
    pub url: String,
    /// The suite as the spec names it (and the lock records it).
    pub name: String,
    /// The Release's own Suite field ("stable-security" for trixie-security).
    pub suite: String,
    pub codename: String,
    pub date: String,
    pub acquire_by_hash: bool,
    pub sha256: Vec<IndexFile>,
}

impl Release {
    fn entry(&self, path: &str) -> Option<&IndexFile> {
        self.sha256.iter().find(|file| file.path == path)
    }
}

/// Downloads, verifies and parses `<mirror>/dists/<suite>/InRelease`, and checks it is for `suite`.
pub fn fetch(mirror: &str, suite: &str) -> Result<Release> {
    let url = format!("{mirror}/dists/{suite}/InRelease");
    let signed = match http::get_bytes(&url) {
        Err(err) if err.downcast_ref::<http::NotFound>().is_some() => {
            bail!("there is no suite {suite:?} at {mirror} ({err}); is the name right, and is this its archive?")
        }
        other => other?,
    };
    let content = verify(&signed).with_context(|| format!("verifying the signature of {url}"))?;
    let mut release = parse(&content, &url)?;
    // The Suite field holds the alias ("stable-security"), Codename the name ("trixie-security").
    if release.suite != suite && release.codename != suite {
        bail!(
            "{url} is for suite {:?} (codename {:?}), not {suite:?}; is the URL that suite's archive root?",
            release.suite,
            release.codename
        );
    }
    release.name = suite.to_string();
    Ok(release)
}

/// Runs gpgv on an InRelease file and returns the signed content it prints.
pub fn verify(signed: &[u8]) -> Result<String> {
    if !Path::new(KEYRING).exists() {
        bail!(
            "{KEYRING} is missing: install the debian-archive-keyring package (apt-get install debian-archive-keyring)"
        );
    }
    let dir = tempfile::tempdir().context("creating a temporary directory for gpgv")?;
    let path = dir.path().join("InRelease");
    std::fs::write(&path, signed).with_context(|| format!("writing {}", path.display()))?;
    let content = cmd("gpgv").arg("--keyring").arg(KEYRING).arg("--output").arg("-").arg(&path).output()?;
    String::from_utf8(content).context("the signed content of InRelease is not UTF-8")
}

/// Parses the Release fields from verified content; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Release> {
    let paragraphs = deb822::paragraphs(text);
    let fields = paragraphs.first().with_context(|| format!("{origin}: empty; is this a Debian Release file?"))?;
    let get = |key: &str| fields.get(key).unwrap_or_default().to_string();
    let mut release = Release {
        url: origin.to_string(),
        name: get("Codename"),
        suite: get("Suite"),
        codename: get("Codename"),
        date: get("Date"),
        acquire_by_hash: get("Acquire-By-Hash") == "yes",
        sha256: Vec::new(),
    };
    if let Some(field) = fields.field("SHA256") {
        // The value's first line is empty; each continuation line is one `digest size path` entry.
        for (line, number) in field.value.lines().skip(1).zip(&field.continuation_lines) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [sha256, size, path] = words[..] else {
                bail!("{origin} line {number}: SHA256 entry is not `digest size path`: {line:?}");
            };
            let size = size
                .parse()
                .with_context(|| format!("{origin} line {number}: SHA256 entry size {size:?} is not a number"))?;
            release.sha256.push(IndexFile { path: path.to_string(), size, sha256: sha256.to_ascii_lowercase() });
        }
    }
    if release.sha256.is_empty() {
        bail!("{origin}: no SHA256 section; is this a Debian Release file?");
    }
    Ok(release)
}

/// Downloads (or takes from the cache) `<component>/binary-<arch>/Packages.xz`, checks it against the
/// Release entry, and adds its packages to `index`.
pub fn load_packages(release: &Release, component: &str, arch: &str, cache: &Cache, index: &mut Index) -> Result<()> {
    let suite_dir = release.url.trim_end_matches("/InRelease");
    let relative = format!("{component}/binary-{arch}/Packages.xz");
    let entry = release.entry(&relative).with_context(|| {
        format!("{}: lists no {relative}; does the suite have component {component:?} for {arch}?", release.url)
    })?;
    let label = format!("{suite_dir}/{relative}");
    let path = match cache.verified(&entry.sha256, entry.size)? {
        Some(path) => path,
        None => {
            // by-hash URLs cannot change under us while the mirror updates; fall back to the plain path.
            let by_hash = format!("{suite_dir}/{component}/binary-{arch}/by-hash/SHA256/{}", entry.sha256);
            let plain = format!("{suite_dir}/{relative}");
            let urls: Vec<&str> = if release.acquire_by_hash { vec![&by_hash, &plain] } else { vec![&plain] };
            let bar = crate::util::progress::bytes(format!("Packages {component}/{arch}"), entry.size);
            let mut result = None;
            for url in urls {
                match cache.download(url, &entry.sha256, entry.size, &bar) {
                    Err(err) if err.downcast_ref::<http::NotFound>().is_some() => result = Some(Err(err)),
                    other => {
                        result = Some(other);
                        break;
                    }
                }
            }
            bar.finish_and_clear();
            result.context("no URL to try")?.with_context(|| format!("downloading {label}"))?
        }
    };
    let compressed = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    liblzma::read::XzDecoder::new(std::io::BufReader::new(compressed))
        .read_to_string(&mut text)
        .with_context(|| format!("decompressing {} (cached as {})", label, path.display()))?;
    index.add_packages_file(&text, &label, &release.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_fields_and_sha256_entries() {
        let text = "Origin: Debian\nSuite: stable\nCodename: bookworm\nDate: Sat, 10 May 2025 08:00:00 UTC\n\
                    Acquire-By-Hash: yes\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\nSHA256:\n \
                    ABCDEF 42 main/binary-amd64/Packages.xz\n 1234 7 main/binary-arm64/Release\n";
        let release = parse(text, "InRelease").unwrap();
        assert_eq!((release.suite.as_str(), release.codename.as_str()), ("stable", "bookworm"));
        assert!(release.acquire_by_hash);
        assert_eq!(release.sha256.len(), 2);
        assert_eq!(
            release.entry("main/binary-amd64/Packages.xz"),
            Some(&IndexFile { path: "main/binary-amd64/Packages.xz".into(), size: 42, sha256: "abcdef".into() })
        );
    }

    #[test]
    fn malformed_entry_names_line() {
        let err = format!("{:#}", parse("SHA256:\n abc notanumber x\n", "InRelease").unwrap_err());
        assert!(err.contains("InRelease line 2"), "{err}");
    }

    #[test]
    fn unsigned_content_is_rejected() {
        crate::tasks::host_tools::for_unit_tests();
        let err = format!("{:#}", verify(b"Suite: bookworm\n").unwrap_err());
        assert!(err.contains("gpgv"), "{err}");
    }
}

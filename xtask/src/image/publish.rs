//! Staging and publishing: a build writes every artifact into `out/<board>/.staging-*` and only a
//! complete build moves them into place, manifest.json last, each by an atomic rename, so a failed or
//! interrupted build leaves the previous outputs as they were.

use super::manifest::Manifest;
use crate::spec::names::{is_signing_output, signature_of, INDEX_FILE, MANIFEST_FILE, SUMS_FILE};
use crate::util::fs::{ensure_dir, TEMP_PREFIX};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

const STAGING_PREFIX: &str = ".staging-";

/// A staging directory inside an output directory; removed when dropped unless published.
pub struct Staging {
    dir: tempfile::TempDir,
    out: PathBuf,
}

impl Staging {
    /// Creates `out` if needed, removes staging directories a killed build left there (a failed build
    /// removes its own), and makes a new one.
    pub fn new(out: &Path) -> Result<Staging> {
        ensure_dir(out)?;
        for entry in fs::read_dir(out).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(STAGING_PREFIX) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(out)
            .with_context(|| format!("creating a staging directory in {}", out.display()))?;
        Ok(Staging { dir, out: out.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes manifest.json and moves it and every artifact it lists into the output directory,
    /// manifest.json last. Signatures of the previous build go first: they would otherwise sit next to
    /// files they do not vouch for.
    pub fn publish(self, manifest: &Manifest) -> Result<()> {
        let work = self.dir.path();
        fs::write(work.join(MANIFEST_FILE), manifest.to_json()?)
            .with_context(|| format!("writing {}", work.join(MANIFEST_FILE).display()))?;
        remove_signatures(&self.out)?;
        for name in manifest.artifacts.iter().map(|a| a.file.as_str()).chain([MANIFEST_FILE]) {
            fs::rename(work.join(name), self.out.join(name))
                .with_context(|| format!("publishing {} into {}", name, self.out.display()))?;
        }
        Ok(())
    }
}

/// Removes what signing wrote into `dir` (index.json, SHA256SUMS, their signatures, every `*.minisig`,
/// and temporary files of an interrupted write), index.json and SHA256SUMS.minisig first, so that at every moment a verifier finds
/// the directory unsigned rather than signed with stale signatures.
pub fn remove_signatures(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = !entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_file && (is_signing_output(&name) || name.starts_with(TEMP_PREFIX)) {
            stale.push(name);
        }
    }
    // The index first (it names everything else), then SHA256SUMS's signature and SHA256SUMS.
    let sums_signature = signature_of(SUMS_FILE);
    stale.sort_by_key(|name| (name != INDEX_FILE, name != &sums_signature, name != SUMS_FILE, name.clone()));
    for name in stale {
        let path = dir.join(&name);
        fs::remove_file(&path).with_context(|| format!("removing the stale signature file {}", path.display()))?;
    }
    Ok(())
}

/// Work directories named `<prefix>*` that killed builds left in `dir`. Builds can run side by side
/// on one cache, so only directories untouched for a day are taken for abandoned.
pub fn remove_abandoned(dir: &Path, prefix: &str) {
    let day = std::time::Duration::from_secs(24 * 60 * 60);
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(prefix)
            && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_signatures_leaves_only_the_build_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let temporary = format!("{TEMP_PREFIX}x1");
        for name in
            ["SHA256SUMS", "SHA256SUMS.minisig", "a.raw.minisig", "index.json", &temporary, "a.raw", "manifest.json"]
        {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        remove_signatures(d).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["a.raw", "manifest.json"]);
        remove_signatures(&d.join("missing")).unwrap();
    }
}

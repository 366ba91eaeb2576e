//! The content-addressed download cache (`<cache>/sha256/<hex>`). Entries are re-hashed before every
//! use, so a corrupted cache heals instead of poisoning an image, and a warm cache needs neither
//! network nor a mirror.

use super::http;
use crate::spec::workspace::Workspace;
use crate::util::digest::sha256_reader;
use crate::util::fs::set_readable;
use crate::util::progress;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use std::path::PathBuf;

/// What a cache entry turned out to be.
pub enum Entry {
    Missing,
    Valid(PathBuf),
    Corrupt { path: PathBuf, actual_sha256: String, actual_size: u64 },
}

/// The content-addressed download cache.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache under the workspace's cache directory.
    pub fn new(ws: &Workspace) -> Cache {
        Cache::at(ws.cache_dir())
    }

    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { dir: root.into().join("sha256") }
    }

    /// The directory holding the entries.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Where the file with this digest lives (whether or not it is there yet).
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Re-hashes the entry for `sha256` and says whether it is there and intact.
    pub fn check(&self, sha256: &str, size: u64) -> Result<Entry> {
        let path = self.entry_path(sha256);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Entry::Missing),
            Err(err) => return Err(err).with_context(|| format!("opening cache entry {}", path.display())),
        };
        let (actual_sha256, actual_size) =
            sha256_reader(file).with_context(|| format!("hashing cache entry {}", path.display()))?;
        if actual_sha256 == sha256 && actual_size == size {
            Ok(Entry::Valid(path))
        } else {
            Ok(Entry::Corrupt { path, actual_sha256, actual_size })
        }
    }

    /// The entry's path if it is there and intact; a corrupt entry is reported and treated as missing.
    pub fn verified(&self, sha256: &str, size: u64) -> Result<Option<PathBuf>> {
        match self.check(sha256, size)? {
            Entry::Valid(path) => Ok(Some(path)),
            Entry::Missing => Ok(None),
            Entry::Corrupt { path, .. } => {
                progress::note(format!("cache entry {} is corrupt; downloading it again", path.display()));
                Ok(None)
            }
        }
    }

    /// Downloads `url` into a temporary file beside the entries, checks size and digest, and only
    /// then renames it into place, so an entry is never half-written or wrong.
    pub fn download(&self, url: &str, sha256: &str, size: u64, bar: &ProgressBar) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache directory {}", self.dir.display()))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(&self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        let written = http::download_to_file(url, temp.as_file_mut(), size, bar)?;
        if written != size {
            bail!("downloaded {url}: got {written} bytes, expected {size}");
        }
        temp.as_file_mut().sync_all().with_context(|| format!("writing {}", temp.path().display()))?;
        let (actual, _) = sha256_reader(
            std::fs::File::open(temp.path()).with_context(|| format!("reopening {}", temp.path().display()))?,
        )
        .with_context(|| format!("hashing {}", temp.path().display()))?;
        if actual != sha256 {
            bail!("downloaded {url}: sha256 is {actual}, expected {sha256}");
        }
        set_readable(temp.path())?;
        let path = self.entry_path(sha256);
        temp.persist(&path).with_context(|| format!("moving the download into {}", path.display()))?;
        Ok(path)
    }
}

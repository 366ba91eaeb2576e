//! The journal of an unfinished multipart upload: the upload id and, per part, the ETag the store
//! returned, with what is being uploaded where (endpoint, bucket, key, the file's size and sha256,
//! the part size). It is rewritten atomically after every part, in a directory beside the output
//! directory (`out/<board>.upload-journal/`), one file per object and destination, and removed when
//! the object is complete. A later run that finds a journal for the same file content and destination
//! sends only the parts it does not list; a journal for anything else is stale.

use crate::util::digest::hex;
use crate::util::fs::write_atomic_unsynced;
use crate::util::progress;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub format: u32,
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub file: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub part_size: u64,
    pub upload_id: String,
    /// Part number (from 1, as S3 numbers them) → the ETag its upload returned, kept verbatim.
    pub parts: BTreeMap<usize, String>,
}

impl Journal {
    /// A journal for a new upload (no id, no parts yet).
    pub fn new(endpoint: &str, bucket: &str, key: &str, file: &Path, size: u64, sha256: &str, part_size: u64) -> Self {
        Journal {
            format: FORMAT,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
            file: file.to_path_buf(),
            size,
            sha256: sha256.to_string(),
            part_size,
            upload_id: String::new(),
            parts: BTreeMap::new(),
        }
    }

    /// Whether `self` journals the upload `other` describes (everything but the id and the parts).
    pub fn same_upload(&self, other: &Journal) -> bool {
        let strip = |j: &Journal| Journal { upload_id: String::new(), parts: BTreeMap::new(), ..j.clone() };
        strip(self) == strip(other)
    }

    /// Reads a journal; None when there is none, or when it is damaged (said, and the upload starts
    /// over).
    pub fn load(path: &Path) -> Result<Option<Journal>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading the upload journal {}", path.display())),
        };
        match serde_json::from_slice(&bytes) {
            Ok(journal) => Ok(Some(journal)),
            Err(e) => {
                progress::note(format!("{} is not an upload journal ({e}): starting that upload over", path.display()));
                Ok(None)
            }
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("a journal path has a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = serde_json::to_vec_pretty(self).context("serializing the upload journal")?;
        // Rewritten after every part: not synced to disk each time (a journal a power cut loses or
        // damages only means resending parts; see `load`).
        write_atomic_unsynced(path, &text).with_context(|| format!("writing the upload journal {}", path.display()))
    }

    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing the upload journal {}", path.display())),
        }
        // The directory goes with its last journal.
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// The journal directory of an output directory: beside it, `<dir>.upload-journal`.
pub fn dir_beside(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().with_context(|| format!("{} has no directory name", out.display()))?;
    Ok(out.with_file_name(format!("{}.upload-journal", name.to_string_lossy())))
}

/// The journal of `file` uploaded to `url`: the file's name and a digest of the destination, so
/// uploads of one directory to two places keep two journals.
pub fn path_for(journal_dir: &Path, file: &str, url: &str) -> PathBuf {
    let destination = hex(&Sha256::digest(url.as_bytes()));
    journal_dir.join(format!("{file}.{}.json", &destination[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("qemu-arm64");
        let journals = dir_beside(&out).unwrap();
        assert_eq!(journals, dir.path().join("qemu-arm64.upload-journal"));
        let path = path_for(&journals, "a.raw", "s3://b/k");
        assert_ne!(path, path_for(&journals, "a.raw", "s3://c/k"));
        let mut journal = Journal::new("e", "b", "k", Path::new("/x/a.raw"), 10, "ab", 5);
        journal.upload_id = "id".into();
        journal.parts.insert(1, "\"etag\"".into());
        journal.save(&path).unwrap();
        let back = Journal::load(&path).unwrap().unwrap();
        assert_eq!(back, journal);
        assert!(back.same_upload(&Journal::new("e", "b", "k", Path::new("/x/a.raw"), 10, "ab", 5)));
        assert!(!back.same_upload(&Journal::new("e", "b", "k", Path::new("/x/a.raw"), 10, "cd", 5)));
        Journal::remove(&path).unwrap();
        assert!(!journals.exists(), "the empty journal directory is removed");
        std::fs::create_dir_all(&journals).unwrap();
        std::fs::write(&path, "{").unwrap();
        assert_eq!(Journal::load(&path).unwrap(), None, "a damaged journal is stale");
    }
}

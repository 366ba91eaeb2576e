//! `index.json`: the complete list of a signed release's files (the artifacts, manifest.json,
//! SHA256SUMS and every signature), each with its size and sha256, for one image, version and arch,
//! signed like the rest (`index.json.minisig`). SHA256SUMS vouches for the build's files; the index
//! also names the signatures, so it says what a whole release is. Signing writes it last; upload
//! publishes it after everything it names and the channel pointer names it, so a reader that finds
//! the index finds the release complete.

use crate::image::manifest::{check_plain_name, is_sha256_hex, Artifact, Manifest};
use crate::spec::names::{signature_of, INDEX_FILE, SUMS_FILE};
use crate::spec::Arch;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Index {
    pub image: String,
    pub version: String,
    pub arch: Arch,
    /// Sorted by file name; never lists index.json or its signature.
    pub files: Vec<Artifact>,
}

impl Index {
    /// The index of a release whose files are `files` (any order).
    pub fn new(manifest: &Manifest, mut files: Vec<Artifact>) -> Index {
        files.sort_by(|a, b| a.file.cmp(&b.file));
        Index { image: manifest.image.clone(), version: manifest.version.clone(), arch: manifest.arch, files }
    }

    /// Parses and checks index.json's text; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Index> {
        let index: Index = serde_json::from_slice(bytes).with_context(|| format!("{origin}: not a valid index"))?;
        let mut previous: Option<&str> = None;
        for entry in &index.files {
            check_plain_name(&entry.file)
                .and_then(|()| {
                    ensure!(
                        entry.file != INDEX_FILE && entry.file != signature_of(INDEX_FILE),
                        "the index cannot list itself or its signature"
                    );
                    ensure!(previous.is_none_or(|p| p < entry.file.as_str()), "not sorted, or listed twice");
                    ensure!(is_sha256_hex(&entry.sha256), "sha256 {:?} is not 64 lowercase hex digits", entry.sha256);
                    Ok(())
                })
                .with_context(|| format!("{origin}: file {:?}", entry.file))?;
            previous = Some(&entry.file);
        }
        Ok(index)
    }

    /// The text signing writes (and upload publishes): pretty JSON, one trailing newline.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self).context("serializing index.json")? + "\n")
    }

    pub fn names(&self) -> BTreeSet<&str> {
        self.files.iter().map(|f| f.file.as_str()).collect()
    }
}

/// What the index of a release whose SHA256SUMS lists `signed` must name: each of those files and
/// its signature, SHA256SUMS and its signature.
pub fn expected_names<'a>(signed: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut names = BTreeSet::from([SUMS_FILE.to_string(), signature_of(SUMS_FILE)]);
    for file in signed {
        names.insert(file.to_string());
        names.insert(signature_of(file));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_unsorted_paths_and_self_reference() {
        let entry = |file: &str| format!(r#"{{"file":"{file}","size":1,"sha256":"{}"}}"#, "a".repeat(64));
        let text = |files: &[&str]| {
            let files: Vec<String> = files.iter().map(|f| entry(f)).collect();
            format!(r#"{{"image":"node","version":"1","arch":"amd64","files":[{}]}}"#, files.join(","))
        };
        Index::parse(text(&["SHA256SUMS", "a.raw"]).as_bytes(), "i").unwrap();
        for bad in [&["b", "a"][..], &["a", "a"], &["x/y"], &["index.json"], &["index.json.minisig"]] {
            assert!(Index::parse(text(bad).as_bytes(), "i").is_err(), "{bad:?}");
        }
        assert_eq!(expected_names(["a.raw"]).len(), 4);
    }
}

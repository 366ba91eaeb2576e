//! `cargo xtask verify`: checks a signed release against a public key, wherever it lies: a directory
//! here, or the objects under a bucket prefix, read through [`Source`] (source.rs) with the same
//! checks and the same messages. Needs only the release and the key (no spec, boards or repository),
//! so a copy anywhere can be checked. Every problem found is reported, each naming its file; none
//! stops the others. Each file is read once.
//!
//! Checked: SHA256SUMS.minisig; every SHA256SUMS line (well-formed, file present, digest matches);
//! every listed file's `.minisig` (key id, signature, trusted comment signature, and that the trusted
//! comment names this file, its sha256, and manifest.json's image, version and arch); that SHA256SUMS
//! lists exactly manifest.json and its artifacts, with the manifest's digests and sizes; and that the
//! signed index.json names exactly those files, their signatures and SHA256SUMS, with their sizes
//! and digests. Where the source holds the release alone (a bucket prefix), nothing else may be there.

use super::index::{expected_names, Index};
use super::minisign::{digest_bytes, digest_each, digest_reader, FileDigests, Minisig, PublicKey, SignatureError};
use super::source::{Dir, Source};
use crate::image::manifest::{check_file_name, is_sha256_hex, Manifest};
use crate::spec::names::{signature_of, INDEX_FILE, MANIFEST_FILE, SIGNATURE_SUFFIX, SUMS_FILE};
use anyhow::Context;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct VerifiedFile {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The file the problem is about (a name inside the directory, or a path outside it).
    pub file: String,
    pub message: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub files: Vec<VerifiedFile>,
    pub errors: Vec<Problem>,
}

impl Report {
    pub fn problem(&mut self, file: &str, message: impl Into<String>) {
        self.errors.push(Problem { file: file.to_string(), message: message.into() });
    }

    /// Each problem as `file: message`.
    pub fn problem_lines(&self) -> Vec<String> {
        self.errors.iter().map(|p| format!("{}: {}", p.file, p.message)).collect()
    }

    fn is_clean(&self, file: &str) -> bool {
        let signature = format!("{file}{SIGNATURE_SUFFIX}");
        !self.errors.iter().any(|p| p.file == file || p.file == signature)
    }
}

/// Checks the directory `dir` against `key` (see [`verify`]).
pub fn verify_dir(dir: &Path, key: &PublicKey) -> Report {
    verify(&Dir::new(dir), key)
}

/// Checks the release in `source` against `key`. Never stops at the first problem: the report lists
/// them all.
pub fn verify(source: &dyn Source, key: &PublicKey) -> Report {
    let mut check = Check { source, key, manifest: None, signatures: BTreeMap::new(), report: Report::default() };
    check.run();
    let mut report = check.report;
    // Group each file's problems together, in file order, its signature's right after it.
    report.errors.sort_by(|a, b| {
        let base = |p: &Problem| p.file.strip_suffix(SIGNATURE_SUFFIX).unwrap_or(&p.file).to_string();
        base(a).cmp(&base(b))
    });
    report.ok = report.errors.is_empty();
    report
}

struct Check<'a> {
    source: &'a dyn Source,
    key: &'a PublicKey,
    manifest: Option<Manifest>,
    /// Each signature file read, by name, for the index's check.
    signatures: BTreeMap<String, FileDigests>,
    report: Report,
}

impl Check<'_> {
    fn run(&mut self) {
        let source = self.source;
        if let Some(why) = source.absent() {
            self.report.problem(&source.location(), why);
            return;
        }
        let sums_bytes = match source.read(SUMS_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.report.problem(
                    SUMS_FILE,
                    format!("missing from {}: the directory is not signed (run `cargo xtask sign`)", source.location()),
                );
                return;
            }
            Err(e) => {
                self.report.problem(SUMS_FILE, format!("cannot read {}: {e}", source.path(SUMS_FILE)));
                return;
            }
        };
        // manifest.json is read once: its bytes are parsed here and hashed below.
        let manifest_bytes = self.load_manifest();
        let sums_digests = digest_bytes(&sums_bytes);
        self.check_signature(SUMS_FILE, &sums_digests);
        let listed = parse_sums(&sums_bytes, &mut self.report);

        // Hash every listed file that exists; the missing ones are problems of their own.
        let mut present = Vec::new();
        for name in listed.keys() {
            match source.size(name) {
                Ok(_) => present.push(name.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.report.problem(name, format!("listed in {SUMS_FILE} but missing from {}", source.location()))
                }
                Err(e) => self.report.problem(name, format!("cannot stat {}: {e}", source.path(name))),
            }
        }
        let step = crate::util::progress::step(format!("hashing {} files in {}", present.len(), source.location()));
        let hashed = digest_each(present.len(), |i| {
            if let (MANIFEST_FILE, Some(bytes)) = (present[i].as_str(), &manifest_bytes) {
                return Ok(digest_bytes(bytes));
            }
            let path = source.path(&present[i]);
            let reader = source.open(&present[i]).with_context(|| format!("opening {path}"))?;
            digest_reader(reader, &path)
        });
        step.done();
        let mut digests: BTreeMap<String, FileDigests> = BTreeMap::new();
        for (name, result) in present.into_iter().zip(hashed) {
            match result {
                Ok(d) => {
                    digests.insert(name, d);
                }
                Err(e) => self.report.problem(&name, format!("{e:#}")),
            }
        }

        for (name, d) in &digests {
            let listed_sha256 = &listed[name];
            if d.sha256_hex() != *listed_sha256 {
                self.report.problem(
                    name,
                    format!(
                        "content does not match {SUMS_FILE} (sha256 {}, listed {listed_sha256}): the file was modified, truncated or replaced",
                        d.sha256_hex()
                    ),
                );
            }
            self.check_signature(name, d);
        }

        if let Some(manifest) = &self.manifest {
            check_against_manifest(manifest, &listed, &digests, &mut self.report);
        }
        let index = self.check_index(&listed, &sums_digests);

        if self.report.is_clean(SUMS_FILE) {
            self.report.files.push(VerifiedFile {
                file: SUMS_FILE.to_string(),
                size: sums_digests.size,
                sha256: sums_digests.sha256_hex(),
            });
        }
        for (name, d) in digests.iter().chain(index.iter().map(|(n, d)| (n, d))) {
            if self.report.is_clean(name) {
                self.report.files.push(VerifiedFile { file: name.clone(), size: d.size, sha256: d.sha256_hex() });
            }
        }
    }

    /// Reads and parses manifest.json into `self.manifest`; returns the bytes read, for hashing.
    fn load_manifest(&mut self) -> Option<Vec<u8>> {
        let path = self.source.path(MANIFEST_FILE);
        match self.source.read(MANIFEST_FILE) {
            Ok(bytes) => {
                match Manifest::parse(&bytes, Path::new(&path)) {
                    Ok(manifest) => self.manifest = Some(manifest),
                    Err(e) => self.report.problem(MANIFEST_FILE, format!("{e:#}")),
                }
                Some(bytes)
            }
            // Reported once, as a listed file that is missing (or as not listed).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                self.report.problem(MANIFEST_FILE, format!("cannot read {path}: {e}"));
                None
            }
        }
    }

    /// Checks index.json: its signature, that it names exactly the signed files, their signatures
    /// and SHA256SUMS with the digests found, and, where the source holds the release alone, that
    /// nothing else is there. Returns the index's own digests when it could be read.
    fn check_index(&mut self, listed: &BTreeMap<String, String>, sums: &FileDigests) -> Option<(String, FileDigests)> {
        let source = self.source;
        let bytes = match source.read(INDEX_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.report.problem(
                    INDEX_FILE,
                    format!("missing from {}: the release has no index (run `cargo xtask sign`)", source.location()),
                );
                return None;
            }
            Err(e) => {
                self.report.problem(INDEX_FILE, format!("cannot read {}: {e}", source.path(INDEX_FILE)));
                return None;
            }
        };
        let digests = digest_bytes(&bytes);
        self.check_signature(INDEX_FILE, &digests);
        let index = match Index::parse(&bytes, &source.path(INDEX_FILE)) {
            Ok(index) => index,
            Err(e) => {
                self.report.problem(INDEX_FILE, format!("{e:#}"));
                return Some((INDEX_FILE.to_string(), digests));
            }
        };
        if let Some(manifest) = &self.manifest {
            let pairs = [
                ("image", &index.image, manifest.image.clone()),
                ("version", &index.version, manifest.version.clone()),
                ("arch", &index.arch.to_string(), manifest.arch.to_string()),
            ];
            for (field, got, want) in pairs {
                if *got != want {
                    self.report
                        .problem(INDEX_FILE, format!("says {field}={got}, but {MANIFEST_FILE} says {field}={want}"));
                }
            }
        }
        let expected = expected_names(listed.keys().map(String::as_str));
        for name in &expected {
            if !index.names().contains(name.as_str()) {
                self.report.problem(name, format!("not listed in {INDEX_FILE}"));
            }
        }
        for entry in &index.files {
            if !expected.contains(&entry.file) {
                self.report.problem(&entry.file, format!("listed in {INDEX_FILE} but not part of the signed release"));
                continue;
            }
            // A signed file is compared with SHA256SUMS (its own content was checked against that);
            // SHA256SUMS and the signatures with what was read.
            let (size, sha256) = if let Some(sha256) = listed.get(&entry.file) {
                (self.manifest_size(&entry.file), sha256.clone())
            } else if entry.file == SUMS_FILE {
                (Some(sums.size), sums.sha256_hex())
            } else if let Some(d) = self.signatures.get(&entry.file) {
                (Some(d.size), d.sha256_hex())
            } else {
                continue; // a missing or unreadable signature, reported already
            };
            if sha256 != entry.sha256 || size.is_some_and(|size| size != entry.size) {
                self.report.problem(
                    &entry.file,
                    format!(
                        "does not match {INDEX_FILE} ({} bytes, sha256 {sha256}; the index says {} bytes, sha256 {})",
                        size.map_or("?".to_string(), |s| s.to_string()),
                        entry.size,
                        entry.sha256
                    ),
                );
            }
        }
        if source.exclusive() {
            match source.names() {
                Ok(names) => {
                    let signature = signature_of(INDEX_FILE);
                    for name in names {
                        if name != INDEX_FILE && name != signature && !expected.contains(&name) {
                            self.report.problem(
                                &name,
                                format!(
                                    "in {} but not part of the release ({INDEX_FILE} does not list it)",
                                    source.location()
                                ),
                            );
                        }
                    }
                }
                Err(e) => self.report.problem(&source.location(), format!("cannot list {}: {e}", source.location())),
            }
        }
        Some((INDEX_FILE.to_string(), digests))
    }

    /// The size manifest.json records for a file (None for manifest.json itself, or without one).
    fn manifest_size(&self, file: &str) -> Option<u64> {
        self.manifest.as_ref()?.artifacts.iter().find(|a| a.file == file).map(|a| a.size)
    }

    /// Checks `file`'s `.minisig`: key, both signatures, and what its trusted comment says.
    fn check_signature(&mut self, file: &str, digests: &FileDigests) {
        let sig_name = signature_of(file);
        let bytes = match self.source.read(&sig_name) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.report.problem(&sig_name, format!("missing: {file} is not signed"));
                return;
            }
            Err(e) => {
                self.report.problem(&sig_name, format!("cannot read {}: {e}", self.source.path(&sig_name)));
                return;
            }
        };
        self.signatures.insert(sig_name.clone(), digest_bytes(&bytes));
        let parsed = std::str::from_utf8(&bytes)
            .map_err(|_| anyhow::anyhow!("malformed signature file: not UTF-8 text"))
            .and_then(Minisig::parse);
        let minisig = match parsed {
            Ok(minisig) => minisig,
            Err(e) => {
                self.report.problem(&sig_name, format!("{e:#}"));
                return;
            }
        };
        let report = &mut self.report;
        let fields: BTreeMap<&str, &str> =
            minisig.trusted_comment.split(' ').filter_map(|field| field.split_once('=')).collect();
        if let Err(e) = self.key.verify(&minisig, &digests.blake2b512) {
            // After a BadSignature the trusted comment is authentic, so it can say whose signature this is.
            let hint = match (e, fields.get("file")) {
                (SignatureError::BadSignature, Some(signed)) if *signed != file => {
                    format!("; it is the signature of {signed}, not of {file}")
                }
                _ => format!(" (signature of {file})"),
            };
            report.problem(&sig_name, format!("{e}{hint}"));
            return;
        }
        let mut expected = vec![("file", file.to_string()), ("sha256", digests.sha256_hex())];
        if let Some(manifest) = &self.manifest {
            expected.push(("image", manifest.image.clone()));
            expected.push(("version", manifest.version.clone()));
            expected.push(("arch", manifest.arch.to_string()));
        }
        for (field, want) in expected {
            match fields.get(field) {
                Some(got) if *got == want => {}
                Some(got) => report.problem(
                    &sig_name,
                    format!("trusted comment says {field}={got}, but {file} has {field}={want} (signature belongs to another file or release)"),
                ),
                None => report.problem(
                    &sig_name,
                    format!("trusted comment {:?} has no {field}= (not made by `cargo xtask sign`?)", minisig.trusted_comment),
                ),
            }
        }
    }
}

/// SHA256SUMS as file name → sha256 hex; malformed lines and duplicates are problems.
fn parse_sums(bytes: &[u8], report: &mut Report) -> BTreeMap<String, String> {
    let mut listed = BTreeMap::new();
    let Ok(text) = std::str::from_utf8(bytes) else {
        report.problem(SUMS_FILE, "not UTF-8 text");
        return listed;
    };
    for (index, line) in text.split_terminator('\n').enumerate() {
        let line_no = index + 1;
        // sha256sum writes "<hex>  <name>" (text mode) or "<hex> *<name>" (binary mode).
        let Some((sha256, name)) = line.split_once("  ").or_else(|| line.split_once(" *")) else {
            report.problem(SUMS_FILE, format!("line {line_no} is not \"<sha256>  <file>\": {line:?}"));
            continue;
        };
        if !is_sha256_hex(sha256) {
            report.problem(SUMS_FILE, format!("line {line_no}: {sha256:?} is not a lowercase sha256"));
            continue;
        }
        if let Err(e) = check_file_name(name) {
            report.problem(SUMS_FILE, format!("line {line_no}: {e}"));
            continue;
        }
        if listed.insert(name.to_string(), sha256.to_string()).is_some() {
            report.problem(SUMS_FILE, format!("line {line_no}: {name} is listed twice"));
        }
    }
    if listed.is_empty() {
        report.problem(SUMS_FILE, "lists no files");
    }
    listed
}

/// SHA256SUMS must list exactly manifest.json and the manifest's artifacts, with the manifest's
/// digests, and each artifact must have the size the manifest records.
fn check_against_manifest(
    manifest: &Manifest,
    listed: &BTreeMap<String, String>,
    digests: &BTreeMap<String, FileDigests>,
    report: &mut Report,
) {
    if !listed.contains_key(MANIFEST_FILE) {
        report.problem(MANIFEST_FILE, format!("not listed in {SUMS_FILE}"));
    }
    let mut in_manifest = BTreeSet::from([MANIFEST_FILE]);
    for artifact in &manifest.artifacts {
        let name = artifact.file.as_str();
        in_manifest.insert(name);
        match listed.get(name) {
            None => report.problem(name, format!("listed in {MANIFEST_FILE} but not in {SUMS_FILE}")),
            Some(sha256) if *sha256 != artifact.sha256 => report.problem(
                name,
                format!("{SUMS_FILE} lists sha256 {sha256}, but {MANIFEST_FILE} says {}", artifact.sha256),
            ),
            Some(_) => {}
        }
        if let Some(d) = digests.get(name) {
            if d.size != artifact.size {
                let how = if d.size < artifact.size { "truncated" } else { "extended" };
                report.problem(name, format!("{} bytes, but {MANIFEST_FILE} says {} ({how})", d.size, artifact.size));
            }
        }
    }
    for name in listed.keys() {
        if !in_manifest.contains(name.as_str()) {
            report.problem(name, format!("listed in {SUMS_FILE} but not in {MANIFEST_FILE}"));
        }
    }
}

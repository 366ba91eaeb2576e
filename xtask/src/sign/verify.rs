//! `cargo xtask verify`: checks a signed output directory against a public key. Needs only the
//! directory and the key (no spec, boards, repository or network), so a copy of a release anywhere
//! can be checked. Every problem found is reported, each naming its file; none stops the others.
//!
//! Checked: SHA256SUMS.minisig; every SHA256SUMS line (well-formed, file present, digest matches);
//! every listed file's `.minisig` (key id, signature, trusted comment signature, and that the trusted
//! comment names this file, its sha256, and manifest.json's image, version and arch); and that
//! SHA256SUMS lists exactly manifest.json and its artifacts, with the manifest's digests and sizes.

use super::minisign::{digest_bytes, digest_files, FileDigests, Minisig, PublicKey, SignatureError};
use crate::image::manifest::{check_file_name, is_sha256_hex, Manifest};
use crate::spec::names::{MANIFEST_FILE, SIGNATURE_SUFFIX, SUMS_FILE};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

    fn is_clean(&self, file: &str) -> bool {
        let signature = format!("{file}{SIGNATURE_SUFFIX}");
        !self.errors.iter().any(|p| p.file == file || p.file == signature)
    }
}

/// Checks `dir` against `key`. Never stops at the first problem: the report lists them all.
pub fn verify_dir(dir: &Path, key: &PublicKey) -> Report {
    let mut report = Report::default();
    if !dir.is_dir() {
        report.problem(&dir.display().to_string(), "no such directory");
        return report;
    }
    let sums_bytes = match std::fs::read(dir.join(SUMS_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.problem(
                SUMS_FILE,
                format!("missing from {}: the directory is not signed (run `cargo xtask sign`)", dir.display()),
            );
            return report;
        }
        Err(e) => {
            report.problem(SUMS_FILE, format!("cannot read {}: {e}", dir.join(SUMS_FILE).display()));
            return report;
        }
    };
    let manifest = load_manifest(dir, &mut report);
    let sums_digests = digest_bytes(&sums_bytes);
    check_signature(dir, key, SUMS_FILE, &sums_digests, manifest.as_ref(), &mut report);
    let listed = parse_sums(&sums_bytes, &mut report);

    // Hash every listed file that exists; the missing ones are problems of their own.
    let mut present = Vec::new();
    for name in listed.keys() {
        match dir.join(name).symlink_metadata() {
            Ok(_) => present.push(name.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                report.problem(name, format!("listed in {SUMS_FILE} but missing from {}", dir.display()))
            }
            Err(e) => report.problem(name, format!("cannot stat {}: {e}", dir.join(name).display())),
        }
    }
    let paths: Vec<PathBuf> = present.iter().map(|name| dir.join(name)).collect();
    let step = crate::util::progress::step(format!("hashing {} files in {}", paths.len(), dir.display()));
    let hashed = digest_files(&paths);
    step.done();
    let mut digests: BTreeMap<String, FileDigests> = BTreeMap::new();
    for (name, result) in present.into_iter().zip(hashed) {
        match result {
            Ok(d) => {
                digests.insert(name, d);
            }
            Err(e) => report.problem(&name, format!("{e:#}")),
        }
    }

    for (name, d) in &digests {
        let listed_sha256 = &listed[name];
        if d.sha256_hex() != *listed_sha256 {
            report.problem(
                name,
                format!(
                    "content does not match {SUMS_FILE} (sha256 {}, listed {listed_sha256}): the file was modified, truncated or replaced",
                    d.sha256_hex()
                ),
            );
        }
        check_signature(dir, key, name, d, manifest.as_ref(), &mut report);
    }

    if let Some(manifest) = &manifest {
        check_against_manifest(manifest, &listed, &digests, &mut report);
    }

    if report.is_clean(SUMS_FILE) {
        report.files.push(VerifiedFile {
            file: SUMS_FILE.to_string(),
            size: sums_digests.size,
            sha256: sums_digests.sha256_hex(),
        });
    }
    for (name, d) in &digests {
        if report.is_clean(name) {
            report.files.push(VerifiedFile { file: name.clone(), size: d.size, sha256: d.sha256_hex() });
        }
    }
    // Group each file's problems together, in file order, its signature's right after it.
    report.errors.sort_by(|a, b| {
        let base = |p: &Problem| p.file.strip_suffix(SIGNATURE_SUFFIX).unwrap_or(&p.file).to_string();
        base(a).cmp(&base(b))
    });
    report.ok = report.errors.is_empty();
    report
}

fn load_manifest(dir: &Path, report: &mut Report) -> Option<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => match Manifest::parse(&bytes, &path) {
            Ok(manifest) => Some(manifest),
            Err(e) => {
                report.problem(MANIFEST_FILE, format!("{e:#}"));
                None
            }
        },
        // Reported once, as a listed file that is missing (or as not listed).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            report.problem(MANIFEST_FILE, format!("cannot read {}: {e}", path.display()));
            None
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

/// Checks `file`'s `.minisig`: key, both signatures, and what its trusted comment says.
fn check_signature(
    dir: &Path,
    key: &PublicKey,
    file: &str,
    digests: &FileDigests,
    manifest: Option<&Manifest>,
    report: &mut Report,
) {
    let sig_name = format!("{file}{SIGNATURE_SUFFIX}");
    let sig_path = dir.join(&sig_name);
    let minisig = match std::fs::read_to_string(&sig_path).map(|text| Minisig::parse(&text)) {
        Ok(Ok(minisig)) => minisig,
        Ok(Err(e)) => {
            report.problem(&sig_name, format!("{e:#}"));
            return;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.problem(&sig_name, format!("missing: {file} is not signed"));
            return;
        }
        Err(e) => {
            report.problem(&sig_name, format!("cannot read {}: {e}", sig_path.display()));
            return;
        }
    };
    let fields: BTreeMap<&str, &str> =
        minisig.trusted_comment.split(' ').filter_map(|field| field.split_once('=')).collect();
    if let Err(e) = key.verify(&minisig, &digests.blake2b512) {
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
    if let Some(manifest) = manifest {
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

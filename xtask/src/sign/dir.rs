//! `cargo xtask sign`: signs an output directory in minisign's format. Every artifact listed in
//! manifest.json, and manifest.json itself, gets a `<file>.minisig` whose trusted comment names the
//! image, version, arch, file and sha256; then `SHA256SUMS` (sha256sum format) and its signature;
//! last `index.json`, the list of all of those files (index.rs), and its signature.
//! The directory is checked against its manifest first, so a signature never vouches for a file the
//! build did not produce. Ed25519 is deterministic and nothing time-dependent is signed, so signing
//! the same inputs with the same key gives byte-identical files.

use super::index::Index;
use super::minisign::{digest_bytes, digest_files, FileDigests, SecretKey};
use crate::image::manifest::{Artifact, Manifest};
use crate::spec::names::{signature_of, INDEX_FILE, MANIFEST_FILE, SUMS_FILE};
use crate::util::fs::write_atomic;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Signs `dir` (a build-image output directory) with `key`; see the module doc for what is written.
pub fn sign_dir(dir: &Path, key: &SecretKey) -> Result<()> {
    let (manifest_bytes, manifest) = Manifest::load_with_bytes(dir)?;
    let paths: Vec<PathBuf> = manifest.artifacts.iter().map(|a| dir.join(&a.file)).collect();
    let step = crate::util::progress::step(format!("hashing {} artifacts in {}", paths.len(), dir.display()));
    let digests = digest_files(&paths);
    step.done();

    let mut problems = Vec::new();
    let mut signed: Vec<(String, FileDigests)> = Vec::new();
    for ((artifact, path), digest) in manifest.artifacts.iter().zip(&paths).zip(digests) {
        match digest {
            Err(e) => problems.push(format!("{:#}", e)),
            Ok(d) if d.size != artifact.size => {
                problems.push(format!("{}: {} bytes, but manifest.json says {}", path.display(), d.size, artifact.size))
            }
            Ok(d) if d.sha256_hex() != artifact.sha256 => problems.push(format!(
                "{}: sha256 {}, but manifest.json says {}",
                path.display(),
                d.sha256_hex(),
                artifact.sha256
            )),
            Ok(d) => signed.push((artifact.file.clone(), d)),
        }
    }
    if !problems.is_empty() {
        bail!("refusing to sign {}: it does not match its manifest.json:\n  {}", dir.display(), problems.join("\n  "));
    }
    signed.push((MANIFEST_FILE.to_string(), digest_bytes(&manifest_bytes)));
    signed.sort_by(|a, b| a.0.cmp(&b.0));

    // Per-file signatures first, then SHA256SUMS, the index last: an interrupted run leaves a
    // directory that fails verification rather than one that passes with stale signatures.
    let mut released = Vec::new();
    for (file, digest) in &signed {
        released.push(entry(file, digest));
        released.push(write_signature(dir, file, digest, &manifest, key)?);
    }
    let sums: String = signed.iter().map(|(file, d)| format!("{}  {file}\n", d.sha256_hex())).collect();
    write_atomic(&dir.join(SUMS_FILE), sums.as_bytes())?;
    let sums_digest = digest_bytes(sums.as_bytes());
    released.push(entry(SUMS_FILE, &sums_digest));
    released.push(write_signature(dir, SUMS_FILE, &sums_digest, &manifest, key)?);
    let index = Index::new(&manifest, released).to_json()?;
    write_atomic(&dir.join(INDEX_FILE), index.as_bytes())?;
    write_signature(dir, INDEX_FILE, &digest_bytes(index.as_bytes()), &manifest, key)?;

    crate::util::progress::note(format!(
        "signed {} files in {} with key id {} ({SUMS_FILE}, {INDEX_FILE} and their signatures written)",
        signed.len(),
        dir.display(),
        key.key_id()
    ));
    Ok(())
}

fn entry(file: &str, digest: &FileDigests) -> Artifact {
    Artifact { file: file.to_string(), size: digest.size, sha256: digest.sha256_hex() }
}

/// Writes `<file>.minisig` and returns its index entry.
fn write_signature(
    dir: &Path,
    file: &str,
    digest: &FileDigests,
    manifest: &Manifest,
    key: &SecretKey,
) -> Result<Artifact> {
    let name = signature_of(file);
    let minisig = key
        .sign(&digest.blake2b512, &manifest.trusted_comment(file, &digest.sha256_hex()))
        .with_context(|| format!("signing {}", dir.join(file).display()))?;
    let text = minisig.to_file_text();
    write_atomic(&dir.join(&name), text.as_bytes())?;
    Ok(entry(&name, &digest_bytes(text.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_is_deterministic_and_refuses_a_mismatching_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.raw"), b"aaaa").unwrap();
        let sha = crate::util::digest::hex(&digest_bytes(b"aaaa").sha256);
        let manifest = format!(
            r#"{{"image":"node","version":"0.1.0","arch":"arm64","board":"b","source_date_epoch":0,"lock_sha256":"",
                "kernel":"k","cmdline":"","artifacts":[{{"file":"a.raw","size":4,"sha256":"{sha}"}}]}}"#
        );
        std::fs::write(d.join(MANIFEST_FILE), manifest).unwrap();
        let key = SecretKey::generate().unwrap();
        sign_dir(d, &key).unwrap();
        let first = std::fs::read(d.join("SHA256SUMS.minisig")).unwrap();
        sign_dir(d, &key).unwrap();
        assert_eq!(std::fs::read(d.join("SHA256SUMS.minisig")).unwrap(), first);
        let sums = std::fs::read_to_string(d.join(SUMS_FILE)).unwrap();
        assert!(sums.starts_with(&format!("{sha}  a.raw\n")), "{sums}");

        std::fs::write(d.join("a.raw"), b"aaab").unwrap();
        let err = format!("{:#}", sign_dir(d, &key).unwrap_err());
        assert!(err.contains("a.raw") && err.contains("refusing to sign"), "{err}");
    }
}

//! `cargo xtask sign`: signs an output directory in minisign's format. Every artifact listed in
//! manifest.json, and manifest.json itself, gets a `<file>.minisig` whose trusted comment names the
//! image, version, arch, file and sha256; then `SHA256SUMS` (sha256sum format) and its signature.
//! The directory is checked against its manifest first, so a signature never vouches for a file the
//! build did not produce. Ed25519 is deterministic and nothing time-dependent is signed, so signing
//! the same inputs with the same key gives byte-identical files.

use crate::keys::{digest_bytes, digest_files, FileDigests, SecretKey};
use crate::spec::Arch;
use crate::Global;
use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SUMS_FILE: &str = "SHA256SUMS";
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// The parts of build-image's manifest.json that signing relies on; other fields are allowed, so the
/// manifest can grow without breaking signing.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    pub image: String,
    pub version: String,
    pub arch: String,
    pub artifacts: Vec<ManifestArtifact>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ManifestArtifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// A name that is safe to join to the directory and to write into SHA256SUMS: one plain path
/// component, no whitespace or control characters, and not one of the files signing writes.
pub fn check_file_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\'])
            && !name.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{name:?} is not a plain file name (no directories, spaces or control characters)"
    );
    ensure!(name != SUMS_FILE && !name.ends_with(SIGNATURE_SUFFIX), "{name:?} is a name signing itself writes");
    Ok(())
}

/// A value that can stand in a `key=value` trusted comment and still be read back.
fn check_comment_value(field: &str, value: &str) -> Result<()> {
    ensure!(
        !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic()),
        "field `{field}` {value:?} must be non-empty printable ASCII without spaces"
    );
    Ok(())
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Parses and checks manifest.json's text; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).with_context(|| format!("{}: not a valid manifest", path.display()))?;
        let in_manifest = |e: anyhow::Error| e.context(format!("{}: invalid manifest", path.display()));
        check_comment_value("image", &manifest.image).map_err(in_manifest)?;
        check_comment_value("version", &manifest.version).map_err(in_manifest)?;
        check_comment_value("arch", &manifest.arch).map_err(in_manifest)?;
        ensure!(!manifest.artifacts.is_empty(), "{}: lists no artifacts", path.display());
        let mut seen = BTreeSet::new();
        for artifact in &manifest.artifacts {
            check_file_name(&artifact.file)
                .and_then(|()| {
                    ensure!(artifact.file != MANIFEST_FILE, "the manifest cannot list itself");
                    ensure!(seen.insert(artifact.file.as_str()), "listed twice");
                    ensure!(
                        is_sha256_hex(&artifact.sha256),
                        "sha256 {:?} is not 64 lowercase hex digits",
                        artifact.sha256
                    );
                    Ok(())
                })
                .with_context(|| format!("{}: artifact {:?}", path.display(), artifact.file))?;
        }
        Ok(manifest)
    }

    /// Reads `dir/manifest.json`; returns its bytes (which get signed as they are) and its contents.
    pub fn load(dir: &Path) -> Result<(Vec<u8>, Self)> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest = Self::parse(&bytes, &path)?;
        Ok((bytes, manifest))
    }

    /// The trusted comment signed with `file`, e.g.
    /// `image=node version=0.1.0 arch=arm64 file=node-arm64.raw sha256=<hex>`.
    pub fn trusted_comment(&self, file: &str, sha256_hex: &str) -> String {
        format!("image={} version={} arch={} file={file} sha256={sha256_hex}", self.image, self.version, self.arch)
    }
}

/// Signs `dir` (a build-image output directory) with `key`; see the module doc for what is written.
pub fn sign_dir(dir: &Path, key: &SecretKey) -> Result<()> {
    let (manifest_bytes, manifest) = Manifest::load(dir)?;
    let paths: Vec<PathBuf> = manifest.artifacts.iter().map(|a| dir.join(&a.file)).collect();
    let step = crate::progress::step(format!("hashing {} artifacts in {}", paths.len(), dir.display()));
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

    // Per-file signatures first and SHA256SUMS last: an interrupted run leaves a directory that
    // fails verification rather than one that passes with stale signatures.
    for (file, digest) in &signed {
        write_signature(dir, file, digest, &manifest, key)?;
    }
    let sums: String = signed.iter().map(|(file, d)| format!("{}  {file}\n", d.sha256_hex())).collect();
    write_atomic(&dir.join(SUMS_FILE), sums.as_bytes())?;
    write_signature(dir, SUMS_FILE, &digest_bytes(sums.as_bytes()), &manifest, key)?;

    crate::progress::note(format!(
        "signed {} files in {} with key id {} ({SUMS_FILE} and {SUMS_FILE}{SIGNATURE_SUFFIX} written)",
        signed.len(),
        dir.display(),
        key.key_id()
    ));
    Ok(())
}

/// Removes what signing wrote into `dir` (SHA256SUMS, its signature, every `*.minisig`, and temp files
/// of an interrupted signing run), SHA256SUMS.minisig first: build-image calls this before publishing
/// new artifacts, so an old signature never sits next to a file it does not vouch for.
pub fn remove_signatures(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let signing_output =
            name.starts_with(SUMS_FILE) || name.ends_with(SIGNATURE_SUFFIX) || name.starts_with(".xtask-sign-");
        if signing_output && !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            stale.push(name);
        }
    }
    let sums_signature = format!("{SUMS_FILE}{SIGNATURE_SUFFIX}");
    stale.sort_by_key(|name| (name != &sums_signature, name != SUMS_FILE, name.clone()));
    for name in stale {
        let path = dir.join(&name);
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale signature file {}", path.display()))?;
    }
    Ok(())
}

fn write_signature(dir: &Path, file: &str, digest: &FileDigests, manifest: &Manifest, key: &SecretKey) -> Result<()> {
    let path = dir.join(format!("{file}{SIGNATURE_SUFFIX}"));
    let minisig = key
        .sign(&digest.blake2b512, &manifest.trusted_comment(file, &digest.sha256_hex()))
        .with_context(|| format!("cannot sign {}", dir.join(file).display()))?;
    write_atomic(&path, minisig.to_file_text().as_bytes())
}

/// Writes through a temp file in the same directory and renames it over `path`, so a reader sees
/// the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".xtask-sign-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    temp.write_all(contents)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", temp.path().display()))?;
    temp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// Sign out/<board>/ of the default board for this arch
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Sign out/<board>/ of this board (a name in boards/ or a path to its .toml)
    #[arg(long)]
    pub board: Option<String>,
    /// Unencrypted minisign secret key file (mode 0600). Without it, $XTASK_SIGNING_KEY must hold
    /// the key file's contents
    #[arg(long, value_name = "FILE")]
    pub secret_key: Option<PathBuf>,
    /// Directory to sign, instead of the board's out/<board>/
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The directory `--arch`/`--board` point at, unless one was given outright.
pub fn target_dir(global: &Global, dir: Option<&Path>, board: Option<&str>, arch: Option<Arch>) -> Result<PathBuf> {
    if let Some(dir) = dir {
        ensure!(board.is_none() && arch.is_none(), "give either DIR or --arch/--board, not both");
        return Ok(dir.to_path_buf());
    }
    ensure!(board.is_some() || arch.is_some(), "say which directory: DIR, or --arch/--board for out/<board>/");
    let board = crate::spec::select_board(&global.boards_dir(), board, arch)?;
    Ok(global.board_out_dir(&board.name))
}

/// `cargo xtask sign`.
pub fn run(global: &Global, args: &SignArgs) -> Result<()> {
    let dir = target_dir(global, args.dir.as_deref(), args.board.as_deref(), args.arch)?;
    let key = SecretKey::load(args.secret_key.as_deref())?;
    sign_dir(&dir, &key)?;
    if global.json {
        let report = serde_json::json!({
            "dir": dir,
            "key_id": key.key_id().to_string(),
            "sums": dir.join(SUMS_FILE),
        });
        println!("{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_signatures_leaves_only_the_build_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["SHA256SUMS", "SHA256SUMS.minisig", "a.raw.minisig", ".xtask-sign-x1", "a.raw", "manifest.json"] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        remove_signatures(d).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["a.raw", "manifest.json"]);
        remove_signatures(&d.join("missing")).unwrap();
    }

    #[test]
    fn file_names_must_be_plain() {
        for bad in ["", "..", "a/b", "../x", "a b", "x\ny", "SHA256SUMS", "a.minisig"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("node-arm64.rootfs.sqsh").unwrap();
    }

    #[test]
    fn signing_is_deterministic_and_refuses_a_mismatching_dir() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a.raw"), b"aaaa").unwrap();
        let sha = crate::digest::hex(&digest_bytes(b"aaaa").sha256);
        let manifest = format!(
            r#"{{"image":"node","version":"0.1.0","arch":"arm64","artifacts":[{{"file":"a.raw","size":4,"sha256":"{sha}"}}]}}"#
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

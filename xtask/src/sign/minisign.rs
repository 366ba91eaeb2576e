//! Keys and signatures in minisign's formats, so that anyone can check a release with the stock
//! `minisign -Vm FILE -p nodeimg.pub`, and keys made by `minisign -G -W` work here.
//!
//! Formats (all binary blobs are standard base64 with padding, one per line):
//! - public key: `untrusted comment: ...` line, then base64("Ed" || key_id[8] || ed25519 pk[32]).
//! - secret key: `untrusted comment: ...` line, then base64("Ed" || kdf "\0\0" || chk "B2" ||
//!   kdf_salt[32] || opslimit u64le || memlimit u64le || key_id[8] || seed[32] || pk[32] || chk[32]),
//!   chk = BLAKE2b-256("Ed" || key_id || seed || pk). Only the unencrypted variant is supported.
//! - signature (`FILE.minisig`): untrusted comment line; base64("ED" || key_id || Ed25519 over
//!   BLAKE2b-512(FILE)); `trusted comment: ...` line; base64(Ed25519 over signature || trusted comment).
//!
//! The secret key never leaves [`SecretKey`]: no Debug output, no error message quoting it, and it is
//! written only to its own 0600 file by [`write_key_pair`].

use crate::util::digest::{hex, random_bytes};
use crate::util::fs::{read_secret, write_with_mode};
use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use blake2::{Blake2b256, Blake2b512, Digest as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::Digest as _;
use sha2::Sha256;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File names `keygen` writes.
pub const PUBLIC_KEY_FILE: &str = "nodeimg.pub";
pub const SECRET_KEY_FILE: &str = "nodeimg.key";
/// Environment variable that may hold the secret key file's contents (for CI secrets).
pub const SIGNING_KEY_ENV: &str = "XTASK_SIGNING_KEY";

const UNTRUSTED_PREFIX: &str = "untrusted comment: ";
const TRUSTED_PREFIX: &str = "trusted comment: ";
const SIG_ALG: &[u8; 2] = b"Ed";
const SIG_ALG_PREHASHED: &[u8; 2] = b"ED";
const KDF_NONE: &[u8; 2] = b"\0\0";
const KDF_SCRYPT: &[u8; 2] = b"Sc";
const CHK_ALG: &[u8; 2] = b"B2";
const PUBLIC_KEY_LEN: usize = 2 + 8 + 32;
const SECRET_KEY_LEN: usize = 2 + 2 + 2 + 32 + 8 + 8 + 8 + 64 + 32;
const SIGNATURE_LEN: usize = 2 + 8 + 64;
/// minisign's own limit on a trusted comment line.
const TRUSTED_COMMENT_MAX: usize = 8192 - TRUSTED_PREFIX.len() - 2;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The 8 random bytes minisign puts in keys and signatures to tell key pairs apart.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    /// minisign prints the id as a little-endian u64 in uppercase hex, without zero padding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}", u64::from_le_bytes(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Splits a minisign key file into its untrusted comment and its base64 line. A bare base64 line
/// (as `minisign -P` takes it) is accepted too.
fn comment_and_blob<'a>(text: &'a str, origin: &str, what: &str) -> Result<(Option<&'a str>, &'a str)> {
    let mut lines = text.lines().map(str::trim_end).filter(|l| !l.is_empty());
    let first = lines.next().with_context(|| format!("{origin}: empty file, expected a minisign {what}"))?;
    let (comment, blob) = match first.strip_prefix(UNTRUSTED_PREFIX.trim_end()) {
        Some(comment) => {
            let blob = lines.next().with_context(|| {
                format!("{origin}: no key line after the untrusted comment (not a minisign {what})")
            })?;
            (Some(comment.trim_start()), blob)
        }
        None => (None, first),
    };
    ensure!(lines.next().is_none(), "{origin}: unexpected lines after the key (not a minisign {what})");
    Ok((comment, blob.trim()))
}

/// A minisign public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub key_id: KeyId,
    verifying_key: VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id)
    }
}

impl PublicKey {
    /// Parses a public key file's text; `origin` (a path) names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let (_, blob) = comment_and_blob(text, origin, "public key")?;
        let bytes = b64()
            .decode(blob)
            .with_context(|| format!("{origin}: the key line is not valid base64 (not a minisign public key)"))?;
        ensure!(
            bytes.len() == PUBLIC_KEY_LEN,
            "{origin}: the key is {} bytes, a minisign public key is {PUBLIC_KEY_LEN}",
            bytes.len()
        );
        ensure!(
            &bytes[..2] == SIG_ALG,
            "{origin}: unsupported signature algorithm {:?} (expected \"Ed\")",
            hex(&bytes[..2])
        );
        let key_id = KeyId(bytes[2..10].try_into().expect("8 bytes"));
        let pk: [u8; 32] = bytes[10..42].try_into().expect("32 bytes");
        let verifying_key = VerifyingKey::from_bytes(&pk)
            .map_err(|_| anyhow::anyhow!("{origin}: the key bytes are not a valid Ed25519 public key"))?;
        Ok(PublicKey { key_id, verifying_key })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading public key {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The file text, in the layout `minisign -G` writes.
    pub fn to_file_text(&self) -> String {
        let mut bytes = Vec::with_capacity(PUBLIC_KEY_LEN);
        bytes.extend_from_slice(SIG_ALG);
        bytes.extend_from_slice(&self.key_id.0);
        bytes.extend_from_slice(self.verifying_key.as_bytes());
        format!("{UNTRUSTED_PREFIX}minisign public key {}\n{}\n", self.key_id, b64().encode(bytes))
    }

    /// Checks a signature made over a file whose BLAKE2b-512 is `blake2b512`. The trusted comment is
    /// checked before the file, so when only the file signature fails, the comment can be trusted to
    /// say which file the signature was made for.
    pub fn verify(&self, minisig: &Minisig, blake2b512: &[u8; 64]) -> Result<(), SignatureError> {
        if minisig.key_id != self.key_id {
            return Err(SignatureError::WrongKey { signed_by: minisig.key_id, expected: self.key_id });
        }
        if !minisig.prehashed {
            return Err(SignatureError::Legacy);
        }
        self.verifying_key
            .verify_strict(&minisig.global_message(), &minisig.global_signature)
            .map_err(|_| SignatureError::TrustedCommentEdited)?;
        self.verifying_key.verify_strict(blake2b512, &minisig.signature).map_err(|_| SignatureError::BadSignature)
    }
}

/// Why a signature does not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    WrongKey { signed_by: KeyId, expected: KeyId },
    Legacy,
    TrustedCommentEdited,
    BadSignature,
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::WrongKey { signed_by, expected } => write!(
                f,
                "signed by key id {signed_by}, but the public key has key id {expected}: \
                 wrong public key, or a signature from another key pair"
            ),
            SignatureError::Legacy => f.write_str(
                "legacy non-prehashed (\"Ed\") signature; only prehashed (\"ED\") signatures are supported: re-sign it",
            ),
            SignatureError::TrustedCommentEdited => {
                f.write_str("bad trusted comment signature: the trusted comment was edited")
            }
            SignatureError::BadSignature => f.write_str(
                "bad signature: it does not match the file's contents \
                 (the file was modified or truncated, or the signature belongs to another file)",
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

/// An unencrypted minisign secret key. Deliberately neither Clone, Debug nor Display.
pub struct SecretKey {
    key_id: KeyId,
    // Zeroised on drop by ed25519-dalek.
    signing_key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, redacted)", self.key_id)
    }
}

/// BLAKE2b-256 over the algorithm, key id and 64-byte secret key, as minisign checks a decrypted key.
fn secret_key_checksum(key_id: &KeyId, keypair_bytes: &[u8; 64]) -> [u8; 32] {
    let mut hasher = Blake2b256::new();
    hasher.update(SIG_ALG);
    hasher.update(key_id.0);
    hasher.update(keypair_bytes);
    hasher.finalize().into()
}

impl SecretKey {
    /// A fresh key pair from the kernel's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random_bytes(seed.as_mut())?;
        let mut key_id = [0u8; 8];
        random_bytes(&mut key_id)?;
        Ok(SecretKey { key_id: KeyId(key_id), signing_key: SigningKey::from_bytes(&seed) })
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey { key_id: self.key_id, verifying_key: self.signing_key.verifying_key() }
    }

    /// Parses a secret key file's text; `origin` (a path or the variable's name) names it in errors,
    /// which never quote the text.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let (_, blob) = comment_and_blob(text, origin, "secret key")?;
        let bytes =
            Zeroizing::new(b64().decode(blob).map_err(|_| {
                anyhow::anyhow!("{origin}: the key line is not valid base64 (not a minisign secret key)")
            })?);
        ensure!(
            bytes.len() == SECRET_KEY_LEN,
            "{origin}: the key is {} bytes, a minisign secret key is {SECRET_KEY_LEN}",
            bytes.len()
        );
        let (sig_alg, rest) = bytes.split_at(2);
        let (kdf_alg, rest) = rest.split_at(2);
        let (chk_alg, rest) = rest.split_at(2);
        // kdf_salt[32], opslimit[8], memlimit[8]: only meaningful for encrypted keys.
        let rest = &rest[48..];
        let (key_id, rest) = rest.split_at(8);
        let (keypair, stored_checksum) = rest.split_at(64);
        ensure!(
            sig_alg == SIG_ALG,
            "{origin}: unsupported signature algorithm (expected \"Ed\"; not a minisign secret key?)"
        );
        if kdf_alg == KDF_SCRYPT {
            bail!(
                "{origin}: the secret key is encrypted with a password; xtask signs unattended and needs an \
                 unencrypted key: make one with `cargo xtask keygen --out DIR` or `minisign -G -W`"
            );
        }
        ensure!(kdf_alg == KDF_NONE, "{origin}: unsupported key derivation function in the secret key");
        ensure!(chk_alg == CHK_ALG, "{origin}: unsupported checksum algorithm in the secret key (expected \"B2\")");
        let key_id = KeyId(key_id.try_into().expect("8 bytes"));
        let keypair: Zeroizing<[u8; 64]> = Zeroizing::new(keypair.try_into().expect("64 bytes"));
        // minisign 0.11 leaves the checksum zero in keys from `-G -W`; newer versions fill it in.
        if stored_checksum.iter().any(|&b| b != 0) {
            ensure!(
                stored_checksum == secret_key_checksum(&key_id, &keypair),
                "{origin}: the secret key's checksum does not match: the key is corrupted"
            );
        }
        let signing_key = SigningKey::from_keypair_bytes(&keypair).map_err(|_| {
            anyhow::anyhow!("{origin}: the secret key's public half does not match its seed: the key is corrupted")
        })?;
        Ok(SecretKey { key_id, signing_key })
    }

    /// Loads a key file, refusing one that group or others may read.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_secret(path, "secret key")?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The key from `--secret-key FILE` if given, else from `$XTASK_SIGNING_KEY` (the file's contents).
    pub fn load(secret_key_file: Option<&Path>) -> Result<Self> {
        if let Some(path) = secret_key_file {
            return Self::from_file(path);
        }
        match std::env::var_os(SIGNING_KEY_ENV) {
            Some(value) if !value.is_empty() => {
                let text = Zeroizing::new(
                    value
                        .into_string()
                        .map_err(|_| anyhow::anyhow!("${SIGNING_KEY_ENV} is not UTF-8 (not a minisign secret key)"))?,
                );
                Self::parse(&text, &format!("${SIGNING_KEY_ENV}"))
            }
            _ => bail!(
                "no signing key: pass --secret-key FILE, or set {SIGNING_KEY_ENV} to the contents of the key file \
                 (make a key pair with `cargo xtask keygen --out DIR`)"
            ),
        }
    }

    /// The signing key a build is configured with: `--secret-key FILE` if given, else
    /// `$XTASK_SIGNING_KEY` when it is set and non-empty, else none (the build is not signed).
    pub fn load_configured(secret_key_file: Option<&Path>) -> Result<Option<Self>> {
        let from_env = std::env::var_os(SIGNING_KEY_ENV).is_some_and(|value| !value.is_empty());
        if secret_key_file.is_none() && !from_env {
            return Ok(None);
        }
        Self::load(secret_key_file).map(Some)
    }

    /// The unencrypted secret key file, in the layout `minisign -G -W` writes (with the checksum filled).
    fn to_file_text(&self) -> Zeroizing<String> {
        let keypair = Zeroizing::new(self.signing_key.to_keypair_bytes());
        let mut bytes = Zeroizing::new(Vec::with_capacity(SECRET_KEY_LEN));
        bytes.extend_from_slice(SIG_ALG);
        bytes.extend_from_slice(KDF_NONE);
        bytes.extend_from_slice(CHK_ALG);
        bytes.extend_from_slice(&[0u8; 32 + 8 + 8]);
        bytes.extend_from_slice(&self.key_id.0);
        bytes.extend_from_slice(keypair.as_ref());
        bytes.extend_from_slice(&secret_key_checksum(&self.key_id, &keypair));
        let encoded = Zeroizing::new(b64().encode(bytes.as_slice()));
        Zeroizing::new(format!("{UNTRUSTED_PREFIX}minisign unencrypted secret key {}\n{}\n", self.key_id, *encoded))
    }

    /// Signs a file given its BLAKE2b-512 digest, with minisign's prehashed algorithm.
    pub fn sign(&self, blake2b512: &[u8; 64], trusted_comment: &str) -> Result<Minisig> {
        ensure!(
            !trusted_comment.contains(['\n', '\r']) && trusted_comment.len() <= TRUSTED_COMMENT_MAX,
            "trusted comment must be one line of at most {TRUSTED_COMMENT_MAX} bytes: {trusted_comment:?}"
        );
        let signature = self.signing_key.sign(blake2b512);
        let mut minisig = Minisig {
            untrusted_comment: format!("signature from nodeimg key {}", self.key_id),
            prehashed: true,
            key_id: self.key_id,
            signature,
            trusted_comment: trusted_comment.to_string(),
            global_signature: signature,
        };
        minisig.global_signature = self.signing_key.sign(&minisig.global_message());
        Ok(minisig)
    }
}

/// One `.minisig` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Minisig {
    pub untrusted_comment: String,
    /// "ED" (BLAKE2b-512 of the file is signed) rather than legacy "Ed" (the whole file is signed).
    pub prehashed: bool,
    pub key_id: KeyId,
    pub signature: Signature,
    pub trusted_comment: String,
    pub global_signature: Signature,
}

impl Minisig {
    /// What the global signature covers: the file signature, then the trusted comment.
    fn global_message(&self) -> Vec<u8> {
        let mut message = self.signature.to_bytes().to_vec();
        message.extend_from_slice(self.trusted_comment.as_bytes());
        message
    }

    /// Parses a `.minisig` file's text; errors say what is malformed (the caller names the file).
    pub fn parse(text: &str) -> Result<Self> {
        let lines: Vec<&str> = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
        ensure!(lines.len() == 4, "malformed signature file: {} lines, a minisign signature has 4", lines.len());
        let untrusted_comment = lines[0]
            .strip_prefix(UNTRUSTED_PREFIX)
            .context("malformed signature file: line 1 must start with \"untrusted comment: \"")?;
        let sig_bytes = b64()
            .decode(lines[1].trim())
            .map_err(|_| anyhow::anyhow!("malformed signature file: line 2 is not valid base64"))?;
        ensure!(
            sig_bytes.len() == SIGNATURE_LEN,
            "malformed signature file: line 2 holds {} bytes, a minisign signature holds {SIGNATURE_LEN}",
            sig_bytes.len()
        );
        let prehashed = match &sig_bytes[..2] {
            alg if alg == SIG_ALG_PREHASHED => true,
            alg if alg == SIG_ALG => false,
            _ => bail!("malformed signature file: unsupported signature algorithm"),
        };
        let trusted_comment = lines[2]
            .strip_prefix(TRUSTED_PREFIX)
            .context("malformed signature file: line 3 must start with \"trusted comment: \"")?;
        let global_bytes = b64()
            .decode(lines[3].trim())
            .map_err(|_| anyhow::anyhow!("malformed signature file: line 4 is not valid base64"))?;
        let global_bytes: [u8; 64] = global_bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!("malformed signature file: line 4 holds {} bytes, a signature is 64", global_bytes.len())
        })?;
        Ok(Minisig {
            untrusted_comment: untrusted_comment.to_string(),
            prehashed,
            key_id: KeyId(sig_bytes[2..10].try_into().expect("8 bytes")),
            signature: Signature::from_bytes(&sig_bytes[10..74].try_into().expect("64 bytes")),
            trusted_comment: trusted_comment.to_string(),
            global_signature: Signature::from_bytes(&global_bytes),
        })
    }

    #[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }

    pub fn to_file_text(&self) -> String {
        let alg = if self.prehashed { SIG_ALG_PREHASHED } else { SIG_ALG };
        let mut sig_bytes = Vec::with_capacity(SIGNATURE_LEN);
        sig_bytes.extend_from_slice(alg);
        sig_bytes.extend_from_slice(&self.key_id.0);
        sig_bytes.extend_from_slice(&self.signature.to_bytes());
        format!(
            "{UNTRUSTED_PREFIX}{}\n{}\n{TRUSTED_PREFIX}{}\n{}\n",
            self.untrusted_comment,
            b64().encode(sig_bytes),
            self.trusted_comment,
            b64().encode(self.global_signature.to_bytes())
        )
    }
}

/// What signing and verifying need to know about a file, from one read of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileDigests {
    pub size: u64,
    pub sha256: [u8; 32],
    pub blake2b512: [u8; 64],
}

impl FileDigests {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

pub fn digest_bytes(bytes: &[u8]) -> FileDigests {
    FileDigests {
        size: bytes.len() as u64,
        sha256: Sha256::digest(bytes).into(),
        blake2b512: Blake2b512::digest(bytes).into(),
    }
}

/// Streams a reader through SHA-256 and BLAKE2b-512 at once (images are hundreds of MB); `what`
/// names it in errors.
pub fn digest_reader(mut reader: impl Read, what: &str) -> Result<FileDigests> {
    let mut sha256 = Sha256::new();
    let mut blake2b = Blake2b512::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {what}")),
        };
        sha256.update(&buf[..n]);
        blake2b.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigests { size, sha256: sha256.finalize().into(), blake2b512: blake2b.finalize().into() })
}

pub fn digest_file(path: &Path) -> Result<FileDigests> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    digest_reader(file, &path.display().to_string())
}

/// [`digest_file`] for many files, on all cores (hashing is the whole cost of sign and verify).
/// Results are in the order of `paths`.
pub fn digest_files(paths: &[PathBuf]) -> Vec<Result<FileDigests>> {
    digest_each(paths.len(), |i| digest_file(&paths[i]))
}

/// Runs `digest(0..count)` on all cores (up to 8 threads); results are in index order.
pub fn digest_each(count: usize, digest: impl Fn(usize) -> Result<FileDigests> + Sync) -> Vec<Result<FileDigests>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<FileDigests>>>> = Mutex::new((0..count).map(|_| None).collect());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(count.max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let result = digest(i);
                results.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[i] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .into_iter()
        .enumerate()
        .map(|(i, result)| {
            result.unwrap_or_else(|| Err(anyhow::anyhow!("hashing file {i}: the thread did not finish")))
        })
        .collect()
}

/// Writes DIR/nodeimg.key (created 0600) and DIR/nodeimg.pub; returns the public key path and key id.
pub fn write_key_pair(dir: &Path, force: bool) -> Result<(PathBuf, KeyId)> {
    let secret_path = dir.join(SECRET_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    if !force {
        for path in [&secret_path, &public_path] {
            if path.symlink_metadata().is_ok() {
                bail!("{} already exists; not replacing a key without --force", path.display());
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = SecretKey::generate()?;
    write_with_mode(&secret_path, key.to_file_text().as_bytes(), 0o600, force)?;
    write_with_mode(&public_path, key.public_key().to_file_text().as_bytes(), 0o644, force)?;
    Ok((public_path, key.key_id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    fn minisign(args: &[&str], dir: &Path) -> std::process::Output {
        let output = Command::new("minisign")
            .args(args)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("Debian's minisign must be installed (cargo xtask host-tools installs it)");
        assert!(output.status.success(), "minisign {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    #[test]
    fn checksum_is_blake2b_256_with_its_own_parameter_block() {
        // Python: hashlib.blake2b(b"Ed" + bytes(8) + bytes(64), digest_size=32).hexdigest()
        assert_eq!(
            hex(&secret_key_checksum(&KeyId([0; 8]), &[0; 64])),
            "dea553d47d8c39aa1722ad179bcc8529ab77a5e27ec3fb4d8974a14102aebac8"
        );
    }

    #[test]
    fn key_files_round_trip() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::parse(&key.to_file_text(), "test").unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::parse(&key.public_key().to_file_text(), "test").unwrap();
        assert_eq!(public, key.public_key());
        let minisig = key.sign(&[7; 64], "file=x").unwrap();
        assert_eq!(Minisig::parse(&minisig.to_file_text()).unwrap(), minisig);
        public.verify(&minisig, &[7; 64]).unwrap();
        let err = public.verify(&minisig, &[8; 64]).unwrap_err().to_string();
        assert!(err.contains("bad signature"), "{err}");
    }

    #[test]
    fn errors_never_quote_the_secret_key() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_file_text();
        let blob = text.lines().nth(1).unwrap();
        let mut damaged = text.replace(blob, &format!("{}A", &blob[..blob.len() - 2]));
        damaged.push('!');
        for bad in [damaged, text.replace(blob, &blob[4..]), format!("{}x\n", &*text)] {
            let err = format!("{:?}", SecretKey::parse(&bad, "k").unwrap_err());
            assert!(!err.contains(&blob[20..40]), "{err}");
        }
        assert!(!format!("{key:?}").contains(&blob[20..40]));
    }

    #[test]
    fn our_signature_is_accepted_by_minisign_verify_crate() {
        let key = SecretKey::generate().unwrap();
        let data = b"hello, node image".repeat(1000);
        let minisig = key.sign(&digest_bytes(&data).blake2b512, "image=node file=x").unwrap();
        let public = minisign_verify::PublicKey::decode(&key.public_key().to_file_text()).unwrap();
        let signature = minisign_verify::Signature::decode(&minisig.to_file_text()).unwrap();
        public.verify(&data, &signature, false).unwrap();
    }

    #[test]
    fn interoperates_with_the_minisign_cli_both_ways() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        minisign(&["-G", "-W", "-p", "m.pub", "-s", "m.key"], d);
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(d.join("data.bin"), &data).unwrap();

        // minisign signs, we verify.
        minisign(&["-S", "-s", "m.key", "-m", "data.bin", "-t", "made by minisign"], d);
        let public = PublicKey::load(&d.join("m.pub")).unwrap();
        let minisig = Minisig::load(&d.join("data.bin.minisig")).unwrap();
        assert_eq!(minisig.trusted_comment, "made by minisign");
        let digests = digest_file(&d.join("data.bin")).unwrap();
        public.verify(&minisig, &digests.blake2b512).unwrap();

        // We sign with minisign's key, minisign verifies.
        let secret = SecretKey::from_file(&d.join("m.key")).unwrap();
        assert_eq!(secret.public_key(), public);
        let ours = secret.sign(&digests.blake2b512, "made by xtask").unwrap();
        std::fs::write(d.join("data.bin.minisig"), ours.to_file_text()).unwrap();
        let out = minisign(&["-Vm", "data.bin", "-p", "m.pub"], d);
        assert!(String::from_utf8_lossy(&out.stdout).contains("Trusted comment: made by xtask"));

        // Our key files, minisign signs and verifies with them.
        let (public_path, _) = write_key_pair(&d.join("ours"), false).unwrap();
        minisign(&["-S", "-s", "ours/nodeimg.key", "-m", "data.bin", "-x", "o.minisig"], d);
        minisign(&["-Vm", "data.bin", "-x", "o.minisig", "-p", public_path.to_str().unwrap()], d);
    }

    #[test]
    fn encrypted_keys_are_refused_with_advice() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_file_text();
        let blob = text.lines().nth(1).unwrap();
        let mut bytes = b64().decode(blob).unwrap();
        bytes[2..4].copy_from_slice(KDF_SCRYPT);
        let encrypted = format!("untrusted comment: x\n{}\n", b64().encode(bytes));
        let err = SecretKey::parse(&encrypted, "enc.key").unwrap_err().to_string();
        assert!(err.contains("enc.key") && err.contains("minisign -G -W"), "{err}");
    }

    #[test]
    fn group_readable_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_key_pair(dir.path(), false).unwrap();
        let path = dir.path().join(SECRET_KEY_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = SecretKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("0640") && err.contains("chmod 600") && err.contains(SECRET_KEY_FILE), "{err}");
    }
}

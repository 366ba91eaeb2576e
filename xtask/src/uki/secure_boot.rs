//! Secure Boot signing of the UKI: one Authenticode signature (SHA-256) over the whole image, made
//! with the db key, so firmware that has our db enrolled starts the UKI and refuses any other or any
//! changed one. The UKI holds the kernel, the initramfs, the root and every extension layer, so the
//! signature covers everything the machine runs.
//!
//! The key set is the directory `cargo xtask keygen --secure-boot` writes ([`SecureBootKeys`]): the
//! PK, KEK and db certificates and the owner GUID (public, needed to enrol them) and the db private key,
//! which may instead come from `$XTASK_SECURE_BOOT_DB_KEY` (the file's contents, for CI secrets).
//! The PK and KEK private keys are never read by a build.
//!
//! The signer is Debian's osslsigncode: `-time` sets the signature's signing time outright (to
//! SOURCE_DATE_EPOCH), and RSA PKCS#1 v1.5 has no randomness, so a signed build is byte-identical
//! across builds. (sbsign writes the wall clock into every signature.) The private key reaches it as a
//! 0600 file in a private temporary directory that is removed when signing ends; it is never printed.

use crate::util::cmd::cmd;
use crate::util::digest::hex;
use crate::util::fs::{read_secret, write_with_mode};
use crate::util::host::{req, Requirement};
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File names in a key set directory (keygen writes them, the build reads them).
pub const PK_CERT: &str = "PK.crt";
pub const KEK_CERT: &str = "KEK.crt";
pub const DB_CERT: &str = "db.crt";
pub const DB_KEY: &str = "db.key";
/// The owner GUID written into every signature list entry (and given to the firmware store writer).
pub const OWNER_GUID: &str = "owner.guid";
/// Environment variable that may hold the db key file's contents instead of DIR/db.key.
pub const DB_KEY_ENV: &str = "XTASK_SECURE_BOOT_DB_KEY";
/// Environment variable naming the key set directory when `--secure-boot-keys` is not given.
pub const KEYS_DIR_ENV: &str = "XTASK_SECURE_BOOT_KEYS";

pub fn requirements() -> Vec<Requirement> {
    vec![
        req("osslsigncode", "osslsigncode", "signing the UKI for Secure Boot (Authenticode)"),
        req("openssl", "openssl", "checking the Secure Boot db key against its certificate"),
    ]
}

/// A db signing key: its certificate and its private key. The key text never leaves this type: no
/// Debug output, no error message quoting it.
pub struct DbKey {
    cert: PathBuf,
    key: Zeroizing<String>,
    /// Where the key came from (a path or the variable's name), for messages.
    origin: String,
}

impl fmt::Debug for DbKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbKey({}, key from {}, redacted)", self.cert.display(), self.origin)
    }
}

impl DbKey {
    /// The key `text` (read from `origin`) for certificate `cert`: an unencrypted PEM private key
    /// whose public half is the certificate's.
    pub fn new(cert: &Path, text: Zeroizing<String>, origin: &str) -> Result<DbKey> {
        ensure!(
            !text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{origin}: the db key is encrypted with a passphrase; the build signs unattended and needs an \
             unencrypted key (`cargo xtask keygen --secure-boot` makes one)"
        );
        ensure!(
            text.contains("-----BEGIN PRIVATE KEY-----") || text.contains("-----BEGIN RSA PRIVATE KEY-----"),
            "{origin}: not a PEM private key (expected -----BEGIN PRIVATE KEY-----)"
        );
        let key = DbKey { cert: cert.to_path_buf(), key: text, origin: origin.to_string() };
        let cert_public = cmd("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(cert)
            .read()
            .with_context(|| format!("{}: reading the db certificate", cert.display()))?;
        let key_public = key
            .with_key_file(|file| cmd("openssl").args(["pkey", "-pubout", "-in"]).arg(file).read())
            .map_err(|_| anyhow::anyhow!("{origin}: openssl cannot read the db key"))?;
        ensure!(
            cert_public == key_public,
            "{origin}: the db key is not the key of {} (their public keys differ): give the db.key made with it",
            cert.display()
        );
        Ok(key)
    }

    /// The certificate the firmware's db holds.
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// Signs the PE image at `path` in place (through a temporary file beside it), signing time `epoch`.
    pub fn sign_in_place(&self, path: &Path, epoch: i64) -> Result<()> {
        ensure!(epoch >= 0, "SOURCE_DATE_EPOCH {epoch} is before 1970: cannot be a signing time");
        let signed = path.with_extension("signing");
        let _ = std::fs::remove_file(&signed); // osslsigncode refuses to overwrite
        let run = self.with_key_file(|key| {
            cmd("osslsigncode")
                .args(["sign", "-h", "sha256", "-key"])
                .arg(key)
                .arg("-certs")
                .arg(&self.cert)
                .args(["-time", &epoch.to_string(), "-in"])
                .arg(path)
                .arg("-out")
                .arg(&signed)
                .run()
        });
        if let Err(e) = run {
            let _ = std::fs::remove_file(&signed);
            return Err(e.context(format!("signing {} with the db key from {}", path.display(), self.origin)));
        }
        std::fs::rename(&signed, path).with_context(|| format!("replacing {} with its signed copy", path.display()))
    }

    /// Runs `f` with the key in a 0600 file inside a private (0700) temporary directory, removed after.
    fn with_key_file<T>(&self, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let dir = tempfile::Builder::new()
            .prefix("xtask-db-key-")
            .tempdir()
            .context("creating a private directory for the db key")?;
        let file = dir.path().join(DB_KEY);
        write_with_mode(&file, self.key.as_bytes(), 0o600, false)?;
        f(&file)
    }
}

/// A key set directory as keygen writes it, with the db key loaded.
#[derive(Debug)]
pub struct SecureBootKeys {
    pub dir: PathBuf,
    pub pk_cert: PathBuf,
    pub kek_cert: PathBuf,
    pub owner_guid: String,
    pub db: DbKey,
}

impl SecureBootKeys {
    /// The key set in `dir`; the db key from `$XTASK_SECURE_BOOT_DB_KEY` when it is set and non-empty,
    /// else from DIR/db.key (refused if group or others may read it).
    pub fn load(dir: &Path) -> Result<SecureBootKeys> {
        Self::load_with(dir, std::env::var_os(DB_KEY_ENV).filter(|v| !v.is_empty()))
    }

    /// The key set in `dir` with its own DIR/db.key, whatever the environment says (a key set made
    /// for one run, as bench makes).
    pub fn load_own(dir: &Path) -> Result<SecureBootKeys> {
        Self::load_with(dir, None)
    }

    fn load_with(dir: &Path, db_key_env: Option<std::ffi::OsString>) -> Result<SecureBootKeys> {
        ensure!(
            dir.is_dir(),
            "{}: no such directory: the Secure Boot key set is the directory `cargo xtask keygen --secure-boot \
             --out DIR` writes",
            dir.display()
        );
        let file = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            ensure!(
                path.is_file(),
                "{}: missing from the Secure Boot key set (make one with `cargo xtask keygen --secure-boot --out DIR`)",
                path.display()
            );
            Ok(path)
        };
        let (pk_cert, kek_cert, db_cert) = (file(PK_CERT)?, file(KEK_CERT)?, file(DB_CERT)?);
        let guid_path = file(OWNER_GUID)?;
        let guid = std::fs::read_to_string(&guid_path).with_context(|| format!("reading {}", guid_path.display()))?;
        let owner_guid = guid.trim().to_ascii_lowercase();
        ensure!(is_guid(&owner_guid), "{}: {:?} is not a GUID", guid_path.display(), guid.trim());
        let db = match db_key_env {
            Some(value) => {
                let text = Zeroizing::new(
                    value.into_string().map_err(|_| anyhow::anyhow!("${DB_KEY_ENV} is not UTF-8 (not a PEM key)"))?,
                );
                DbKey::new(&db_cert, text, &format!("${DB_KEY_ENV}"))?
            }
            None => {
                let path = dir.join(DB_KEY);
                if !path.exists() {
                    bail!(
                        "no Secure Boot db key: {} does not exist and ${DB_KEY_ENV} is not set (set it to the \
                         contents of the db.key that `cargo xtask keygen --secure-boot` made)",
                        path.display()
                    );
                }
                DbKey::new(&db_cert, read_secret(&path, "Secure Boot db key")?, &path.display().to_string())?
            }
        };
        Ok(SecureBootKeys { dir: dir.to_path_buf(), pk_cert, kek_cert, owner_guid, db })
    }

    /// The key set a build is configured with: `dir` (from `--secure-boot-keys` or
    /// `$XTASK_SECURE_BOOT_KEYS`), else none (the UKI is not signed). A db key in the environment
    /// without a key set is an error, so a CI job meant to sign never ships an unsigned image.
    pub fn load_configured(dir: Option<&Path>) -> Result<Option<SecureBootKeys>> {
        match dir {
            Some(dir) => Self::load(dir).map(Some),
            None if std::env::var_os(DB_KEY_ENV).is_some_and(|v| !v.is_empty()) => bail!(
                "${DB_KEY_ENV} is set, but no key set names the certificates to sign and enrol with: pass \
                 --secure-boot-keys DIR (or set ${KEYS_DIR_ENV})"
            ),
            None => Ok(None),
        }
    }

    /// SHA-256 of the db certificate's DER: its fingerprint, as `openssl x509 -fingerprint -sha256` shows it.
    pub fn db_cert_sha256(&self) -> Result<String> {
        let der = cmd("openssl").args(["x509", "-outform", "DER", "-in"]).arg(self.db.cert()).output()?;
        Ok(hex(&Sha256::digest(der)))
    }
}

/// Whether `text` is a GUID in its usual form: 8-4-4-4-12 lowercase hex digits.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_in_their_usual_form_only() {
        assert!(is_guid("8be4df61-93ca-11d2-aa0d-00e098032b8c"));
        for bad in
            ["", "8be4df61-93ca-11d2-aa0d", "8be4df6193ca11d2aa0d00e098032b8c", "8be4df61-93ca-11d2-aa0d-00e098032b8g"]
        {
            assert!(!is_guid(bad), "{bad}");
        }
    }

    #[test]
    fn a_key_that_is_no_pem_key_or_encrypted_is_refused_without_quoting_it() {
        let cert = Path::new("/nonexistent/db.crt");
        let err = DbKey::new(cert, Zeroizing::new("s3cret-material".into()), "$X").unwrap_err().to_string();
        assert!(err.contains("$X: not a PEM private key") && !err.contains("s3cret"), "{err}");
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nabc\n".to_string();
        let err = DbKey::new(cert, Zeroizing::new(encrypted), "k").unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
    }
}

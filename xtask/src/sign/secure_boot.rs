//! `keygen --secure-boot`: a Secure Boot key set, the three keys UEFI firmware trusts in a chain:
//! the platform key (PK) signs updates of the KEK, the key exchange key (KEK) signs updates of db, and
//! the db key signs the images the firmware may start (uki/secure_boot.rs signs the UKI with it).
//!
//! Each key is RSA-2048 (the size every firmware takes) with a self-signed X.509 certificate made by
//! openssl: PK and KEK as CAs, db as a code-signing certificate (the codeSigning EKU, which strict
//! Authenticode verifiers demand). efitools turns each certificate into an EFI signature list (`.esl`)
//! and the signed update real firmware enrols in setup mode (`.auth`: PK.auth signed by the PK itself,
//! KEK.auth by the PK, db.auth by the KEK). The updates carry the PK certificate's notBefore as their
//! time, so the same keys always give the same .auth files. One random owner GUID goes into every
//! list, and into `owner.guid` for the variable store writer (disk/vars.rs).
//!
//! Everything is made in a private directory inside DIR and moved into place only when complete;
//! secret keys are 0600, and nothing is replaced without `force`.

use crate::uki::secure_boot::{DB_CERT, DB_KEY, KEK_CERT, OWNER_GUID, PK_CERT};
use crate::util::cmd::cmd;
use crate::util::fs::write_with_mode;
use crate::util::host::{req, Requirement};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

pub fn requirements() -> Vec<Requirement> {
    vec![
        req("openssl", "openssl", "making the Secure Boot keys and certificates"),
        req("cert-to-efi-sig-list", "efitools", "making EFI signature lists"),
        req("sign-efi-sig-list", "efitools", "signing the EFI variable updates (.auth)"),
    ]
}

/// The keys, in the order of the chain, and which extension section of [`X509_CONFIG`] each gets.
const KEYS: [(&str, &str); 3] = [("PK", "ca"), ("KEK", "ca"), ("db", "signer")];
/// Who signs each update: PK.auth by the PK (edk2 checks even the first PK against itself), KEK.auth
/// by the PK, db.auth by the KEK.
const SIGNERS: [(&str, &str); 3] = [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")];
/// Certificates last for 20 years; firmware does not check expiry, but verifiers of the UKI may.
const VALID_DAYS: &str = "7300";

const X509_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, digitalSignature
subjectKeyIdentifier = hash
[signer]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = codeSigning
subjectKeyIdentifier = hash
";

/// What keygen wrote.
#[derive(Debug)]
pub struct KeySet {
    pub dir: PathBuf,
    pub owner_guid: String,
    /// Every file written, secret keys marked.
    pub files: Vec<(PathBuf, bool)>,
}

/// Every file a key set holds, and whether it is secret.
fn file_names() -> Vec<(String, bool)> {
    let mut names = Vec::new();
    for (name, _) in KEYS {
        names.push((format!("{name}.key"), true));
        for ext in ["crt", "esl", "auth"] {
            names.push((format!("{name}.{ext}"), false));
        }
    }
    names.push((OWNER_GUID.to_string(), false));
    names
}

/// Makes a key set in `dir` whose certificates are named `<common_name> PK` and so on.
pub fn generate(dir: &Path, common_name: &str, force: bool) -> Result<KeySet> {
    let names = file_names();
    debug_assert!([PK_CERT, KEK_CERT, DB_CERT, DB_KEY].iter().all(|f| names.iter().any(|(n, _)| n == f)));
    if !force {
        for (name, _) in &names {
            let path = dir.join(name);
            if path.symlink_metadata().is_ok() {
                bail!("{} already exists; not replacing a Secure Boot key set without --force", path.display());
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // tempfile makes the directory 0700: the keys are private from their first byte.
    let work = tempfile::Builder::new()
        .prefix(".xtask-keygen-")
        .tempdir_in(dir)
        .with_context(|| format!("creating a private work directory in {}", dir.display()))?;
    let w = work.path();
    std::fs::write(w.join("x509.cnf"), X509_CONFIG).context("writing the openssl configuration")?;
    let owner_guid = random_guid()?;

    for (name, extensions) in KEYS {
        cmd("openssl")
            .args(["req", "-config", "x509.cnf", "-extensions", extensions, "-new", "-x509"])
            .args(["-newkey", "rsa:2048", "-nodes", "-sha256", "-days", VALID_DAYS])
            .arg("-subj")
            .arg(format!("/CN={common_name} {name}/"))
            .args(["-keyout", &format!("{name}.key"), "-out", &format!("{name}.crt")])
            .dir(w)
            .run()
            .with_context(|| format!("making the {name} key and certificate"))?;
        cmd("cert-to-efi-sig-list")
            .args(["-g", &owner_guid, &format!("{name}.crt"), &format!("{name}.esl")])
            .dir(w)
            .run()
            .with_context(|| format!("making the {name} signature list"))?;
    }
    let time = not_before(&w.join("PK.crt"))?;
    for (name, signer) in SIGNERS {
        cmd("sign-efi-sig-list")
            .args(["-t", &time, "-g", &owner_guid])
            .args(["-k", &format!("{signer}.key"), "-c", &format!("{signer}.crt")])
            .args([name, &format!("{name}.esl"), &format!("{name}.auth")])
            .dir(w)
            .run()
            .with_context(|| format!("signing the {name} update with the {signer} key"))?;
    }
    std::fs::write(w.join(OWNER_GUID), format!("{owner_guid}\n")).context("writing the owner GUID")?;

    let mut files = Vec::new();
    for (name, secret) in names {
        let from = w.join(&name);
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        std::fs::File::open(&from)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .with_context(|| format!("reading {}", from.display()))?;
        let to = dir.join(&name);
        write_with_mode(&to, &bytes, if secret { 0o600 } else { 0o644 }, force)?;
        files.push((to, secret));
    }
    Ok(KeySet { dir: dir.to_path_buf(), owner_guid, files })
}

/// A certificate's notBefore as sign-efi-sig-list's `-t` takes it: "YYYY-MM-DD HH:MM:SS" (UTC).
fn not_before(cert: &Path) -> Result<String> {
    let text = cmd("openssl")
        .args(["x509", "-noout", "-startdate", "-dateopt", "iso_8601", "-in"])
        .arg(cert)
        .read()
        .with_context(|| format!("reading the validity of {}", cert.display()))?;
    let time = text.trim().strip_prefix("notBefore=").and_then(|t| t.strip_suffix('Z'));
    match time {
        Some(time) if time.len() == 19 => Ok(time.to_string()),
        _ => bail!("{}: unexpected notBefore from openssl: {:?}", cert.display(), text.trim()),
    }
}

/// A random (version 4) GUID from the kernel's CSPRNG.
fn random_guid() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading random bytes from /dev/urandom")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::util::digest::hex(&b);
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_guids_are_version_4_and_differ() {
        let (a, b) = (random_guid().unwrap(), random_guid().unwrap());
        assert_ne!(a, b);
        assert!(crate::uki::secure_boot::is_guid(&a), "{a}");
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn a_key_set_has_every_file_once_and_only_keys_are_secret() {
        let names = file_names();
        assert_eq!(names.len(), 13);
        assert!(names.iter().all(|(n, secret)| *secret == n.ends_with(".key")));
        let mut unique: Vec<&String> = names.iter().map(|(n, _)| n).collect();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }
}

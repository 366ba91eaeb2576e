//! Shared helpers for the integration tests: run the real CLI, install host tools once, snapshot
//! directories to prove a failing command left them untouched.

#![allow(dead_code)]

/// The console lines, kernel arguments and file names machined and the builder agree on.
#[path = "../../machined/src/protocol.rs"]
pub mod protocol;

/// A loopback Garage S3 store and the independent client (awscli) the upload tests check with.
pub mod s3;

use assert_cmd::Command;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Installs every host tool the suite uses (the test command must work on a fresh machine).
pub fn host_tools() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask")).arg("host-tools").output().unwrap();
        assert!(out.status.success(), "host-tools failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
}

/// QEMU boots and full builds run one at a time: two TCG guests on two cores would just time out.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn xtask() -> Command {
    let mut cmd = Command::cargo_bin("xtask").unwrap();
    for var in [
        "XTASK_OUT_DIR",
        "XTASK_SPEC",
        "XTASK_DEBIAN_MIRROR",
        "XTASK_OVERLAYS_DIR",
        "XTASK_BOARDS_DIR",
        "XTASK_SIGNING_KEY",
        "XTASK_SECURE_BOOT_KEYS",
        "XTASK_SECURE_BOOT_DB_KEY",
        "XTASK_STAGE_CACHE",
        "XTASK_STAGE_CACHE_DIR",
        "XTASK_STAGE_CACHE_READ_ONLY",
        "XTASK_MACHINED_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub struct Outcome {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Outcome {
    let out = cmd.output().unwrap();
    let o = Outcome {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!o.stderr.contains("panicked"), "the command panicked:\n{}", o.stderr);
    o
}

/// Runs a command that must fail, and returns its stderr.
pub fn fails(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(!o.success, "expected failure, but it succeeded.\nstdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    o.stderr
}

/// Runs a command that must succeed, and returns its stdout.
pub fn succeeds(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(o.success, "command failed.\nstdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    o.stdout
}

/// Every path under `dir` with its size and modification time, to compare before and after.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime)> {
    let mut map = BTreeMap::new();
    if dir.exists() {
        for entry in walkdir::WalkDir::new(dir) {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            map.insert(entry.path().to_path_buf(), (meta.len(), meta.modified().unwrap()));
        }
    }
    map
}

/// Copies the tree `from` to `to` (files and directories; modes as `std::fs::copy` keeps them).
pub fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let dest = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A scratch copy of image-spec/ (spec + lock) that a test may edit.
pub fn spec_copy(dir: &Path) -> PathBuf {
    let spec_dir = dir.join("image-spec");
    std::fs::create_dir_all(&spec_dir).unwrap();
    for name in ["node.toml", "node.lock"] {
        std::fs::copy(repo_root().join("image-spec").join(name), spec_dir.join(name)).unwrap();
    }
    spec_dir.join("node.toml")
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an unsigned output directory as build-image would: `artifacts` (file name, size; a .json
/// one gets a small SBOM-like text, the rest pseudo-random bytes seeded by `seed`) and manifest.json.
pub fn write_output_dir(dir: &Path, arch: &str, version: &str, artifacts: &[(&str, usize)], seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut listed = Vec::new();
    for (index, (name, size)) in artifacts.iter().enumerate() {
        let content = if name.ends_with(".json") {
            format!(r#"{{"spdxVersion":"SPDX-2.3","name":"node-{arch}"}}"#).into_bytes()
        } else {
            pseudo_random(*size, seed * 100 + index as u64 + 1)
        };
        std::fs::write(dir.join(name), &content).unwrap();
        listed.push(serde_json::json!({"file": name, "size": content.len(), "sha256": sha256_hex(&content)}));
    }
    let manifest = serde_json::json!({
        "image": "node", "version": version, "arch": arch, "board": format!("qemu-{arch}"),
        "source_date_epoch": 1_700_000_000u64, "lock_sha256": sha256_hex(b"lock"),
        "kernel": format!("6.1.0-test-{arch}"), "cmdline": "console=ttyS0", "artifacts": listed,
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

/// A fresh Secure Boot key set from `cargo xtask keygen --secure-boot` in `dir`.
pub fn secure_boot_keys(dir: &Path) -> PathBuf {
    succeeds(xtask().args(["keygen", "--secure-boot", "--out"]).arg(dir));
    dir.to_path_buf()
}

/// Debian's sbverify on `pe` against `cert`: whether it says "Signature verification OK".
pub fn sbverify(pe: &Path, cert: &Path) -> (bool, String) {
    let out = std::process::Command::new("sbverify").arg("--cert").arg(cert).arg(pe).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("Signature verification OK"), text)
}

/// An Authenticode check independent of OpenSSL and of the signer: the authenticode crate computes the
/// image digest (edk2's way) and parses the one signature; its encapsulated digest must match, the
/// messageDigest attribute must be the SHA-256 of the signed content, the signer must be `trusted_pem`
/// (issuer and serial), and RustCrypto's rsa must accept the signature over the signed attributes
/// with that certificate's key.
pub fn authenticode_verify(pe: &[u8], trusted_pem: &str) -> Result<(), String> {
    use authenticode::{authenticode_digest, AttributeCertificateIterator};
    use cms::signed_data::SignerIdentifier;
    use der::{DecodePem, Encode};
    use rsa::pkcs8::DecodePublicKey;
    use rsa::signature::Verifier;
    use sha2::{Digest, Sha256};

    let file = object::read::pe::PeFile64::parse(pe).map_err(|e| format!("not a PE32+ image: {e}"))?;
    let mut table = AttributeCertificateIterator::new(&file)
        .map_err(|e| format!("reading the certificate table: {e}"))?
        .ok_or("the image is not signed")?;
    let certificate = table.next().ok_or("the certificate table is empty")?.map_err(|e| format!("{e}"))?;
    if table.next().is_some() {
        return Err("more than one signature".into());
    }
    let signature =
        certificate.get_authenticode_signature().map_err(|e| format!("not an Authenticode signature: {e}"))?;

    let mut hasher = Sha256::new();
    authenticode_digest(&file, &mut hasher).map_err(|e| format!("hashing the image: {e}"))?;
    if hasher.finalize().as_slice() != signature.digest() {
        return Err("the image's Authenticode digest is not the one signed".into());
    }
    let signer = signature.signer_info();
    let attributes = signer.signed_attrs.as_ref().ok_or("the signature has no signed attributes")?;
    let message_digest = der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
    let digest_attribute = attributes.iter().find(|a| a.oid == message_digest).ok_or("no messageDigest attribute")?;
    let digest = digest_attribute.values.get(0).ok_or("empty messageDigest")?;
    let digest = digest.decode_as::<der::asn1::OctetString>().map_err(|e| format!("messageDigest: {e}"))?;
    let content = signature.encapsulated_content().ok_or("no signed content")?;
    if digest.as_bytes() != Sha256::digest(content).as_slice() {
        return Err("the messageDigest attribute does not match the signed content".into());
    }

    let trusted = x509_cert::Certificate::from_pem(trusted_pem).map_err(|e| format!("the trusted certificate: {e}"))?;
    let tbs = &trusted.tbs_certificate;
    match &signer.sid {
        SignerIdentifier::IssuerAndSerialNumber(id)
            if id.issuer == tbs.issuer && id.serial_number == tbs.serial_number => {}
        _ => return Err("the signer is not the trusted certificate".into()),
    }
    let spki = tbs.subject_public_key_info.to_der().map_err(|e| format!("{e}"))?;
    let key = rsa::RsaPublicKey::from_public_key_der(&spki).map_err(|e| format!("the trusted key: {e}"))?;
    let rsa_signature =
        rsa::pkcs1v15::Signature::try_from(signature.signature()).map_err(|e| format!("the RSA signature: {e}"))?;
    let signed = attributes.to_der().map_err(|e| format!("{e}"))?;
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key)
        .verify(&signed, &rsa_signature)
        .map_err(|_| "the RSA signature does not verify with the trusted certificate's key".to_string())?;
    Ok(())
}

/// Every byte of `pe` after its headers belongs to a section (up to FileAlignment padding) and the
/// certificate table, if any, follows the last one: no gap that Authenticode verifiers hash differently.
pub fn assert_no_gaps(pe: &[u8], what: &str) {
    use object::read::pe::ImageNtHeaders;
    use object::LittleEndian as LE;
    let file = object::read::pe::PeFile64::parse(pe).unwrap();
    let optional = file.nt_headers().optional_header();
    let (headers, alignment) = (optional.size_of_headers.get(LE) as usize, optional.file_alignment.get(LE) as usize);
    let mut sections: Vec<(usize, usize)> = file
        .section_table()
        .iter()
        .map(|s| (s.pointer_to_raw_data.get(LE) as usize, s.size_of_raw_data.get(LE) as usize))
        .filter(|(_, size)| *size > 0)
        .collect();
    sections.sort();
    let mut at = headers;
    for (offset, size) in sections {
        assert_eq!(offset, at.div_ceil(alignment) * alignment, "{what}: a gap before the section at {offset:#x}");
        at = offset + size;
    }
    let security = file.data_directories().get(object::pe::IMAGE_DIRECTORY_ENTRY_SECURITY);
    let end = match security.map(|d| (d.virtual_address.get(LE) as usize, d.size.get(LE) as usize)) {
        Some((offset, size)) if size > 0 => {
            assert!(offset >= at && offset - at < 8, "{what}: the signature at {offset:#x} does not follow {at:#x}");
            offset + size
        }
        _ => at,
    };
    assert_eq!(end, pe.len(), "{what}: bytes after the last section");
}

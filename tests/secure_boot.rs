//! Secure Boot keys and their use, without booting: `keygen --secure-boot` makes a key set whose
//! signed updates an independent check (openssl cms) accepts, never replaces one without --force, and
//! build-image refuses a db key that others may read, a missing key and a key not matching its
//! certificate, clearly and before anything is written. (The signed builds, their verification with
//! sbverify and the authenticode crate, and the firmware's refusals are in build_boot.rs.)

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The variable name and vendor GUID each update is for, and the key that must have signed it.
const UPDATES: [(&str, &str, &str); 3] = [
    ("PK", "8be4df61-93ca-11d2-aa0d-00e098032b8c", "PK"),
    ("KEK", "8be4df61-93ca-11d2-aa0d-00e098032b8c", "PK"),
    ("db", "d719b2cb-3d3a-4596-a3bc-dad00e67656f", "KEK"),
];

fn guid_le(text: &str) -> Vec<u8> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    [&[b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6]][..], &b[8..]].concat()
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 128 {
        vec![n as u8]
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        [vec![0x80 | bytes.len() as u8], bytes].concat()
    }
}

/// Checks an EFI_VARIABLE_AUTHENTICATION_2 update the way firmware does, with openssl rather than
/// efitools: rebuilds the signed message (name, vendor GUID, attributes, time, list) and verifies the
/// PKCS#7 against `signer`. Returns whether openssl accepted it.
fn auth_verifies(auth: &[u8], esl: &[u8], name: &str, vendor: &str, signer: &Path, work: &Path) -> bool {
    let length = u32::from_le_bytes(auth[16..20].try_into().unwrap()) as usize;
    assert_eq!(&auth[20..24], &[0x00, 0x02, 0xf1, 0x0e], "WIN_CERTIFICATE_UEFI_GUID revision 2.0");
    assert_eq!(&auth[24..40], guid_le("4aafd29d-68df-49ee-8aa9-347d375665a7").as_slice(), "EFI_CERT_TYPE_PKCS7_GUID");
    assert_eq!(&auth[16 + length..], esl, "the update carries the signature list");
    let signed_data = &auth[40..16 + length];
    let name_utf16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let message = [&name_utf16[..], &guid_le(vendor), &0x27u32.to_le_bytes(), &auth[..16], esl].concat();
    // openssl wants a ContentInfo around the bare SignedData.
    let oid = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    let explicit = [&[0xa0][..], &der_len(signed_data.len()), signed_data].concat();
    let content_info = [&[0x30][..], &der_len(oid.len() + explicit.len()), &oid, &explicit].concat();
    std::fs::write(work.join("p7"), content_info).unwrap();
    std::fs::write(work.join("message"), message).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-out", "/dev/null", "-in"])
        .arg(work.join("p7"))
        .arg("-content")
        .arg(work.join("message"))
        .arg("-CAfile")
        .arg(signer)
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn keygen_makes_a_key_set_firmware_enrols_and_never_replaces_it_without_force() {
    host_tools();
    let tmp = tempfile::tempdir().unwrap();
    let dir = secure_boot_keys(&tmp.path().join("keys"));
    for name in ["PK", "KEK", "db"] {
        let mode =
            |ext: &str| std::fs::metadata(dir.join(format!("{name}.{ext}"))).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("key"), 0o600, "{name}.key");
        for ext in ["crt", "esl", "auth"] {
            assert_eq!(mode(ext), 0o644, "{name}.{ext}");
        }
    }
    let guid = std::fs::read_to_string(dir.join("owner.guid")).unwrap();
    assert_eq!(guid.trim().len(), 36, "{guid}");
    let listing: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(listing.len(), 13, "{listing:?}");

    // Each update verifies against the key that must sign it, and not against the one below it.
    for (name, vendor, signer) in UPDATES {
        let auth = std::fs::read(dir.join(format!("{name}.auth"))).unwrap();
        let esl = std::fs::read(dir.join(format!("{name}.esl"))).unwrap();
        assert_eq!(&esl[..16], guid_le("a5c059a1-94e4-4aa7-87b5-ab155c2bf072").as_slice(), "an X.509 list");
        assert_eq!(&esl[28..44], guid_le(guid.trim()).as_slice(), "owned by owner.guid");
        let signer_cert = dir.join(format!("{signer}.crt"));
        assert!(auth_verifies(&auth, &esl, name, vendor, &signer_cert, tmp.path()), "{name}.auth by {signer}");
        if name == "db" {
            assert!(!auth_verifies(&auth, &esl, name, vendor, &dir.join("PK.crt"), tmp.path()), "db.auth by PK");
        }
    }
    // The db certificate signs code: strict Authenticode verifiers want the codeSigning EKU.
    let text =
        std::process::Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(dir.join("db.crt")).output();
    let text = String::from_utf8_lossy(&text.unwrap().stdout).into_owned();
    assert!(text.contains("Code Signing") && text.contains("CA:FALSE"), "{text}");

    let before = snapshot(&dir);
    let stderr = fails(xtask().args(["keygen", "--secure-boot", "--out"]).arg(&dir));
    assert!(stderr.contains("already exists") && stderr.contains("--force"), "{stderr}");
    assert_eq!(before, snapshot(&dir), "a refused keygen changed the key set");
    let old_cert = std::fs::read(dir.join("db.crt")).unwrap();
    succeeds(xtask().args(["keygen", "--secure-boot", "--force", "--out"]).arg(&dir));
    assert_ne!(old_cert, std::fs::read(dir.join("db.crt")).unwrap(), "--force made new keys");
    assert_eq!(std::fs::metadata(dir.join("db.key")).unwrap().permissions().mode() & 0o777, 0o600);
}

/// build-image with `keys` must fail before writing anything, with stderr holding every `wanted`.
fn build_refuses(keys: &Path, env_key: Option<&str>, wanted: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut cmd = xtask();
    cmd.arg("--out-dir").arg(&out).args(["build-image", "--arch", "amd64", "--secure-boot-keys"]).arg(keys);
    if let Some(value) = env_key {
        cmd.env("XTASK_SECURE_BOOT_DB_KEY", value);
    }
    let stderr = fails(&mut cmd);
    for w in wanted {
        assert!(stderr.contains(w), "{w:?} missing from:\n{stderr}");
    }
    // Every PEM key body starts with "MII" (the DER SEQUENCE of a 2048-bit key, in base64).
    assert!(!stderr.contains("MII"), "the error quotes key material:\n{stderr}");
    assert!(!out.exists(), "a refused build created {}", out.display());
}

#[test]
fn a_db_key_others_may_read_or_a_missing_or_wrong_key_is_refused_before_building() {
    host_tools();
    let tmp = tempfile::tempdir().unwrap();
    let keys = secure_boot_keys(&tmp.path().join("keys"));
    let db_key = keys.join("db.key");

    std::fs::set_permissions(&db_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    build_refuses(&keys, None, &["db.key", "mode 0644", "group or others", "chmod 600"]);
    std::fs::set_permissions(&db_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Another key set's db key is not the key of this db.crt.
    let other = secure_boot_keys(&tmp.path().join("other"));
    let other_key = std::fs::read_to_string(other.join("db.key")).unwrap();
    build_refuses(&keys, Some(&other_key), &["$XTASK_SECURE_BOOT_DB_KEY", "is not the key of", "db.crt"]);
    build_refuses(&keys, Some("not a key"), &["$XTASK_SECURE_BOOT_DB_KEY: not a PEM private key"]);

    std::fs::remove_file(&db_key).unwrap();
    build_refuses(&keys, None, &["no Secure Boot db key", "db.key does not exist", "XTASK_SECURE_BOOT_DB_KEY"]);
    build_refuses(&tmp.path().join("nowhere"), None, &["nowhere: no such directory", "keygen --secure-boot"]);
    std::fs::remove_file(keys.join("KEK.crt")).unwrap();
    build_refuses(&keys, Some(&other_key), &["KEK.crt: missing from the Secure Boot key set"]);

    // A db key in the environment without a key set would make an unsigned image: refused.
    let out = tmp.path().join("out");
    let stderr = fails(xtask().env("XTASK_SECURE_BOOT_DB_KEY", &other_key).arg("--out-dir").arg(&out).args([
        "build-image",
        "--arch",
        "amd64",
    ]));
    assert!(stderr.contains("--secure-boot-keys DIR"), "{stderr}");
    assert!(!out.exists());
}

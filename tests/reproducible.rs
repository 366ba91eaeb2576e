//! Bit-for-bit reproducibility: `build-image --check-reproducible` builds each arch twice, in two
//! processes with empty caches, different paths, umask and time zone, and machined compiled from a copy
//! at another path, both signed for Secure Boot with one key set (the db key from the environment, as
//! CI gives it), and must find every artifact identical, the signed UKI and the variable store too; `compare-builds` must name the artifact and
//! the byte offset where two output directories first differ.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::path::Path;

fn check_reproducible(arch: &str) {
    host_tools();
    let _heavy = heavy();
    // The certificates in a directory of their own; the db key only in the environment.
    let tmp = tempfile::tempdir().unwrap();
    let keys = secure_boot_keys(&tmp.path().join("keys"));
    let db_key = std::fs::read_to_string(keys.join("db.key")).unwrap();
    std::fs::remove_file(keys.join("db.key")).unwrap();
    let o = run(xtask()
        .env("XTASK_SECURE_BOOT_DB_KEY", &db_key)
        .args(["--json", "build-image", "--check-reproducible", "--arch", arch, "--secure-boot-keys"])
        .arg(&keys));
    let report: serde_json::Value = serde_json::from_str(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}).\nstdout:\n{}\nstderr:\n{}", o.stdout, o.stderr));
    assert!(o.success && report["identical"] == true, "builds differ:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    assert!(report["kept"].is_null(), "identical builds must not be kept: {}", report["kept"]);
    assert_eq!(report["signed_for_secure_boot"], true);

    // Both builds really were independent: other directories, machined from another path, another umask.
    let builds = report["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 2);
    for field in ["dir", "machined_dir", "spec", "boards_dir", "overlays_dir", "umask", "tz"] {
        assert_ne!(builds[0][field], builds[1][field], "both builds had the same {field}");
    }
    assert!(builds[1]["machined_dir"].as_str().unwrap().len() > builds[0]["machined_dir"].as_str().unwrap().len());
    for build in builds {
        let dir = Path::new(build["dir"].as_str().unwrap());
        assert!(!dir.exists(), "{} was left behind", dir.display());
    }

    // Every kind of artifact was compared, each with a digest.
    let files: Vec<&str> =
        report["comparison"]["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    for ext in ["raw", "qcow2", "efi", "initramfs", "rootfs.sqsh", "spdx.json", "secure-boot-vars.fd"] {
        let name = format!("node-{arch}.{ext}");
        assert!(files.contains(&name.as_str()), "{name} was not compared: {files:?}");
    }
    assert_eq!(files.last(), Some(&"manifest.json"));
    for f in report["comparison"]["files"].as_array().unwrap() {
        assert_eq!(f["identical"], true, "{f}");
        assert_eq!(f["sha256"].as_str().unwrap().len(), 64, "{f}");
    }
}

#[test]
fn arm64_builds_are_bit_for_bit_reproducible() {
    check_reproducible("arm64");
}

#[test]
fn amd64_builds_are_bit_for_bit_reproducible() {
    check_reproducible("amd64");
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An output directory as build-image writes it: artifacts of deterministic content and manifest.json.
fn output_dir(dir: &Path, artifacts: &[(&str, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut listed = Vec::new();
    for (name, content) in artifacts {
        std::fs::write(dir.join(name), content).unwrap();
        listed.push(serde_json::json!({"file": name, "size": content.len(), "sha256": sha256_hex(content)}));
    }
    let manifest = serde_json::json!({
        "image": "node", "version": "0.1.0", "arch": "arm64", "board": "qemu-arm64",
        "source_date_epoch": 1_700_000_000u64, "lock_sha256": sha256_hex(b"lock"),
        "kernel": "6.1.0-test-arm64", "cmdline": "console=ttyAMA0", "artifacts": listed,
    });
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
}

fn content(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect()
}

fn compare(a: &Path, b: &Path) -> (Outcome, serde_json::Value) {
    let o = run(xtask().arg("--json").arg("compare-builds").arg(a).arg(b));
    let json = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", o.stdout, o.stderr));
    (o, json)
}

#[test]
fn compare_builds_names_the_artifact_and_offset_of_a_one_byte_difference() {
    let tmp = tempfile::tempdir().unwrap();
    let artifacts = vec![
        ("node-arm64.raw", content(3 << 20, 1)),
        ("node-arm64.efi", content(2 << 20, 2)),
        ("node-arm64.initramfs", content((1 << 20) + 333, 3)),
        ("node-arm64.rootfs.sqsh", content(700_000, 4)),
        ("node-arm64.spdx.json", b"{\"spdxVersion\":\"SPDX-2.3\"}\n".to_vec()),
    ];
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    output_dir(&a, &artifacts);
    output_dir(&b, &artifacts);

    let (o, same) = compare(&a, &b);
    assert!(o.success, "{}", o.stderr);
    assert_eq!(same["identical"], true);
    assert_eq!(same["files"].as_array().unwrap().len(), artifacts.len() + 1);
    let text = succeeds(xtask().arg("compare-builds").arg(&a).arg(&b));
    assert!(text.contains("identical") && text.contains(&sha256_hex(&artifacts[0].1)), "{text}");

    // One byte of the initramfs, past the first read buffer: the report names it and its offset.
    let offset = 1_048_576 + 217;
    let mut changed = artifacts.clone();
    changed[2].1[offset] ^= 0x40;
    output_dir(&b, &changed);
    let (o, diff) = compare(&a, &b);
    assert!(!o.success, "a difference must fail the command");
    assert!(o.stderr.contains("node-arm64.initramfs") && o.stderr.contains(&offset.to_string()), "{}", o.stderr);
    assert_eq!(diff["identical"], false);
    assert_eq!(diff["first_difference"]["file"], "node-arm64.initramfs");
    assert_eq!(diff["first_difference"]["offset"], offset);
    assert_eq!(diff["first_difference"]["first_sha256"], sha256_hex(&artifacts[2].1));
    assert_eq!(diff["first_difference"]["second_sha256"], sha256_hex(&changed[2].1));
    // The manifest records the other digest, so it differs too; nothing else does.
    assert_eq!(diff["different"], serde_json::json!(["node-arm64.initramfs", "manifest.json"]));

    // A truncated artifact: the offset is where the shorter one ends.
    let mut truncated = artifacts.clone();
    truncated[3].1.truncate(500_000);
    output_dir(&b, &truncated);
    let (o, diff) = compare(&a, &b);
    assert!(!o.success);
    assert_eq!(diff["first_difference"]["file"], "node-arm64.rootfs.sqsh");
    assert_eq!(diff["first_difference"]["offset"], 500_000);

    // An artifact only one build has.
    let fewer: Vec<_> = artifacts.iter().filter(|(n, _)| !n.ends_with(".efi")).cloned().collect();
    std::fs::remove_dir_all(&b).unwrap();
    output_dir(&b, &fewer);
    let (o, diff) = compare(&a, &b);
    assert!(!o.success);
    assert_eq!(diff["first_difference"]["file"], "node-arm64.efi");
    assert!(diff["first_difference"]["offset"].is_null());
    assert!(diff["first_difference"]["message"].as_str().unwrap().contains("only the first"), "{diff}");

    // Not an output directory at all: a clean error naming it.
    let stderr = fails(xtask().arg("compare-builds").arg(&a).arg(tmp.path().join("missing")));
    assert!(stderr.contains("missing") && stderr.contains("manifest.json"), "{stderr}");
}

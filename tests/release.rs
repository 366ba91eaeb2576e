//! `cargo xtask release` end to end against a real Garage node on loopback: both arches built with a
//! Secure Boot key set, boot-tested (also under Secure Boot firmware), signed, verified and uploaded;
//! awscli downloads them, sbverify accepts each downloaded UKI against the set's db certificate and
//! `verify` the download, and `verify s3://…` the release where it lies. And a release whose boot test fails
//! uploads nothing.

mod common;

use common::s3::{Garage, BUCKET};
use common::*;
use std::path::Path;

const TO: &str = "s3://nodeimg/releases";

fn keygen(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    succeeds(xtask().arg("keygen").arg("--out").arg(dir));
    (dir.join("nodeimg.pub"), dir.join("nodeimg.key"))
}

fn release(garage: &Garage, out: &Path, public: &Path, secret: &Path) -> assert_cmd::Command {
    let mut cmd = garage.xtask();
    cmd.arg("--json").arg("--out-dir").arg(out).args(["release", "--no-conditional", "--to", TO, "--key"]).arg(public);
    cmd.arg("--secret-key").arg(secret).args(["--endpoint", &garage.endpoint, "--region", "garage"]);
    cmd
}

#[test]
fn release_publishes_both_arches_signed_for_secure_boot_that_awscli_downloads_and_verify_accepts() {
    host_tools();
    let _heavy = heavy();
    let garage = Garage::start();
    let tmp = tempfile::tempdir().unwrap();
    let (public, secret) = keygen(&tmp.path().join("keys"));
    let secure_boot = secure_boot_keys(&tmp.path().join("secure-boot"));
    let out = tmp.path().join("out");
    let released = run(release(&garage, &out, &public, &secret).arg("--secure-boot-keys").arg(&secure_boot));
    assert!(released.success, "release failed:\n{}", released.stderr);
    for board in ["qemu-amd64", "qemu-arm64"] {
        let booted = format!("boot-testing {board} under Secure Boot");
        assert!(released.stderr.contains(&booted), "{booted:?} missing:\n{}", released.stderr);
    }
    assert!(!released.stderr.contains(&garage.secret) && !released.stdout.contains(&garage.secret));
    let summary: serde_json::Value = serde_json::from_str(&released.stdout).unwrap();
    let version = summary["version"].as_str().unwrap().to_string();
    assert_eq!(summary["published_to"], format!("{TO}/"));

    let pointer: serde_json::Value = serde_json::from_str(&garage.aws_ok(&[
        "s3",
        "cp",
        &format!("s3://{BUCKET}/releases/node/channels/stable.json"),
        "-",
    ]))
    .unwrap();
    for (arch, entry) in summary["arches"].as_array().unwrap().iter().map(|a| (a["arch"].as_str().unwrap(), a)) {
        assert!(entry["boot_ready_secs"].as_f64().unwrap() > 0.0, "{entry}");
        let upload = &entry["upload"];
        assert!(upload["objects_sent"].as_u64().unwrap() >= 18, "{upload}");
        assert_eq!(upload["objects_skipped"], 0);

        // awscli downloads the release; verify accepts the copy, and the release where it lies.
        let download = tmp.path().join("download").join(arch);
        garage.download(&format!("releases/node/{version}/{arch}/"), &download);
        let local = run(xtask().arg("verify").arg("--key").arg(&public).arg(&download));
        assert!(local.success, "verify of the download:\n{}", local.stderr);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(download.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["arch"], arch);
        let efi = download.join(format!("node-{arch}.efi"));
        let (signed, sbverify_said) = sbverify(&efi, &secure_boot.join("db.crt"));
        assert!(signed, "the released UKI does not verify against the key set's db certificate:\n{sbverify_said}");
        let vars = manifest["secure_boot"]["vars"].as_str().unwrap_or_else(|| panic!("{manifest}"));
        assert!(download.join(vars).is_file(), "{vars} was not released");
        for artifact in manifest["artifacts"].as_array().unwrap() {
            let name = artifact["file"].as_str().unwrap();
            assert!(local.stderr.contains(&format!("ok  {name}")), "{name} not verified:\n{}", local.stderr);
        }
        let mut remote = garage.xtask();
        remote.arg("verify").arg("--key").arg(&public);
        remote.args(["--endpoint", &garage.endpoint, "--region", "garage", &format!("{TO}/node/{version}/{arch}/")]);
        let remote = run(&mut remote);
        assert!(remote.success, "verify in place:\n{}", remote.stderr);
        assert_eq!(pointer["arches"][arch]["version"], version, "{pointer}");
        assert_eq!(
            pointer["arches"][arch]["index_sha256"],
            sha256_hex(&std::fs::read(download.join("index.json")).unwrap())
        );
    }
}

#[test]
fn release_uploads_nothing_when_a_boot_test_fails() {
    host_tools();
    let _heavy = heavy();
    let garage = Garage::start();
    let tmp = tempfile::tempdir().unwrap();
    let (public, secret) = keygen(&tmp.path().join("keys"));
    // amd64's board without the loop module: machined cannot attach its root, and says so.
    let boards = tmp.path().join("boards");
    std::fs::create_dir(&boards).unwrap();
    let amd64 = std::fs::read_to_string(repo_root().join("boards/qemu-amd64.toml")).unwrap();
    let broken = amd64.replacen("\"loop\", ", "", 1);
    assert_ne!(broken, amd64);
    std::fs::write(boards.join("qemu-amd64.toml"), broken).unwrap();
    std::fs::copy(repo_root().join("boards/qemu-arm64.toml"), boards.join("qemu-arm64.toml")).unwrap();
    let out = tmp.path().join("out");
    let mut cmd = release(&garage, &out, &public, &secret);
    cmd.arg("--boards-dir").arg(&boards);
    let failed = run(&mut cmd);
    assert!(!failed.success, "{}", failed.stdout);
    assert!(
        failed.stderr.contains("boot-testing qemu-amd64") && failed.stderr.contains(protocol::FATAL),
        "{}",
        failed.stderr
    );
    assert_eq!(garage.keys(), Vec::<String>::new(), "a release whose boot test failed uploaded something");
    assert!(!out.join("qemu-amd64/SHA256SUMS").exists(), "a release whose boot test failed was signed");
}

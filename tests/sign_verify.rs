//! keygen, sign and verify end to end through the CLI, on an output directory these tests build
//! themselves (manifest.json plus artifacts of pseudo-random content), and checked against Debian's
//! `minisign`, which must be installed (`cargo xtask host-tools`): these tests fail without it.

mod common;

use common::sha256_hex;

use assert_cmd::Command;
use base64::Engine as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The artifact kinds build-image writes, with sizes big enough to span many read buffers.
const ARTIFACTS: &[(&str, usize)] = &[
    ("node-arm64.raw", 6 << 20),
    ("node-arm64.qcow2", 1 << 20),
    ("node-arm64.efi", 2 << 20),
    ("node-arm64.initramfs", (1 << 19) + 17),
    ("node-arm64.rootfs.sqsh", 3 << 20),
    ("node-arm64.spdx.json", 0),
];

fn xtask() -> Command {
    let mut cmd = Command::cargo_bin("xtask").expect("the xtask binary is built for its tests");
    cmd.env_remove("XTASK_SIGNING_KEY");
    cmd
}

/// Writes an unsigned output directory: artifacts plus the manifest.json build-image would write.
fn write_output_dir(dir: &Path) {
    common::write_output_dir(dir, "arm64", "0.1.0", ARTIFACTS, 0);
}

/// A key pair and a signed output directory in a temp dir of their own.
struct Release {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    public_key: PathBuf,
    secret_key: PathBuf,
}

impl Release {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let dir = root.join("out/qemu-arm64");
        write_output_dir(&dir);
        let keys = root.join("keys");
        let out = xtask().arg("keygen").arg("--out").arg(&keys).output().unwrap();
        assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
        let release = Release {
            _tmp: tmp,
            root,
            dir,
            public_key: keys.join("nodeimg.pub"),
            secret_key: keys.join("nodeimg.key"),
        };
        assert_no_secret(&out, &release.secret_key);
        let out = xtask().arg("sign").arg("--secret-key").arg(&release.secret_key).arg(&release.dir).output().unwrap();
        assert!(out.status.success(), "sign: {}", String::from_utf8_lossy(&out.stderr));
        assert_no_secret(&out, &release.secret_key);
        release
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn verify_with(&self, key: &Path, dir: &Path) -> Output {
        let out = xtask().arg("verify").arg("--key").arg(key).arg(dir).output().unwrap();
        assert_no_secret(&out, &self.secret_key);
        out
    }

    fn verify(&self) -> Output {
        self.verify_with(&self.public_key, &self.dir)
    }

    /// Every file SHA256SUMS lists, and SHA256SUMS itself: each has a .minisig.
    fn signed_files(&self) -> Vec<String> {
        let sums = std::fs::read_to_string(self.path("SHA256SUMS")).unwrap();
        let mut files: Vec<String> = sums.lines().map(|l| l.split_once("  ").unwrap().1.to_string()).collect();
        files.push("SHA256SUMS".to_string());
        files.push("index.json".to_string());
        files
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What must never show up in any output: the key file's blob, and the seed in hex and base64.
fn secret_forms(secret_key: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(secret_key).unwrap();
    let blob = text.lines().nth(1).unwrap().to_string();
    let bytes = base64::engine::general_purpose::STANDARD.decode(&blob).unwrap();
    let (seed, keypair) = (&bytes[62..94], &bytes[62..126]);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    vec![blob, seed.iter().map(|b| format!("{b:02x}")).collect(), b64(seed), b64(keypair)]
}

fn assert_no_secret(out: &Output, secret_key: &Path) {
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for secret in secret_forms(secret_key) {
        assert!(!printed.contains(&secret[..secret.len().min(40)]), "secret key material printed:\n{printed}");
    }
}

/// A failure the way users should see one: exit 1 (not a panic's 101), every `names` in the message.
fn assert_fails_naming(out: &Output, names: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "expected a clean failure, got {:?}:\n{err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    for name in names {
        assert!(err.contains(name), "message does not name {name}:\n{err}");
    }
}

fn flip_bit(path: &Path, offset_fraction: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = ((bytes.len() as f64 * offset_fraction) as usize).min(bytes.len() - 1);
    bytes[at] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn keygen_sign_verify_passes() {
    let release = Release::new();
    let out = release.verify();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for (name, _) in ARTIFACTS {
        assert!(err.contains(&format!("ok  {name}")), "{err}");
    }
    assert!(err.contains("ok  manifest.json") && err.contains("ok  index.json"), "{err}");
    assert!(err.contains("verified 9 files"), "{err}");

    let out =
        xtask().arg("--json").arg("verify").arg("--key").arg(&release.public_key).arg(&release.dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["files"].as_array().unwrap().len(), 9);
    assert_eq!(report["errors"].as_array().unwrap().len(), 0);

    let sums = std::fs::read_to_string(release.path("SHA256SUMS")).unwrap();
    let mut names: Vec<&str> = sums.lines().map(|l| l.split_once("  ").unwrap().1).collect();
    assert_eq!(names.len(), ARTIFACTS.len() + 1, "{sums}");
    let sorted = {
        let mut n = names.clone();
        n.sort();
        n
    };
    assert_eq!(names, sorted, "SHA256SUMS is sorted");
    names.retain(|n| *n == "manifest.json");
    assert_eq!(names.len(), 1);
    let comment = std::fs::read_to_string(release.path("node-arm64.raw.minisig")).unwrap();
    let raw_sha = sha256_hex(&std::fs::read(release.path("node-arm64.raw")).unwrap());
    assert!(
        comment.contains(&format!(
            "trusted comment: image=node version=0.1.0 arch=arm64 file=node-arm64.raw sha256={raw_sha}\n"
        )),
        "{comment}"
    );
}

#[test]
fn minisign_cli_accepts_every_signature() {
    common::host_tools();
    let release = Release::new();
    for file in release.signed_files() {
        let out = std::process::Command::new("minisign")
            .arg("-Vm")
            .arg(release.path(&file))
            .arg("-p")
            .arg(&release.public_key)
            .output()
            .expect("Debian's minisign must be installed (`cargo xtask host-tools` installs it)");
        assert!(out.status.success(), "minisign rejects {file}.minisig: {}", stderr(&out));
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains(&format!("file={file} ")), "{said}");
    }
}

#[test]
fn signing_is_deterministic_and_the_env_var_key_works() {
    let release = Release::new();
    let before: Vec<Vec<u8>> =
        release.signed_files().iter().map(|f| std::fs::read(release.path(&format!("{f}.minisig"))).unwrap()).collect();
    let key_text = std::fs::read_to_string(&release.secret_key).unwrap();
    let out = xtask().env("XTASK_SIGNING_KEY", &key_text).arg("--json").arg("sign").arg(&release.dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &release.secret_key);
    let after: Vec<Vec<u8>> =
        release.signed_files().iter().map(|f| std::fs::read(release.path(&format!("{f}.minisig"))).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn flipped_bit_in_each_kind_of_file_is_caught() {
    let release = Release::new();
    let pristine = release.root.join("pristine");
    copy_dir(&release.dir, &pristine);
    for name in ARTIFACTS.iter().map(|(n, _)| *n).chain(["manifest.json"]) {
        copy_dir(&pristine, &release.dir);
        flip_bit(&release.path(name), 0.5);
        let out = release.verify();
        assert_fails_naming(&out, &[name]);
        assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    }
    copy_dir(&pristine, &release.dir);
    assert!(release.verify().status.success());
}

#[test]
fn truncated_file_is_caught() {
    let release = Release::new();
    let path = release.path("node-arm64.rootfs.sqsh");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 4096]).unwrap();
    let out = release.verify();
    assert_fails_naming(&out, &["node-arm64.rootfs.sqsh", "truncated"]);
}

#[test]
fn missing_file_is_caught() {
    let release = Release::new();
    std::fs::remove_file(release.path("node-arm64.efi")).unwrap();
    assert_fails_naming(&release.verify(), &["node-arm64.efi", "missing"]);

    let release = Release::new();
    std::fs::remove_file(release.path("node-arm64.qcow2.minisig")).unwrap();
    assert_fails_naming(&release.verify(), &["node-arm64.qcow2.minisig", "missing"]);

    let release = Release::new();
    std::fs::remove_file(release.path("SHA256SUMS")).unwrap();
    assert_fails_naming(&release.verify(), &["SHA256SUMS", "missing"]);
}

#[test]
fn index_problems_are_caught() {
    // Every file the release holds is in the index, itself signed.
    let release = Release::new();
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(release.path("index.json")).unwrap()).unwrap();
    let mut listed: Vec<&str> =
        index["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    let mut present: Vec<String> = signature_files(&release.dir)
        .into_iter()
        .chain(ARTIFACTS.iter().map(|(n, _)| n.to_string()))
        .chain(["manifest.json".to_string()])
        .filter(|n| !n.starts_with("index.json"))
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present);

    std::fs::remove_file(release.path("index.json")).unwrap();
    assert_fails_naming(&release.verify(), &["index.json", "has no index"]);

    // An edited index (a size changed) no longer matches its signature.
    let release = Release::new();
    let text = std::fs::read_to_string(release.path("index.json")).unwrap();
    std::fs::write(release.path("index.json"), text.replacen("\"size\": ", "\"size\": 1", 1)).unwrap();
    assert_fails_naming(&release.verify(), &["index.json.minisig", "signature"]);

    // A signature replaced by another valid one of the same key: the index catches the swap too.
    let release = Release::new();
    std::fs::copy(release.path("node-arm64.raw.minisig"), release.path("node-arm64.efi.minisig")).unwrap();
    assert_fails_naming(&release.verify(), &["node-arm64.efi.minisig", "does not match index.json"]);
}

#[test]
fn swapped_signature_is_caught() {
    let release = Release::new();
    std::fs::copy(release.path("node-arm64.raw.minisig"), release.path("node-arm64.efi.minisig")).unwrap();
    assert_fails_naming(
        &release.verify(),
        &["node-arm64.efi.minisig", "bad signature", "it is the signature of node-arm64.raw"],
    );
}

#[test]
fn key_from_another_pair_is_caught() {
    let release = Release::new();
    let other = release.root.join("other-keys");
    let out = xtask().arg("keygen").arg("--out").arg(&other).output().unwrap();
    assert!(out.status.success());

    // Verifying with the wrong public key.
    let out = release.verify_with(&other.join("nodeimg.pub"), &release.dir);
    assert_fails_naming(&out, &["SHA256SUMS.minisig", "node-arm64.raw.minisig", "key id"]);

    // A directory re-signed by someone else's key.
    let out =
        xtask().arg("sign").arg("--secret-key").arg(other.join("nodeimg.key")).arg(&release.dir).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_fails_naming(&release.verify(), &["SHA256SUMS.minisig", "manifest.json.minisig", "wrong public key"]);
}

#[test]
fn edited_trusted_comment_is_caught() {
    let release = Release::new();
    let path = release.path("node-arm64.raw.minisig");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("version=0.1.0"));
    std::fs::write(&path, text.replace("version=0.1.0", "version=0.1.1")).unwrap();
    assert_fails_naming(&release.verify(), &["node-arm64.raw.minisig", "trusted comment was edited"]);
}

#[test]
fn extra_line_in_sums_is_caught() {
    let release = Release::new();
    std::fs::write(release.path("extra.bin"), b"smuggled").unwrap();
    let mut sums = std::fs::read_to_string(release.path("SHA256SUMS")).unwrap();
    sums.push_str(&format!("{}  extra.bin\n", sha256_hex(b"smuggled")));
    std::fs::write(release.path("SHA256SUMS"), sums).unwrap();
    let out = release.verify();
    assert_fails_naming(&out, &["SHA256SUMS.minisig", "extra.bin"]);

    let out =
        xtask().arg("--json").arg("verify").arg("--key").arg(&release.public_key).arg(&release.dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let errors = report["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e["file"] == "extra.bin"), "{report}");
    assert!(errors.iter().any(|e| e["file"] == "SHA256SUMS.minisig"), "{report}");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let release = Release::new();
    let keys = release.secret_key.parent().unwrap();
    let before = std::fs::read(&release.secret_key).unwrap();
    let out = xtask().arg("keygen").arg("--out").arg(keys).output().unwrap();
    assert_fails_naming(&out, &["nodeimg.key", "--force"]);
    assert_eq!(std::fs::read(&release.secret_key).unwrap(), before);

    let out = xtask().arg("keygen").arg("--out").arg(keys).arg("--force").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_no_secret(&out, &release.secret_key);
    assert_ne!(std::fs::read(&release.secret_key).unwrap(), before);
    let mode = std::fs::metadata(&release.secret_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(stderr(&out).contains("nodeimg.pub"), "keygen names the public key: {}", stderr(&out));
}

#[test]
fn group_readable_secret_key_is_refused() {
    let release = Release::new();
    std::fs::set_permissions(&release.secret_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = xtask().arg("sign").arg("--secret-key").arg(&release.secret_key).arg(&release.dir).output().unwrap();
    assert_fails_naming(&out, &["nodeimg.key", "0644", "chmod 600"]);
    assert_no_secret(&out, &release.secret_key);
}

#[test]
fn sign_refuses_a_dir_that_does_not_match_its_manifest() {
    let release = Release::new();
    flip_bit(&release.path("node-arm64.initramfs"), 0.1);
    let key_text = std::fs::read_to_string(&release.secret_key).unwrap();
    let out = xtask().env("XTASK_SIGNING_KEY", key_text).arg("sign").arg(&release.dir).output().unwrap();
    assert_fails_naming(&out, &["node-arm64.initramfs", "refusing to sign"]);
    assert_no_secret(&out, &release.secret_key);

    let out = xtask().arg("sign").arg(&release.dir).output().unwrap();
    assert_fails_naming(&out, &["XTASK_SIGNING_KEY", "--secret-key"]);
}

#[test]
fn secret_key_never_printed() {
    // Every command above checks its own output; these are the remaining shapes of output.
    let release = Release::new();
    let key_text = std::fs::read_to_string(&release.secret_key).unwrap();
    let runs = [
        xtask().arg("--json").arg("keygen").arg("--out").arg(release.root.join("k2")).output().unwrap(),
        xtask()
            .arg("--json")
            .arg("sign")
            .arg("--secret-key")
            .arg(&release.secret_key)
            .arg(&release.dir)
            .output()
            .unwrap(),
        xtask().env("XTASK_SIGNING_KEY", &key_text).arg("sign").arg(&release.dir).output().unwrap(),
        // A damaged key in the variable: the error must not echo it.
        xtask().env("XTASK_SIGNING_KEY", key_text.replace('A', "B")).arg("sign").arg(&release.dir).output().unwrap(),
        xtask().env("XTASK_SIGNING_KEY", format!("{key_text}junk\n")).arg("sign").arg(&release.dir).output().unwrap(),
    ];
    for out in &runs {
        assert_no_secret(out, &release.secret_key);
        assert!(!stderr(out).contains("panicked"), "{}", stderr(out));
    }
    assert_fails_naming(&runs[3], &["XTASK_SIGNING_KEY"]);
    assert_fails_naming(&runs[4], &["XTASK_SIGNING_KEY"]);
}

#[test]
fn verify_works_on_a_copy_elsewhere_without_the_repository() {
    let release = Release::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("release");
    copy_dir(&release.dir, &copy);
    let public_key = elsewhere.path().join("nodeimg.pub");
    std::fs::copy(&release.public_key, &public_key).unwrap();
    std::fs::remove_dir_all(&release.dir).unwrap();
    let out = xtask()
        .current_dir(elsewhere.path())
        .env("XTASK_BOARDS_DIR", "/nonexistent/boards")
        .env("XTASK_SPEC", "/nonexistent/spec.toml")
        .env("XTASK_OUT_DIR", "/nonexistent/out")
        .args(["verify", "--key", "nodeimg.pub", "release"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("verified 9 files"), "{}", stderr(&out));
}

fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// spdx-tools (PyPI), an independent SPDX validator, installed once when missing: the test command
/// must work on a fresh machine, so it installs what it checks with.
fn validate_spdx(path: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import spdx_tools.spdx.clitools.pyspdxtools"])
            .output()
            .expect("python3 is needed to run the SPDX validator");
        if !probe.status.success() {
            let out = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "spdx-tools>=0.8.5,<0.9"])
                .output()
                .unwrap();
            assert!(out.status.success(), "pip install spdx-tools failed:\n{}", stderr(&out));
        }
    });
    let out = std::process::Command::new("python3")
        .args(["-m", "spdx_tools.spdx.clitools.pyspdxtools", "-i"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools rejects {}:\n{}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// The SBOM of a real build: SPDX 2.3 that an independent validator accepts, listing every package the
/// lock pins for the arch (each set: base, kernel, EFI stub, extensions) with the lock's sha256, and
/// machined with the digest of the /init the initramfs really holds.
fn check_sbom(dir: &Path, arch: &str) {
    let sbom_path = dir.join(format!("node-{arch}.spdx.json"));
    validate_spdx(&sbom_path);
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom_path).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let listed = manifest["artifacts"].as_array().unwrap().iter().find(|a| a["file"] == sbom_path_name(arch));
    assert_eq!(
        listed.expect("manifest.json lists the SBOM")["sha256"],
        sha256_hex(&std::fs::read(&sbom_path).unwrap())
    );

    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    assert_eq!(sbom["dataLicense"], "CC0-1.0");
    assert_eq!(sbom["SPDXID"], "SPDXRef-DOCUMENT");
    assert_eq!(sbom["creationInfo"]["creators"], serde_json::json!(["Tool: nodeimg-xtask"]));
    let namespace = sbom["documentNamespace"].as_str().unwrap();
    assert!(namespace.starts_with(&format!("https://spdx.org/spdxdocs/node-0.1.0-{arch}-")), "{namespace}");
    let epoch = manifest["source_date_epoch"].as_i64().unwrap();
    let date = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{epoch}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    assert_eq!(sbom["creationInfo"]["created"], String::from_utf8_lossy(&date.stdout).trim());

    let packages = sbom["packages"].as_array().unwrap();
    let part = |p: &serde_json::Value| -> String {
        let comment = p["annotations"][0]["comment"].as_str().unwrap_or_default();
        comment.strip_prefix("nodeimg:part=").unwrap_or_else(|| panic!("no part annotation: {p}")).to_string()
    };
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(common::repo_root().join("image-spec/node.lock")).unwrap()).unwrap();
    let mut locked = std::collections::BTreeSet::new();
    for package in lock["package"].as_array().unwrap().iter().filter(|p| p["target-arch"].as_str() == Some(arch)) {
        let (set, name) = (package["set"].as_str().unwrap(), package["name"].as_str().unwrap());
        locked.insert((set.to_string(), name.to_string()));
        let found = packages
            .iter()
            .find(|p| p["name"] == name && part(p) == set)
            .unwrap_or_else(|| panic!("SBOM lacks {name} of set {set}"));
        assert_eq!(found["versionInfo"], package["version"].as_str().unwrap(), "{name}");
        assert_eq!(found["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(found["checksums"][0]["checksumValue"], package["sha256"].as_str().unwrap(), "{name}");
        assert_eq!(found["supplier"], "Organization: Debian");
        // A package URL scanners match advisories by: name, version, arch, release, each percent-encoded
        // (an epoch's ':', the '+' of a stable update or of a kernel package's name).
        let purl = found["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        let encode = |text: &str| text.replace(':', "%3A").replace('+', "%2B");
        let (name_part, version) = (encode(name), encode(package["version"].as_str().unwrap()));
        let deb_arch = package["arch"].as_str().unwrap();
        assert_eq!(purl, format!("pkg:deb/debian/{name_part}@{version}?arch={deb_arch}&distro=trixie"), "{name}");
        assert_eq!(found["externalRefs"][0]["referenceType"], "purl");
        // And the suite its version came from (trixie-security for a security fix).
        let suite = package["suite"].as_str().unwrap();
        assert!(found["sourceInfo"].as_str().unwrap().starts_with(&format!("Debian {suite} archive, ")), "{found}");
        assert!(!found.to_string().contains("http://") && !found.to_string().contains("https://"), "a host in {found}");
    }
    let sets: std::collections::BTreeSet<&str> = locked.iter().map(|(set, _)| set.as_str()).collect();
    for set in ["rootfs", "kernel", "efi-stub"] {
        assert!(sets.contains(set), "the lock has no {set} set for {arch}");
    }
    let debs: Vec<&serde_json::Value> =
        packages.iter().filter(|p| !matches!(part(p).as_str(), "image" | "machined")).collect();
    assert_eq!(debs.len(), locked.len(), "the SBOM lists packages the lock does not");
    let kernel = debs.iter().find(|p| part(p) == "kernel" && p["name"].as_str().unwrap().starts_with("linux-image-6"));
    assert!(kernel.unwrap()["licenseDeclared"].as_str().unwrap().contains("GPL-2.0-only"), "{:?}", kernel);

    let machined = packages.iter().find(|p| part(p) == "machined").expect("machined in the SBOM");
    let cargo: toml::Table =
        toml::from_str(&std::fs::read_to_string(common::repo_root().join("machined/Cargo.toml")).unwrap()).unwrap();
    assert_eq!(machined["versionInfo"], cargo["package"]["version"].as_str().unwrap());
    let init = std::process::Command::new("sh")
        .arg("-c")
        .arg("cpio -i --quiet --to-stdout init < \"$0\"")
        .arg(dir.join(format!("node-{arch}.initramfs")))
        .output()
        .unwrap();
    assert!(init.status.success() && !init.stdout.is_empty(), "cpio: {}", stderr(&init));
    assert_eq!(machined["checksums"][0]["checksumValue"], sha256_hex(&init.stdout));

    let image = &packages[0];
    assert_eq!(part(image), "image");
    let relationships = sbom["relationships"].as_array().unwrap();
    assert_eq!(
        relationships[0],
        serde_json::json!({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
            "relatedSpdxElement": image["SPDXID"]})
    );
    let contained: Vec<&serde_json::Value> = relationships
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .map(|r| &r["relatedSpdxElement"])
        .collect();
    assert_eq!(contained.len(), packages.len() - 1);
}

fn sbom_path_name(arch: &str) -> String {
    format!("node-{arch}.spdx.json")
}

/// Names of the files signing writes, present in `dir`.
fn signature_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".minisig") || n.starts_with("SHA256SUMS") || n == "index.json")
        .collect();
    names.sort();
    names
}

/// build-image with a key signs what it publishes (the SBOM too) so that `verify` and Debian's
/// minisign accept it; an unsigned rebuild leaves no stale signature; the key can come from the
/// environment variable.
fn signed_build(arch: &str) {
    common::host_tools();
    let _heavy = common::heavy();
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    let out = xtask().arg("--json").arg("keygen").arg("--out").arg(&keys).output().unwrap();
    assert!(out.status.success(), "keygen: {}", stderr(&out));
    let key_id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["key_id"].clone();
    let (public_key, secret_key) = (keys.join("nodeimg.pub"), keys.join("nodeimg.key"));
    let out_dir = tmp.path().join("out");
    let dir = out_dir.join(format!("qemu-{arch}"));
    let build = |secret_key_arg: Option<&Path>, env_key: Option<String>| -> serde_json::Value {
        let mut cmd = common::xtask();
        cmd.env_remove("XTASK_SIGNING_KEY").args(["--json", "--out-dir"]).arg(&out_dir).args([
            "build-image",
            "--arch",
            arch,
        ]);
        if let Some(path) = secret_key_arg {
            cmd.arg("--secret-key").arg(path);
        }
        if let Some(text) = env_key {
            cmd.env("XTASK_SIGNING_KEY", text);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "build-image: {}", stderr(&out));
        assert_no_secret(&out, &secret_key);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let verify = || xtask().arg("verify").arg("--key").arg(&public_key).arg(&dir).output().unwrap();

    let report = build(Some(&secret_key), None);
    assert_eq!(report["signed_with_key_id"], key_id);
    let out = verify();
    assert!(out.status.success(), "verify: {}", stderr(&out));
    assert!(stderr(&out).contains(&format!("ok  {}", sbom_path_name(arch))), "{}", stderr(&out));
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut signed: Vec<&str> = sums.lines().map(|l| l.split_once("  ").unwrap().1).collect();
    assert!(signed.contains(&sbom_path_name(arch).as_str()) && signed.contains(&"manifest.json"), "{sums}");
    signed.push("SHA256SUMS");
    for file in &signed {
        let out = std::process::Command::new("minisign")
            .arg("-Vm")
            .arg(dir.join(file))
            .arg("-p")
            .arg(&public_key)
            .output()
            .expect("Debian's minisign (installed by host-tools)");
        assert!(out.status.success(), "minisign rejects {file}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("file={file} ")));
    }
    check_sbom(&dir, arch);

    // Unsigned rebuild: the new artifacts must not sit next to the old signatures.
    let report = build(None, None);
    assert!(report.get("signed_with_key_id").is_none(), "{report}");
    assert_eq!(signature_files(&dir), Vec::<String>::new(), "stale signatures after an unsigned rebuild");
    let out = verify();
    assert!(!out.status.success() && stderr(&out).contains("not signed"), "{}", stderr(&out));

    // The key from the environment variable.
    let report = build(None, Some(std::fs::read_to_string(&secret_key).unwrap()));
    assert_eq!(report["signed_with_key_id"], key_id);
    let out = verify();
    assert!(out.status.success(), "verify: {}", stderr(&out));
    // Each signed file's signature, SHA256SUMS and its signature, the index and its signature.
    assert_eq!(signature_files(&dir).len(), signed.len() + 3, "{:?}", signature_files(&dir));
}

#[test]
fn arm64_build_with_a_key_is_signed_and_has_a_complete_sbom() {
    signed_build("arm64");
}

#[test]
fn amd64_build_with_a_key_is_signed_and_has_a_complete_sbom() {
    signed_build("amd64");
}

#[test]
fn build_image_refuses_a_bad_key_before_building() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let key = tmp.path().join("bad.key");
    std::fs::write(&key, "untrusted comment: x\nnot base64!\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = common::xtask()
        .env_remove("XTASK_SIGNING_KEY")
        .arg("--out-dir")
        .arg(&out)
        .args(["build-image", "--arch", "arm64", "--secret-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert_fails_naming(&run, &["bad.key"]);
    assert!(!out.exists(), "a build with a bad key touched {}", out.display());
    let help = xtask().args(["build-image", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--secret-key") && help.contains("XTASK_SIGNING_KEY"), "{help}");
    assert!(help.contains("--check-reproducible"), "{help}");
}

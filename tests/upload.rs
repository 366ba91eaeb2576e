//! `upload` and `verify s3://…` against a real Garage node on loopback (tests/common/s3.rs), on small
//! signed output directories these tests write and sign through the CLI; every result is read back
//! with an independent client, awscli, and checked against the files.

mod common;

use common::s3::{with_env, with_std_env, Garage, BUCKET};
use common::{sha256_hex, write_output_dir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TO: &str = "s3://nodeimg/releases";
const PREFIX: &str = "releases";

/// The artifact kinds build-image writes; the raw disk is bigger than one 8 MiB part.
fn artifacts(arch: &str) -> Vec<(String, usize)> {
    vec![
        (format!("node-{arch}.raw"), 20 << 20),
        (format!("node-{arch}.qcow2"), 3 << 20),
        (format!("node-{arch}.efi"), 2 << 20),
        (format!("node-{arch}.initramfs"), (1 << 20) + 17),
        (format!("node-{arch}.rootfs.sqsh"), 6 << 20),
        (format!("node-{arch}.spdx.json"), 0),
    ]
}

struct Fixture {
    garage: Garage,
    tmp: tempfile::TempDir,
    public_key: PathBuf,
    secret_key: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        common::host_tools();
        let garage = Garage::start();
        let tmp = tempfile::tempdir().unwrap();
        let keys = tmp.path().join("keys");
        common::succeeds(common::xtask().arg("keygen").arg("--out").arg(&keys));
        Fixture { garage, tmp, public_key: keys.join("nodeimg.pub"), secret_key: keys.join("nodeimg.key") }
    }

    /// A signed output directory out/<name>/ with `files` (name, size).
    fn signed(&self, name: &str, arch: &str, version: &str, files: &[(String, usize)], seed: u64) -> PathBuf {
        let dir = self.tmp.path().join("out").join(name);
        let files: Vec<(&str, usize)> = files.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        write_output_dir(&dir, arch, version, &files, seed);
        common::succeeds(common::xtask().arg("sign").arg("--secret-key").arg(&self.secret_key).arg(&dir));
        dir
    }

    /// `--json upload` of `dir` to TO with the node's credentials, endpoint and region.
    fn upload(&self, dir: &Path, extra: &[&str]) -> assert_cmd::Command {
        let mut cmd = self.garage.xtask();
        cmd.args(["--json", "upload", "--to", TO, "--key"]).arg(&self.public_key);
        cmd.args(["--endpoint", &self.garage.endpoint, "--region", "garage"]).args(extra).arg(dir);
        cmd
    }

    fn verify_remote(&self, release: &str) -> common::Outcome {
        let mut cmd = self.garage.xtask();
        cmd.args(["verify", "--key"]).arg(&self.public_key);
        cmd.args(["--endpoint", &self.garage.endpoint, "--region", "garage", &format!("{TO}/{release}")]);
        common::run(&mut cmd)
    }

    fn verify_local(&self, dir: &Path) -> common::Outcome {
        common::run(common::xtask().arg("verify").arg("--key").arg(&self.public_key).arg(dir))
    }

    fn pointer(&self) -> Value {
        let text = self.garage.aws_ok(&["s3", "cp", &format!("s3://{BUCKET}/{PREFIX}/node/channels/stable.json"), "-"]);
        serde_json::from_str(&text).unwrap()
    }
}

/// Every file of a signed directory with its size.
fn files_of(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    files.sort();
    files
}

fn report(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn object<'a>(report: &'a Value, file: &str) -> &'a Value {
    report["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["url"].as_str().unwrap().ends_with(&format!("/{file}")))
        .unwrap()
}

#[test]
fn both_arches_published_read_back_with_awscli_and_verified_where_they_lie() {
    let fx = Fixture::new();
    let amd64 = fx.signed("qemu-amd64", "amd64", "1.0.0", &artifacts("amd64"), 1);
    let arm64 = fx.signed("qemu-arm64", "arm64", "1.0.0", &artifacts("arm64"), 2);

    // amd64 with the credentials in the environment.
    let sent = report(&common::succeeds(&mut fx.upload(&amd64, &["--no-conditional"])));
    let files = files_of(&amd64);
    assert_eq!(sent["objects_sent"], files.len(), "{sent}");
    assert_eq!(sent["objects_skipped"], 0);
    assert_eq!(sent["bytes_sent"], files.iter().map(|f| f.1).sum::<u64>());
    let raw = object(&sent, "node-amd64.raw");
    assert_eq!((raw["action"].as_str(), raw["parts_sent"].as_u64()), (Some("sent"), Some(3)), "{raw}");
    assert_eq!(sent["channel"]["entry"]["version"], "1.0.0");
    // The publishing order: artifacts, SHA256SUMS and signatures, manifest, the index last.
    let order: Vec<&str> = sent["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["url"].as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    let at = |name: &str| order.iter().position(|n| *n == name).unwrap();
    assert!(at("node-amd64.spdx.json") < at("SHA256SUMS") && at("SHA256SUMS") < at("manifest.json"), "{order:?}");
    assert_eq!(&order[order.len() - 2..], ["index.json.minisig", "index.json"]);

    // arm64 with a shared profile naming the key, the region and the endpoint (no flags).
    let profiles = fx.tmp.path().join("aws");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("credentials"),
        format!("[release]\naws_access_key_id = {}\naws_secret_access_key = {}\n", fx.garage.key_id, fx.garage.secret),
    )
    .unwrap();
    std::fs::write(
        profiles.join("config"),
        format!("[profile release]\nregion = garage\nendpoint_url = {}\n", fx.garage.endpoint),
    )
    .unwrap();
    let mut cmd = common::xtask();
    with_env(&mut cmd, &common::s3::isolation());
    cmd.env("AWS_PROFILE", "release")
        .env("AWS_SHARED_CREDENTIALS_FILE", profiles.join("credentials"))
        .env("AWS_CONFIG_FILE", profiles.join("config"));
    cmd.args(["--json", "upload", "--no-conditional", "--to", TO, "--key"]).arg(&fx.public_key).arg(&arm64);
    let out = common::run(&mut cmd);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stderr.contains("credentials from profile release in "), "{}", out.stderr);
    assert!(!out.stderr.contains(&fx.garage.secret) && !out.stdout.contains(&fx.garage.secret));

    // What awscli sees: exactly the two releases and the pointer, no probe left behind.
    let mut expected: Vec<String> = ["amd64", "arm64"]
        .iter()
        .flat_map(|arch| {
            let dir = if *arch == "amd64" { &amd64 } else { &arm64 };
            files_of(dir).into_iter().map(move |(name, _)| format!("{PREFIX}/node/1.0.0/{arch}/{name}"))
        })
        .collect();
    expected.push(format!("{PREFIX}/node/channels/stable.json"));
    expected.sort();
    assert_eq!(fx.garage.keys(), expected);
    let head = fx.garage.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        BUCKET,
        "--key",
        &format!("{PREFIX}/node/1.0.0/amd64/node-amd64.raw"),
    ]);
    let head: Value = serde_json::from_str(&head).unwrap();
    assert_eq!(head["Metadata"]["sha256"], sha256_hex(&std::fs::read(amd64.join("node-amd64.raw")).unwrap()), "{head}");

    // Downloaded with awscli, each verifies; and each verifies where it lies.
    for arch in ["amd64", "arm64"] {
        let download = fx.tmp.path().join("download").join(arch);
        fx.garage.download(&format!("{PREFIX}/node/1.0.0/{arch}/"), &download);
        let local = fx.verify_local(&download);
        assert!(local.success && local.stderr.contains("verified 9 files"), "{}", local.stderr);
        let before = fx.garage.log().len();
        let remote = fx.verify_remote(&format!("node/1.0.0/{arch}/"));
        assert!(remote.success, "{}", remote.stderr);
        // Streamed in place: each object read exactly once.
        let mut gets = Garage::requests(&fx.garage.log()[before..], "GET");
        gets.retain(|g| !g.contains('?'));
        gets.sort();
        let mut expected: Vec<String> = files_of(&download)
            .into_iter()
            .map(|(name, _)| format!("/{BUCKET}/{PREFIX}/node/1.0.0/{arch}/{name}"))
            .collect();
        expected.sort();
        assert_eq!(gets, expected, "verify in place did not read each object exactly once");
        assert!(
            remote.stderr.contains(&format!("verified 9 files (32.0 MiB) in {TO}/node/1.0.0/{arch}/")),
            "{}",
            remote.stderr
        );
        let index = std::fs::read(download.join("index.json")).unwrap();
        let pointer = fx.pointer();
        assert_eq!(pointer["arches"][arch]["version"], "1.0.0", "{pointer}");
        assert_eq!(pointer["arches"][arch]["index"], format!("node/1.0.0/{arch}/index.json"));
        assert_eq!(pointer["arches"][arch]["index_sha256"], sha256_hex(&index));
    }

    // A second upload sends nothing: no byte, and no write request reaches the server.
    let before = fx.garage.log().len();
    let again = report(&common::succeeds(&mut fx.upload(&amd64, &["--no-conditional"])));
    assert_eq!((again["objects_sent"].as_u64(), again["bytes_sent"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(again["objects_skipped"], files.len());
    assert_eq!(again["channel"]["unchanged"], true);
    let mut human = fx.garage.xtask();
    human.args(["upload", "--no-conditional", "--to", TO, "--key"]).arg(&fx.public_key);
    human.args(["--endpoint", &fx.garage.endpoint, "--region", "garage"]).arg(&amd64);
    let human = common::succeeds(&mut human);
    assert!(
        human.contains("0 objects sent (0.0 MB") && human.contains(&format!("{} already there", files.len())),
        "{human}"
    );
    let writes = Garage::writes(&fx.garage.log()[before..]);
    assert!(writes.is_empty(), "a second upload wrote {writes:?}");

    // --dry-run lists a new version's objects and sends none.
    let next = fx.signed("qemu-amd64-next", "amd64", "1.0.1", &artifacts("amd64"), 3);
    let dry = report(&common::succeeds(&mut fx.upload(&next, &["--dry-run"])));
    assert!(dry["objects"].as_array().unwrap().iter().all(|o| o["action"] == "would-send"), "{dry}");
    assert_eq!(dry["bytes_sent"], 0);
    assert!(!fx.garage.keys().iter().any(|k| k.contains("/1.0.1/")));
    assert!(!fx.tmp.path().join("out/qemu-amd64-next.upload-journal").exists());

    // In place, nothing extra may be there and every object must be what the index says.
    let stray = fx.tmp.path().join("stray.bin");
    std::fs::write(&stray, b"not part of it").unwrap();
    let stray_key = format!("s3://{BUCKET}/{PREFIX}/node/1.0.0/arm64/stray.bin");
    fx.garage.aws_ok(&["s3", "cp", "--only-show-errors", &stray.display().to_string(), &stray_key]);
    let efi = fx.tmp.path().join("efi");
    std::fs::write(&efi, common::pseudo_random(2 << 20, 99)).unwrap();
    let efi_key = format!("s3://{BUCKET}/{PREFIX}/node/1.0.0/arm64/node-arm64.efi");
    fx.garage.aws_ok(&["s3", "cp", "--only-show-errors", &efi.display().to_string(), &efi_key]);
    let tampered = fx.verify_remote("node/1.0.0/arm64/");
    assert!(!tampered.success, "{}", tampered.stderr);
    assert!(
        tampered.stderr.contains("stray.bin: in s3://nodeimg/releases/node/1.0.0/arm64/ but not part of the release"),
        "{}",
        tampered.stderr
    );
    assert!(tampered.stderr.contains("node-arm64.efi: content does not match SHA256SUMS"), "{}", tampered.stderr);
}

/// The journal of `dir`'s raw disk, once it lists at least `parts` parts.
fn journal_with(dir: &Path, parts: usize) -> Option<Value> {
    let journals = dir.with_file_name(format!("{}.upload-journal", dir.file_name().unwrap().to_string_lossy()));
    for entry in std::fs::read_dir(journals).ok()?.flatten() {
        let journal: Value = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
        if journal["parts"].as_object().is_some_and(|p| p.len() >= parts) {
            return Some(journal);
        }
    }
    None
}

/// Starts an upload as a child process the test can watch and outlive.
fn spawn_upload(fx: &Fixture, dir: &Path, extra: &[&str]) -> std::process::Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
    with_std_env(&mut cmd, &fx.garage.credentials());
    cmd.args(["--json", "upload", "--no-conditional", "--part-size", "5", "--jobs", "2", "--to", TO, "--key"]);
    cmd.arg(&fx.public_key).args(["--endpoint", &fx.garage.endpoint, "--region", "garage"]).args(extra).arg(dir);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
}

/// Kills Garage once the upload of `dir` has journaled `parts` parts.
fn kill_after_parts(fx: &mut Fixture, dir: &Path, parts: usize, upload: &mut std::process::Child) {
    let start = Instant::now();
    while journal_with(dir, parts).is_none() {
        assert!(upload.try_wait().unwrap().is_none(), "the upload ended before Garage was killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no journal with {parts} parts");
        std::thread::sleep(Duration::from_millis(5));
    }
    fx.garage.kill();
}

#[test]
fn garage_killed_mid_upload_the_next_run_resumes_without_resending_parts() {
    let mut fx = Fixture::new();
    let files = vec![("node-amd64.raw".to_string(), 160usize << 20), ("node-amd64.efi".to_string(), 1 << 20)];
    let dir = fx.signed("qemu-amd64", "amd64", "2.0.0", &files, 7);
    let raw_key = format!("{PREFIX}/node/2.0.0/amd64/node-amd64.raw");

    // Killed after four parts; with one retry per request, the run fails while the server is down.
    let mut upload = spawn_upload(&fx, &dir, &["--retries", "1", "--timeout", "5"]);
    kill_after_parts(&mut fx, &dir, 4, &mut upload);
    let failed = upload.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the next run resumes from") && !stderr.contains("panicked"), "{stderr}");
    let journal = journal_with(&dir, 4).expect("the journal survives the failed run");
    let journaled: Vec<u64> = journal["parts"].as_object().unwrap().keys().map(|k| k.parse().unwrap()).collect();

    // Restarted: the server holds the journaled parts (awscli's ListParts), and nothing was published.
    fx.garage.restart();
    let upload_id = journal["upload_id"].as_str().unwrap();
    let listed: Value = serde_json::from_str(&fx.garage.aws_ok(&[
        "s3api",
        "list-parts",
        "--bucket",
        BUCKET,
        "--key",
        &raw_key,
        "--upload-id",
        upload_id,
    ]))
    .unwrap();
    for part in listed["Parts"].as_array().unwrap() {
        let number = part["PartNumber"].as_u64().unwrap().to_string();
        if let Some(etag) = journal["parts"].get(&number) {
            assert_eq!(part["ETag"], *etag, "part {number}");
        }
    }
    assert!(listed["Parts"].as_array().unwrap().len() >= journaled.len(), "{listed}");
    let keys = fx.garage.keys();
    assert!(
        !keys.iter().any(|k| k.ends_with("index.json") || k.contains("/channels/")),
        "published before completing: {keys:?}"
    );

    // The next run sends only the parts the journal lacks.
    let before = fx.garage.log().len();
    let resumed = report(&common::succeeds(&mut fx.upload(&dir, &["--no-conditional", "--part-size", "5"])));
    let raw = object(&resumed, "node-amd64.raw");
    assert_eq!(raw["parts_resumed"].as_u64(), Some(journaled.len() as u64), "{raw}");
    assert_eq!(raw["parts_sent"].as_u64(), Some(32 - journaled.len() as u64), "{raw}");
    assert_eq!(raw["bytes_sent"].as_u64(), Some((160 << 20) - (journaled.len() as u64) * (5 << 20)));
    let part_puts: Vec<u64> = Garage::writes(&fx.garage.log()[before..])
        .iter()
        .filter(|w| w.contains("/node-amd64.raw?partNumber="))
        .map(|w| w.split("partNumber=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap())
        .collect();
    assert!(
        !part_puts.iter().any(|n| journaled.contains(n)),
        "resent journaled parts: {part_puts:?} (journaled {journaled:?})"
    );
    assert!(part_puts.len() >= 32 - journaled.len(), "{part_puts:?}");
    assert!(journal_with(&dir, 0).is_none(), "the journal is removed once the object is complete");

    // The object is the file, byte for byte (awscli's download), and the release verifies in place.
    let download = fx.tmp.path().join("raw");
    fx.garage.aws_ok(&[
        "s3",
        "cp",
        "--only-show-errors",
        &format!("s3://{BUCKET}/{raw_key}"),
        &download.display().to_string(),
    ]);
    assert_eq!(
        sha256_hex(&std::fs::read(&download).unwrap()),
        sha256_hex(&std::fs::read(dir.join("node-amd64.raw")).unwrap())
    );
    assert!(fx.verify_remote("node/2.0.0/amd64/").success);
    let again = report(&common::succeeds(&mut fx.upload(&dir, &["--no-conditional"])));
    assert_eq!(again["bytes_sent"], 0, "a re-run sends 0 bytes");

    // A server restart within the retries is ridden out in one run.
    let next = fx.signed("qemu-amd64-next", "amd64", "2.0.1", &files, 8);
    let mut upload = spawn_upload(&fx, &next, &[]);
    kill_after_parts(&mut fx, &next, 3, &mut upload);
    std::thread::sleep(Duration::from_millis(500));
    fx.garage.restart();
    let out = upload.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rode = report(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(object(&rode, "node-amd64.raw")["parts_resumed"], 0);
    assert!(fx.verify_remote("node/2.0.1/amd64/").success);
}

/// Runs `cmd`, which must fail with exit 1 naming every one of `names`, never printing `secrets`.
fn fails_clearly(cmd: &mut assert_cmd::Command, names: &[&str], secrets: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in names {
        assert!(stderr.contains(name), "the message does not say {name:?}:\n{stderr}");
    }
    for secret in secrets {
        assert!(!stderr.contains(secret) && !stdout.contains(secret), "a secret was printed:\n{stderr}");
    }
    stderr.into_owned()
}

#[test]
fn bad_credentials_bucket_endpoint_or_directory_fail_clearly_and_publish_nothing() {
    let fx = Fixture::new();
    let dir = fx.signed("qemu-arm64", "arm64", "3.0.0", &artifacts("arm64"), 4);
    let secret = fx.garage.secret.clone();
    let published = || fx.garage.keys().iter().any(|k| k.ends_with("index.json") || k.contains("/channels/"));

    // Wrong secret: the store refuses it; neither secret appears in the message.
    // The last character changed to one it is not (a fixed "0" was the secret itself 1 time in 16).
    let last = if secret.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &secret[..secret.len() - 1]);
    assert_ne!(wrong, secret);
    fails_clearly(
        fx.upload(&dir, &["--no-conditional", "--retries", "0"]).env("AWS_SECRET_ACCESS_KEY", &wrong),
        &["cannot list s3://nodeimg/releases/node/3.0.0/arm64", "refused the credentials"],
        &[&secret, &wrong],
    );
    // No credentials at all: said before any request (never the cloud metadata address).
    fails_clearly(
        fx.upload(&dir, &["--no-conditional"]).env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY"),
        &["no credentials", "AWS_ACCESS_KEY_ID"],
        &[&secret],
    );
    // A bucket that does not exist.
    let mut cmd = fx.garage.xtask();
    cmd.args(["upload", "--no-conditional", "--to", "s3://no-such-bucket/x", "--key"]).arg(&fx.public_key);
    cmd.args(["--endpoint", &fx.garage.endpoint, "--region", "garage"]).arg(&dir);
    fails_clearly(&mut cmd, &["bucket no-such-bucket does not exist"], &[&secret]);
    // An endpoint that does not answer (a port nobody listens on).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = fx.garage.xtask();
    cmd.args(["upload", "--no-conditional", "--retries", "1", "--to", TO, "--key"]).arg(&fx.public_key);
    cmd.args(["--endpoint", &format!("http://127.0.0.1:{port}"), "--region", "garage"]).arg(&dir);
    fails_clearly(&mut cmd, &[&format!("127.0.0.1:{port}"), "does not answer"], &[&secret]);
    // A server that accepts connections and never answers: the per-request timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = fx.garage.xtask();
    cmd.args(["upload", "--no-conditional", "--retries", "0", "--timeout", "1", "--to", TO, "--key"])
        .arg(&fx.public_key);
    cmd.args(["--endpoint", &format!("http://{}", silent.local_addr().unwrap()), "--region", "garage"]).arg(&dir);
    fails_clearly(&mut cmd, &["cannot list", "timed out"], &[&secret]);
    drop(silent);
    // Garage ignores conditional puts: without --no-conditional the upload is refused before it sends.
    let before = fx.garage.keys();
    fails_clearly(&mut fx.upload(&dir, &[]), &["ignores conditional puts", "--no-conditional"], &[&secret]);
    assert_eq!(fx.garage.keys(), before, "the refused upload left objects behind");
    // A tampered directory is refused before anything is sent.
    let bytes = std::fs::read(dir.join("node-arm64.qcow2")).unwrap();
    let mut flipped = bytes.clone();
    flipped[1000] ^= 1;
    std::fs::write(dir.join("node-arm64.qcow2"), &flipped).unwrap();
    fails_clearly(
        &mut fx.upload(&dir, &["--no-conditional"]),
        &["refusing to publish", "node-arm64.qcow2", "does not match"],
        &[&secret],
    );
    std::fs::write(dir.join("node-arm64.qcow2"), &bytes).unwrap();
    // An unsigned directory, and one signed with another key: refused, nothing sent.
    let unsigned = fx.tmp.path().join("out").join("qemu-arm64-unsigned");
    let files: Vec<(String, usize)> = artifacts("arm64");
    let files: Vec<(&str, usize)> = files.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    write_output_dir(&unsigned, "arm64", "3.0.0", &files, 6);
    let refused = fails_clearly(
        &mut fx.upload(&unsigned, &["--no-conditional"]),
        &["refusing to publish", "SHA256SUMS", "not signed"],
        &[&secret],
    );
    assert!(refused.contains(&unsigned.display().to_string()), "{refused}");
    let other_keys = fx.tmp.path().join("other-keys");
    common::succeeds(common::xtask().arg("keygen").arg("--out").arg(&other_keys));
    let mut other = fx.garage.xtask();
    other.args(["upload", "--no-conditional", "--to", TO, "--key"]).arg(other_keys.join("nodeimg.pub"));
    other.args(["--endpoint", &fx.garage.endpoint, "--region", "garage"]).arg(&dir);
    fails_clearly(&mut other, &["refusing to publish", "does not verify against key id"], &[&secret]);
    assert_eq!(fx.garage.keys(), before, "a refused upload left objects behind");
    // Another build under a published version is refused (releases are immutable).
    common::succeeds(&mut fx.upload(&dir, &["--no-conditional"]));
    let rebuilt = fx.signed("qemu-arm64-rebuilt", "arm64", "3.0.0", &artifacts("arm64"), 5);
    fails_clearly(
        &mut fx.upload(&rebuilt, &["--no-conditional"]),
        &["already holds another build", "bump the version"],
        &[&secret],
    );
    assert!(fx.verify_remote("node/3.0.0/arm64/").success, "the published release was touched");
    fx.garage.aws_ok(&["s3", "rm", "--recursive", "--only-show-errors", &format!("s3://{BUCKET}/{PREFIX}/")]);
    assert!(!published());
}

#[test]
fn two_concurrent_releases_to_one_channel_both_end_up_in_the_pointer() {
    let fx = Fixture::new();
    let small = |arch: &str| vec![(format!("node-{arch}.efi"), 1 << 20), (format!("node-{arch}.spdx.json"), 0)];
    let dirs: Vec<(PathBuf, &str)> = ["amd64", "arm64"]
        .iter()
        .enumerate()
        .map(|(i, arch)| (fx.signed(&format!("qemu-{arch}"), arch, "4.0.0", &small(arch), 10 + i as u64), *arch))
        .collect();
    // Each holds the pointer for 600 ms between reading and writing it, so the two writes race for
    // certain: the later one overwrites the earlier, whose read-back must notice and write again.
    let children: Vec<std::process::Child> = dirs
        .iter()
        .map(|(dir, _)| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
            with_std_env(&mut cmd, &fx.garage.credentials());
            cmd.env("XTASK_TEST_POINTER_RACE_MS", "600");
            cmd.args(["--json", "upload", "--no-conditional", "--to", TO, "--key"]).arg(&fx.public_key);
            cmd.args(["--endpoint", &fx.garage.endpoint, "--region", "garage"]).arg(dir);
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let mut attempts = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Either outcome the guarantee allows: in the pointer, or a clear failure.
        if out.status.success() {
            attempts.push(report(&String::from_utf8_lossy(&out.stdout))["channel"]["attempts"].as_u64().unwrap());
        } else {
            assert!(stderr.contains("cannot update") && stderr.contains("stable.json"), "{stderr}");
        }
    }
    let pointer = fx.pointer();
    let arches = pointer["arches"].as_object().unwrap();
    assert_eq!(arches.len(), attempts.len(), "a successful release is missing from the pointer: {pointer}");
    assert_eq!(attempts.len(), 2, "both releases should succeed on an idle server: {pointer}");
    assert!(attempts.iter().any(|&a| a > 1), "the writes did not race (attempts {attempts:?})");
}

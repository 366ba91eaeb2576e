//! The stage cache, through the CLI: a build from the cache is byte-identical to one that runs every
//! stage (both arches); a damaged entry is found, removed and rebuilt; a second clone with empty
//! caches builds from a loopback Garage holding the first clone's stages without downloading a
//! package; a cache directory that is read-only or full, and a remote that does not answer, are
//! warnings, never a failed build.

mod common;

use common::*;
use std::path::{Path, PathBuf};

/// One build's `--json` report.
fn build(cmd: &mut assert_cmd::Command, arch: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let o = run(cmd.args(["--json", "build-image", "--arch", arch]).args(extra));
    assert!(o.success, "build-image failed:\nstdout:\n{}\nstderr:\n{}", o.stdout, o.stderr);
    let report = serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("no JSON report ({e}):\n{}", o.stdout));
    (report, o.stderr)
}

/// Each stage's source in a report: stage name → "local", "remote" or "built".
fn sources(report: &serde_json::Value) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap().to_string(), s["source"].as_str().unwrap().to_string()))
        .collect()
}

fn all_from(report: &serde_json::Value, source: &str) -> bool {
    let stages = sources(report);
    stages.len() >= 10 && stages.iter().all(|(_, s)| s == source)
}

fn compare(first: &Path, second: &Path) {
    let o = run(xtask().arg("compare-builds").arg(first).arg(second));
    assert!(o.success, "the builds differ:\n{}\n{}", o.stdout, o.stderr);
}

fn cached_and_uncached_builds_are_identical(arch: &str) {
    host_tools();
    let _heavy = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let stages = tmp.path().join("stages");
    let with_cache = || {
        let mut cmd = xtask();
        cmd.env("XTASK_OUT_DIR", tmp.path().join("cached")).env("XTASK_STAGE_CACHE_DIR", &stages);
        cmd
    };
    let board_dir = |out: &str| tmp.path().join(out).join(format!("qemu-{arch}"));

    let (first, _) = build(&mut with_cache(), arch, &[]);
    assert!(all_from(&first, "built"), "an empty stage cache: every stage runs: {:?}", sources(&first));
    let (second, _) = build(&mut with_cache(), arch, &[]);
    assert!(all_from(&second, "local"), "nothing changed: every stage from the cache: {:?}", sources(&second));
    assert_eq!(second["downloaded"], 0);
    assert_eq!(second["cached"], 0, "no package is even looked at when every stage is cached");

    let (uncached, _) = build(xtask().env("XTASK_OUT_DIR", tmp.path().join("uncached")), arch, &["--no-stage-cache"]);
    assert!(all_from(&uncached, "built"));
    compare(&board_dir("cached"), &board_dir("uncached"));

    // A damaged entry (one byte of the root squashfs flipped where the cache keeps it) is found by
    // its digest, removed, and the stage built again; the result is still identical.
    let entry = std::fs::read_dir(stages.join(format!("rootfs-{arch}")))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("entry.json").is_file())
        .expect("a rootfs entry");
    let sqsh = entry.join("rootfs.sqsh");
    let mut bytes = std::fs::read(&sqsh).unwrap();
    bytes[4096] ^= 1;
    std::fs::write(&sqsh, &bytes).unwrap();
    let (third, stderr) = build(&mut with_cache(), arch, &[]);
    assert!(stderr.contains("ignored and removed") && stderr.contains("rootfs.sqsh"), "{stderr}");
    let rebuilt: Vec<String> =
        sources(&third).into_iter().filter(|(_, s)| s == "built").map(|(stage, _)| stage).collect();
    assert_eq!(rebuilt, [format!("rootfs-{arch}")], "only the damaged stage is built: {:?}", sources(&third));
    compare(&board_dir("cached"), &board_dir("uncached"));
}

#[test]
fn amd64_builds_from_the_stage_cache_equal_builds_without_it() {
    cached_and_uncached_builds_are_identical("amd64");
}

#[test]
fn arm64_builds_from_the_stage_cache_equal_builds_without_it() {
    cached_and_uncached_builds_are_identical("arm64");
}

/// The inputs of a build as a second clone has them: the spec, boards, overlays and the machined
/// workspace copied under `dir`.
fn second_clone(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let root = repo_root();
    for sub in ["image-spec", "boards", "overlays", "machined/src"] {
        copy_tree(&root.join(sub), &dir.join(sub));
    }
    for file in ["Cargo.toml", "Cargo.lock", "xtask/Cargo.toml", "machined/Cargo.toml"] {
        std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
        std::fs::copy(root.join(file), dir.join(file)).unwrap();
    }
    vec![
        ("XTASK_SPEC", dir.join("image-spec/node.toml")),
        ("XTASK_BOARDS_DIR", dir.join("boards")),
        ("XTASK_OVERLAYS_DIR", dir.join("overlays")),
        ("XTASK_MACHINED_DIR", dir.join("machined")),
        ("XTASK_CACHE_DIR", dir.join("cache")),
        ("XTASK_OUT_DIR", dir.join("out")),
    ]
}

#[test]
fn a_second_clone_builds_from_the_first_clones_remote_stages_without_downloading_a_package() {
    host_tools();
    let _heavy = heavy();
    let garage = s3::Garage::start();
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/stage-cache", s3::BUCKET);
    let remote = |cmd: &mut assert_cmd::Command| {
        cmd.env("XTASK_STAGE_CACHE", &url).env("AWS_ENDPOINT_URL", &garage.endpoint).env("AWS_REGION", "garage");
    };

    // The first clone: its own empty local stage cache; every stage stored remotely too.
    let mut first = garage.xtask();
    remote(&mut first);
    first.env("XTASK_OUT_DIR", tmp.path().join("first")).env("XTASK_STAGE_CACHE_DIR", tmp.path().join("first-stages"));
    let (report, _) = build(&mut first, "amd64", &[]);
    assert!(all_from(&report, "built"), "{:?}", sources(&report));
    let entries: Vec<String> = garage.keys().into_iter().filter(|k| k.ends_with("/entry.json")).collect();
    assert_eq!(entries.len(), sources(&report).len(), "one remote entry per stage: {entries:?}");

    // The second: other paths, nothing cached, no mirror it could download from.
    let clone = tmp.path().join("second");
    let mut second = garage.xtask();
    remote(&mut second);
    for (var, path) in second_clone(&clone) {
        second.env(var, path);
    }
    second.env("XTASK_DEBIAN_MIRROR", "http://127.0.0.1:9/unreachable");
    let log_before = garage.log().len();
    let (report, _) = build(&mut second, "amd64", &[]);
    assert!(all_from(&report, "remote"), "{:?}", sources(&report));
    assert_eq!(report["downloaded"], 0);
    assert!(
        report["stage_cache_remote_bytes"].as_u64().unwrap() > 100_000_000,
        "{}",
        report["stage_cache_remote_bytes"]
    );
    assert!(!clone.join("cache/sha256").exists(), "the second clone fetched packages");
    let writes = s3::Garage::writes(&garage.log()[log_before..]);
    assert!(writes.is_empty(), "a build served wholly by the remote writes nothing there: {writes:?}");
    compare(&tmp.path().join("first/qemu-amd64"), &clone.join("out/qemu-amd64"));

    // Read-only: a changed input is built but not stored remotely.
    let service = clone.join("overlays/extensions/iscsi-tools/rootfs/usr/local/etc/containers/iscsid.yaml");
    let yaml = std::fs::read_to_string(&service).unwrap();
    std::fs::write(&service, format!("{yaml}# changed\n")).unwrap();
    let mut read_only = garage.xtask();
    remote(&mut read_only);
    read_only
        .env("XTASK_OVERLAYS_DIR", clone.join("overlays"))
        .env("XTASK_STAGE_CACHE_DIR", tmp.path().join("third-stages"))
        .env("XTASK_OUT_DIR", tmp.path().join("third"));
    let log_before = garage.log().len();
    let (report, _) = build(&mut read_only, "amd64", &["--stage-cache-read-only"]);
    let built: Vec<String> = sources(&report).into_iter().filter(|(_, s)| s == "built").map(|(st, _)| st).collect();
    assert_eq!(built, ["ext-iscsi-tools-amd64", "initramfs-amd64", "uki-amd64", "disk-amd64"]);
    let writes = s3::Garage::writes(&garage.log()[log_before..]);
    assert!(writes.is_empty(), "--stage-cache-read-only wrote to the remote: {writes:?}");
    assert!(!tmp.path().join("third-stages").exists(), "--stage-cache-read-only stored locally");
}

/// A tmpfs mounted at `dir` with `options`, unmounted when dropped (the test runs as root, as CI does).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -t tmpfs -o {options} {} (the test needs root)", dir.display());
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_stage_cache_that_is_read_only_or_full_or_does_not_answer_only_warns() {
    host_tools();
    let _heavy = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let (reference, _) =
        build(xtask().env("XTASK_OUT_DIR", tmp.path().join("reference")), "amd64", &["--no-stage-cache"]);
    let reference_dir = PathBuf::from(reference["out_dir"].as_str().unwrap());

    for (name, options) in [("read-only", "ro,size=16m"), ("full", "size=2m")] {
        let dir = tmp.path().join(name);
        let _mount = Mount::tmpfs(&dir, options);
        let out = tmp.path().join(format!("out-{name}"));
        let (report, stderr) =
            build(xtask().env("XTASK_OUT_DIR", &out).env("XTASK_STAGE_CACHE_DIR", &dir), "amd64", &[]);
        assert!(stderr.contains("stage cache: cannot store in"), "{name}: {stderr}");
        assert_eq!(stderr.matches("cannot store in").count(), 1, "{name}: said once: {stderr}");
        assert!(all_from(&report, "built"));
        compare(&reference_dir, &out.join("qemu-amd64"));
    }

    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let out = tmp.path().join("out-unreachable");
    let mut cmd = xtask();
    for (var, value) in s3::isolation() {
        match value {
            Some(value) => cmd.env(var, value),
            None => cmd.env_remove(var),
        };
    }
    cmd.env("XTASK_OUT_DIR", &out)
        .env("XTASK_STAGE_CACHE_DIR", tmp.path().join("unreachable-stages"))
        .env("XTASK_STAGE_CACHE", format!("s3://{}/stages", s3::BUCKET))
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "GK0000")
        .env("AWS_SECRET_ACCESS_KEY", "0000");
    let (_, stderr) = build(&mut cmd, "amd64", &[]);
    assert!(stderr.contains("the remote cache") && stderr.contains("building without it"), "{stderr}");
    compare(&reference_dir, &out.join("qemu-amd64"));
}

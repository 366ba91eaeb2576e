//! `cargo xtask lock` and `cargo xtask fetch` against the real Debian archive (the mirror comes from
//! the host's apt sources). Each test works on a temporary copy of a tiny spec and tiny boards, so
//! what is fetched is a few hundred KB, never a kernel.

use assert_cmd::Command;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A spec, its boards and a download cache in one temporary directory.
struct Workspace {
    dir: tempfile::TempDir,
}

const BOARD: &str = r#"
kernel-package = "linux-base"
console = "ttyS0"
boot-modules = []

[firmware]
package = "ovmf"
code = "/usr/share/OVMF/OVMF_CODE_4M.fd"
vars = "/usr/share/OVMF/OVMF_VARS_4M.fd"

[qemu]
binary = "qemu-system-x86_64"
package = "qemu-system-x86"
machine = "q35"
memory-mib = 512
smp = 1
boot-timeout-secs = 60

[disk]
size-mib = 64
formats = ["raw"]
"#;

impl Workspace {
    /// `packages` become the spec's packages; both test boards use the tiny `linux-base` as their
    /// "kernel" (the kernel set only follows linux-image-*, so nothing else comes with it).
    fn new(packages: &[&str]) -> Workspace {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("boards")).expect("boards directory");
        for arch in ["amd64", "arm64"] {
            let board = format!("arch = \"{arch}\"\ndefault = true\n{BOARD}");
            std::fs::write(dir.path().join(format!("boards/test-{arch}.toml")), board).expect("board file");
        }
        let workspace = Workspace { dir };
        workspace.write_spec(packages);
        workspace
    }

    fn write_spec(&self, packages: &[&str]) {
        let spec = format!(
            "name = \"node\"\nversion = \"0.1.0\"\nsuite = \"bookworm\"\ncomponents = [\"main\"]\npackages = {packages:?}\n\
             exclude-packages = [\"debconf\", \"debconf-2.0\", \"cdebconf\"]\n"
        );
        std::fs::write(self.spec(), spec).expect("spec file");
    }

    fn spec(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.path().join("node.lock")
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `cargo xtask` with this workspace's spec, boards and cache, and no mirror override.
    fn xtask(&self, cache: &Path) -> Command {
        let mut command = Command::cargo_bin("xtask").expect("xtask binary");
        command
            .env_remove("XTASK_DEBIAN_MIRROR")
            .env_remove("XTASK_SPEC")
            .env_remove("XTASK_BOARDS_DIR")
            .arg("--spec")
            .arg(self.spec())
            .arg("--boards-dir")
            .arg(self.dir.path().join("boards"))
            .arg("--cache-dir")
            .arg(cache);
        command
    }

    /// Runs `lock`, keeping the Packages indexes in a cache shared by all tests (they are ~10 MB each).
    fn lock(&self) {
        self.xtask(&shared_index_cache()).arg("lock").assert().success();
    }

    /// A workspace whose spec is just `netbase`, already locked. The lock is made once and copied:
    /// its bytes do not depend on where the workspace is.
    fn netbase_locked() -> Workspace {
        static LOCK: OnceLock<Vec<u8>> = OnceLock::new();
        let bytes = LOCK.get_or_init(|| {
            let workspace = Workspace::new(&["netbase"]);
            workspace.lock();
            std::fs::read(workspace.lock_path()).expect("lock file")
        });
        let workspace = Workspace::new(&["netbase"]);
        std::fs::write(workspace.lock_path(), bytes).expect("copy of the lock");
        workspace
    }

    fn fetch(&self, extra: &[&str]) -> std::process::Output {
        self.xtask(&self.cache()).args(["fetch", "--arch", "amd64"]).args(extra).output().expect("run xtask fetch")
    }
}

fn shared_index_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lock_fetch-index-cache")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed run: non-zero exit, no panic, and stderr returned for content checks.
fn failed(output: &std::process::Output) -> String {
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "expected failure; stdout:\n{}\nstderr:\n{stderr}", text(&output.stdout));
    assert!(!stderr.contains("panicked"), "panicked:\n{stderr}");
    stderr
}

fn succeeded(output: &std::process::Output) -> String {
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "expected success; stderr:\n{stderr}");
    text(&output.stdout)
}

/// Cache entries of the lock's amd64 packages, by package name.
fn cache_entry(workspace: &Workspace, package: &str) -> PathBuf {
    let lock = std::fs::read_to_string(workspace.lock_path()).expect("lock file");
    let value: toml::Value = toml::from_str(&lock).expect("lock is TOML");
    let entry = value["package"]
        .as_array()
        .expect("package entries")
        .iter()
        .find(|p| p["name"].as_str() == Some(package) && p["target-arch"].as_str() == Some("amd64"))
        .unwrap_or_else(|| panic!("{package} is not in the lock:\n{lock}"));
    workspace.cache().join("sha256").join(entry["sha256"].as_str().expect("sha256"))
}

#[test]
fn lock_is_byte_stable_across_runs() {
    let first = Workspace::new(&["netbase", "tzdata"]);
    let second = Workspace::new(&["netbase", "tzdata"]);
    first.lock();
    second.lock();
    let a = std::fs::read(first.lock_path()).expect("first lock");
    let b = std::fs::read(second.lock_path()).expect("second lock");
    assert_eq!(text(&a), text(&b));
    let lock = text(&a);
    assert!(lock.starts_with("# Generated by `cargo xtask lock`"), "{lock}");
    // tzdata's debconf dependency is dropped because debconf is excluded.
    assert!(lock.contains("name = \"tzdata\"") && !lock.contains("name = \"debconf\""), "{lock}");
    for set in ["rootfs", "kernel", "efi-stub"] {
        assert!(lock.contains(&format!("set = \"{set}\"")), "{set} missing:\n{lock}");
    }
    // Locking again over an existing lock leaves it byte-identical.
    first.lock();
    assert_eq!(std::fs::read(first.lock_path()).expect("relocked"), a);
}

#[test]
fn fetch_caches_detects_corruption_and_refetches() {
    let workspace = Workspace::netbase_locked();

    let cold = succeeded(&workspace.fetch(&["--json"]));
    let report: serde_json::Value = serde_json::from_str(&cold).expect("fetch --json prints JSON");
    // netbase (rootfs), linux-base (kernel), systemd-boot-efi (efi-stub).
    assert_eq!(report["downloaded"], 3, "{cold}");
    assert_eq!(report["cached"], 0, "{cold}");
    assert_eq!(report["paths"].as_array().map(Vec::len), Some(3), "{cold}");

    let warm = succeeded(&workspace.fetch(&[]));
    assert!(warm.contains("downloaded 0 packages") && warm.contains("3 already cached"), "{warm}");
    // A warm cache needs no mirror at all.
    let offline = succeeded(&workspace.fetch(&["--mirror", "http://127.0.0.1:9"]));
    assert!(offline.contains("3 already cached"), "{offline}");

    let entry = cache_entry(&workspace, "netbase");
    let original = std::fs::read(&entry).expect("cache entry");
    std::fs::write(&entry, b"not a deb").expect("tamper with the cache");
    let output = workspace.fetch(&[]);
    let stdout = succeeded(&output);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("netbase") && stderr.contains("corrupt") && stderr.contains(&entry.display().to_string()),
        "{stderr}"
    );
    assert!(stdout.contains("downloaded 1 packages") && stdout.contains("netbase"), "{stdout}");
    assert_eq!(std::fs::read(&entry).expect("refetched entry"), original);

    // Corrupt again, and the mirror is unreachable: the error names the package.
    std::fs::write(&entry, b"not a deb either").expect("tamper with the cache");
    let stderr = failed(&workspace.fetch(&["--mirror", "http://127.0.0.1:9"]));
    assert!(stderr.contains("netbase") && stderr.contains("127.0.0.1:9"), "{stderr}");
}

#[test]
fn unreachable_mirror_fails_clearly() {
    let workspace = Workspace::netbase_locked();
    let stderr = failed(&workspace.fetch(&["--mirror", "http://127.0.0.1:9"]));
    assert!(stderr.contains("http://127.0.0.1:9/pool/"), "{stderr}");
    assert!(stderr.contains("XTASK_DEBIAN_MIRROR"), "{stderr}");

    let output = workspace
        .xtask(&workspace.cache())
        .args(["--mirror", "http://127.0.0.1:9", "lock"])
        .output()
        .expect("run lock");
    let stderr = failed(&output);
    assert!(stderr.contains("http://127.0.0.1:9/dists/bookworm/InRelease") && stderr.contains("--mirror"), "{stderr}");
}

#[test]
fn vanished_pool_file_asks_to_repin() {
    let workspace = Workspace::netbase_locked();
    let lock = std::fs::read_to_string(workspace.lock_path()).expect("lock");
    let start = lock.find("filename = \"pool/main/n/netbase/").expect("netbase entry");
    let end = start + lock[start..].find('\n').expect("line end");
    let gone = "filename = \"pool/main/n/netbase/netbase_0.0~gone_all.deb\"";
    std::fs::write(workspace.lock_path(), format!("{}{gone}{}", &lock[..start], &lock[end..])).expect("edit lock");

    let stderr = failed(&workspace.fetch(&[]));
    assert!(stderr.contains("netbase") && stderr.contains("netbase_0.0~gone_all.deb"), "{stderr}");
    assert!(stderr.contains("cargo xtask lock") && stderr.contains("re-pin"), "{stderr}");
    assert!(stderr.contains(&workspace.lock_path().display().to_string()), "{stderr}");
}

#[test]
fn stale_or_missing_lock_is_refused() {
    let workspace = Workspace::new(&["netbase"]);
    let stderr = failed(&workspace.fetch(&[]));
    assert!(stderr.contains("no lockfile") && stderr.contains("cargo xtask lock"), "{stderr}");

    let workspace = Workspace::netbase_locked();
    workspace.write_spec(&["netbase", "hostname"]);
    let stderr = failed(&workspace.fetch(&[]));
    assert!(stderr.contains("stale") && stderr.contains("spec adds package hostname"), "{stderr}");
    assert!(stderr.contains("node.toml") && stderr.contains("cargo xtask lock"), "{stderr}");
}

#[test]
fn unknown_package_fails_lock() {
    let workspace = Workspace::new(&["netbase", "no-such-package-xtask"]);
    let output = workspace.xtask(&shared_index_cache()).arg("lock").output().expect("run lock");
    let stderr = failed(&output);
    assert!(stderr.contains("no-such-package-xtask"), "{stderr}");
    assert!(stderr.contains("node.toml") && stderr.contains("`packages`"), "{stderr}");
    assert!(stderr.contains("bookworm main/binary-amd64"), "{stderr}");
    assert!(!workspace.lock_path().exists(), "a failed lock must not write a lockfile");
}

#[test]
fn digest_mismatch_names_package_and_both_digests() {
    let workspace = Workspace::netbase_locked();
    let lock = std::fs::read_to_string(workspace.lock_path()).expect("lock");
    let entry = cache_entry(&workspace, "netbase");
    let pinned = entry.file_name().and_then(|n| n.to_str()).expect("digest").to_string();
    let wrong = "0".repeat(64);
    std::fs::write(workspace.lock_path(), lock.replace(&pinned, &wrong)).expect("edit lock");

    let stderr = failed(&workspace.fetch(&[]));
    assert!(stderr.contains("netbase") && stderr.contains(&pinned) && stderr.contains(&wrong), "{stderr}");
    assert!(!workspace.cache().join("sha256").join(&wrong).exists(), "a bad download must not enter the cache");
}

//! `cargo xtask lock`, `fetch` and `outdated` against the real Debian archive (each suite's archive
//! comes from the host's apt sources). Each test works on a temporary copy of a tiny spec and tiny
//! boards, so what is fetched is a few hundred KB, never a kernel. A loopback proxy in front of the
//! real security archive serves it with one byte changed, to prove each check refuses what it should.

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
        Workspace::with_suites(packages, &["bookworm"])
    }

    fn with_suites(packages: &[&str], suites: &[&str]) -> Workspace {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir_all(dir.path().join("boards")).expect("boards directory");
        for arch in ["amd64", "arm64"] {
            let board = format!("arch = \"{arch}\"\ndefault = true\n{BOARD}");
            std::fs::write(dir.path().join(format!("boards/test-{arch}.toml")), board).expect("board file");
        }
        let workspace = Workspace { dir };
        workspace.write_spec_with(packages, suites);
        workspace
    }

    fn write_spec(&self, packages: &[&str]) {
        self.write_spec_with(packages, &["bookworm"]);
    }

    fn write_spec_with(&self, packages: &[&str], suites: &[&str]) {
        let spec = format!(
            "name = \"node\"\nversion = \"0.1.0\"\nsuites = {suites:?}\ncomponents = [\"main\"]\npackages = {packages:?}\n\
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
            .env_remove("XTASK_SUITE_MIRRORS")
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

const TRIXIE: [&str; 3] = ["trixie", "trixie-updates", "trixie-security"];

/// The host's Debian security archive (the source listing a `-security` suite).
fn host_security_archive() -> String {
    let mut texts = Vec::new();
    for entry in std::fs::read_dir("/etc/apt/sources.list.d").expect("apt sources").flatten() {
        texts.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    for text in texts {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default()
            };
            if field("Suites:").split_whitespace().any(|s| s.ends_with("-security")) {
                return field("URIs:").split_whitespace().next().unwrap_or_default().trim_end_matches('/').to_string();
            }
        }
    }
    panic!("the host's apt sources list no -security suite");
}

/// A loopback HTTP proxy in front of `upstream` that changes one byte of every response whose path
/// contains `tamper` (a byte in the middle, so the size stays and only a digest or signature check
/// can notice). It serves until the test ends.
fn tampering_proxy(upstream: String, tamper: &'static str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = listener.local_addr().expect("local address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut out = stream;
            let (status, mut body) = match ureq::get(&format!("{upstream}{path}")).call() {
                Ok(mut response) => {
                    let mut body = Vec::new();
                    let _ = response.body_mut().as_reader().read_to_end(&mut body);
                    ("200 OK", body)
                }
                Err(ureq::Error::StatusCode(404)) => ("404 Not Found", Vec::new()),
                Err(_) => ("502 Bad Gateway", Vec::new()),
            };
            if path.contains(tamper) && !body.is_empty() {
                let middle = body.len() / 2;
                body[middle] ^= 0x01;
            }
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = out.write_all(head.as_bytes()).and_then(|()| out.write_all(&body));
        }
    });
    format!("http://{address}")
}

/// Runs `lock` in `workspace` with extra global arguments and a cache of its own (a tampered
/// download must not be shadowed by a good copy in the shared cache); the existing lock must survive.
fn lock_fails(workspace: &Workspace, extra: &[&str]) -> String {
    let before = std::fs::read(workspace.lock_path()).ok();
    let output = workspace.xtask(&workspace.cache()).args(extra).arg("lock").output().expect("run lock");
    let stderr = failed(&output);
    assert_eq!(std::fs::read(workspace.lock_path()).ok(), before, "a failed lock changed the lockfile");
    stderr
}

#[test]
fn an_unknown_suite_is_named() {
    let workspace = Workspace::with_suites(&["netbase"], &["trixie", "trixie-nonesuch"]);
    std::fs::write(workspace.lock_path(), "# a lock that must survive\n").expect("old lock");
    let stderr = lock_fails(&workspace, &[]);
    assert!(stderr.contains("there is no suite \"trixie-nonesuch\""), "{stderr}");
    assert!(stderr.contains("node.toml, field `suites`"), "{stderr}");
}

#[test]
fn a_security_suite_whose_signature_fails_is_named() {
    let workspace = Workspace::with_suites(&["netbase"], &TRIXIE);
    std::fs::write(workspace.lock_path(), "# a lock that must survive\n").expect("old lock");
    let proxy = tampering_proxy(host_security_archive(), "/InRelease");
    let stderr = lock_fails(&workspace, &["--suite-mirror", &format!("trixie-security={proxy}")]);
    assert!(stderr.contains("suite \"trixie-security\"") && stderr.contains("verifying the signature"), "{stderr}");
    assert!(stderr.contains("gpgv"), "{stderr}");
}

#[test]
fn a_packages_index_that_does_not_match_its_inrelease_is_named() {
    // The security suite alone keeps the download small; its index fails before anything resolves.
    let workspace = Workspace::with_suites(&["netbase"], &["trixie-security"]);
    let proxy = tampering_proxy(host_security_archive(), "/binary-amd64/");
    let stderr = lock_fails(&workspace, &["--suite-mirror", &format!("trixie-security={proxy}")]);
    assert!(stderr.contains("package index of suite \"trixie-security\" for amd64"), "{stderr}");
    assert!(stderr.contains("sha256 is") && stderr.contains("expected"), "{stderr}");
}

#[test]
fn a_security_archive_that_does_not_answer_is_named_and_nothing_is_written() {
    let workspace = Workspace::with_suites(&["netbase"], &TRIXIE);
    std::fs::write(workspace.lock_path(), "# a lock that must survive\n").expect("old lock");
    let stderr = lock_fails(&workspace, &["--suite-mirror", "trixie-security=http://127.0.0.1:9"]);
    assert!(stderr.contains("suite \"trixie-security\"") && stderr.contains("127.0.0.1:9"), "{stderr}");

    // A lock whose packages come from the security suite, a cold cache, and no security archive:
    // fetch and build-image name the suite, and out/ is never created.
    workspace.write_spec_with(&["netbase"], &TRIXIE);
    workspace.xtask(&shared_index_cache()).arg("lock").assert().success();
    let lock = std::fs::read_to_string(workspace.lock_path()).expect("lock");
    let lock: String = lock
        .lines()
        .map(|l| if l.starts_with("suite = ") { "suite = \"trixie-security\"\n".to_string() } else { format!("{l}\n") })
        .collect();
    std::fs::write(workspace.lock_path(), lock).expect("edit lock");
    let stderr = failed(&workspace.fetch(&["--suite-mirror", "trixie-security=http://127.0.0.1:9"]));
    assert!(stderr.contains("suite trixie-security") && stderr.contains("127.0.0.1:9"), "{stderr}");
    let out = workspace.dir.path().join("out");
    let output = workspace
        .xtask(&workspace.cache())
        .args(["--suite-mirror", "trixie-security=http://127.0.0.1:9", "--out-dir"])
        .arg(&out)
        .args(["build-image", "--arch", "amd64"])
        .output()
        .expect("run build-image");
    let stderr = failed(&output);
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    assert!(!out.exists(), "a failed build touched {}", out.display());
}

/// `outdated --json` of `workspace`, parsed, and whether it succeeded.
fn outdated(workspace: &Workspace, extra: &[&str]) -> (bool, serde_json::Value) {
    let output =
        workspace.xtask(&shared_index_cache()).arg("--json").arg("outdated").args(extra).output().expect("run");
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("outdated --json printed no JSON ({e}):\n{}", text(&output.stderr)));
    (output.status.success(), report)
}

#[test]
fn outdated_lists_what_an_older_lock_misses_and_flags_security_updates() {
    // An older lock on purpose: resolved from the release alone (no updates, no security fixes), and
    // one package's version set back by hand so there is always something to find.
    let workspace = Workspace::with_suites(&["netbase", "tzdata", "runc"], &["trixie"]);
    workspace.lock();
    let old = std::fs::read_to_string(workspace.lock_path()).expect("lock");
    let netbase = old.find("name = \"netbase\"\nversion = \"").expect("netbase entry");
    let version_at = netbase + "name = \"netbase\"\nversion = \"".len();
    let version_end = version_at + old[version_at..].find('"').expect("version end");
    let old = format!("{}0~older{}", &old[..version_at], &old[version_end..]);
    std::fs::write(workspace.lock_path(), &old).expect("older lock");

    // A fresh lock of the full spec, in another workspace, says what outdated must find.
    let fresh = Workspace::with_suites(&["netbase", "tzdata", "runc"], &TRIXIE);
    fresh.lock();
    let fresh_lock: toml::Value = toml::from_str(&std::fs::read_to_string(fresh.lock_path()).unwrap()).unwrap();
    let old_lock: toml::Value = toml::from_str(&old).unwrap();
    let versions = |lock: &toml::Value| -> std::collections::BTreeMap<(String, String, String), String> {
        lock["package"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let s = |k: &str| p[k].as_str().unwrap().to_string();
                ((s("target-arch"), s("set"), s("name")), s("version"))
            })
            .collect()
    };
    let (old_versions, new_versions) = (versions(&old_lock), versions(&fresh_lock));
    let expected: Vec<(String, String, String)> =
        new_versions.iter().filter(|(k, v)| old_versions.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();

    workspace.write_spec_with(&["netbase", "tzdata", "runc"], &TRIXIE);
    let (ok, report) = outdated(&workspace, &[]);
    assert!(ok, "{report}");
    let behind = report["behind"].as_array().unwrap();
    let listed: Vec<(String, String, String)> = behind
        .iter()
        .filter(|b| b["change"] != "removed")
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap().to_string();
            (s("arch"), s("set"), s("name"))
        })
        .collect();
    assert_eq!(listed, expected, "{report}");
    let netbase = behind.iter().find(|b| b["name"] == "netbase" && b["arch"] == "amd64").expect("netbase listed");
    assert_eq!(netbase["change"], "newer");
    assert_eq!(netbase["locked_version"], "0~older");
    for b in behind {
        let from_security = b["available_suite"].as_str().is_some_and(|s| s.ends_with("-security"));
        assert_eq!(b["security"], from_security, "{b}");
    }
    let security = behind.iter().filter(|b| b["security"] == true).count();
    assert_eq!(report["security_updates"], security);
    let (ok, _) = outdated(&workspace, &["--fail-on-security"]);
    assert_eq!(ok, security == 0, "--fail-on-security must fail exactly when a security update waits");

    // Relocked, nothing is behind, and --fail-on-security passes.
    workspace.lock();
    let (ok, report) = outdated(&workspace, &["--fail-on-security"]);
    assert!(ok && report["behind"].as_array().unwrap().is_empty(), "{report}");
}

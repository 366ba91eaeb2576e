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

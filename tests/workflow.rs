//! The CI pipeline in ci/ passes two real linters that work offline: check-jsonschema against its
//! vendored GitHub-workflow schema, and zizmor's security audits. Both come from PyPI and are
//! installed into a virtualenv in the cache when missing (the test command must work on a fresh
//! machine). A deliberately broken copy shows each linter does reject what it should.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const LINTERS: &[&str] = &["check-jsonschema==0.39.0", "zizmor==1.32.0"];

/// The virtualenv holding the linters, made once.
fn linters() -> PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let cache = std::env::var_os("XTASK_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
        home.join("nodeimg")
    });
    let venv = cache.join("tools").join(format!("workflow-linters-{}", LINTERS.join("-").replace("==", "-")));
    ONCE.call_once(|| {
        if venv.join("bin/zizmor").is_file() && venv.join("bin/check-jsonschema").is_file() {
            return;
        }
        eprintln!("installing {} into {} (once)", LINTERS.join(" "), venv.display());
        let made = Command::new("python3").arg("-m").arg("venv").arg(&venv).output().expect("python3 is needed");
        assert!(made.status.success(), "python3 -m venv: {}", String::from_utf8_lossy(&made.stderr));
        let pip = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(LINTERS)
            .output()
            .unwrap();
        assert!(pip.status.success(), "pip install {LINTERS:?}: {}", String::from_utf8_lossy(&pip.stderr));
    });
    venv.join("bin")
}

fn workflows() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(common::repo_root().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "ci/ holds the release and security-rebuild workflows: {files:?}");
    files
}

fn schema(file: &Path) -> std::process::Output {
    Command::new(linters().join("check-jsonschema"))
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(file)
        .output()
        .unwrap()
}

fn zizmor(file: &Path) -> std::process::Output {
    Command::new(linters().join("zizmor")).args(["--offline", "--no-progress"]).arg(file).output().unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn workflows_pass_check_jsonschema_and_zizmor() {
    for file in workflows() {
        let out = schema(&file);
        assert!(out.status.success(), "check-jsonschema rejects {}:\n{}", file.display(), text(&out));
        let out = zizmor(&file);
        assert!(out.status.success(), "zizmor finds problems in {}:\n{}", file.display(), text(&out));
        assert!(text(&out).contains("No findings"), "{}", text(&out));
    }
}

#[test]
fn each_linter_rejects_a_broken_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let release = std::fs::read_to_string(common::repo_root().join("ci/release.yml")).unwrap();

    // Not a workflow any more: a misspelt key where the schema allows none.
    let misspelt = release.replacen("runs-on:", "run-on:", 1);
    assert_ne!(misspelt, release);
    let file = tmp.path().join("misspelt.yml");
    std::fs::write(&file, misspelt).unwrap();
    let out = schema(&file);
    assert!(!out.status.success(), "check-jsonschema accepted a job without runs-on:\n{}", text(&out));

    // A valid workflow with a script injection: an attacker's pull-request title expanded into a shell.
    let step = "      - name: host tools\n";
    let injected =
        release.replacen(step, &format!("      - run: echo \"${{{{ github.event.pull_request.title }}}}\"\n{step}"), 1);
    assert_ne!(injected, release);
    let file = tmp.path().join("injected.yml");
    std::fs::write(&file, injected).unwrap();
    assert!(schema(&file).status.success(), "the injected copy must still be a valid workflow");
    let out = zizmor(&file);
    assert!(!out.status.success() && text(&out).contains("template-injection"), "zizmor missed it:\n{}", text(&out));
}

/// What the linters do not check, checked here: every action pinned by a full commit SHA, and no
/// secret expanded anywhere but into an `env:` entry (so no script can echo it by accident).
#[test]
fn actions_are_pinned_by_commit_and_secrets_only_reach_env() {
    for file in workflows() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let at = format!("{}:{}", file.display(), number + 1);
            if let Some(action) = line.trim_start().trim_start_matches("- ").strip_prefix("uses: ") {
                let reference = action.split_whitespace().next().unwrap().rsplit_once('@').unwrap().1;
                assert!(
                    reference.len() == 40 && reference.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{at}: {action} is not pinned by a commit SHA"
                );
            }
            if line.contains("secrets.") {
                let (key, value) = line.trim().split_once(": ").unwrap_or_else(|| panic!("{at}: secret outside env"));
                assert!(key.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "{at}: a secret outside an env entry");
                assert!(value.starts_with("${{ secrets.") && value.ends_with("}}"), "{at}: {line}");
            }
        }
        assert!(text.contains("persist-credentials: false"), "{}: checkout keeps its token", file.display());
    }
}

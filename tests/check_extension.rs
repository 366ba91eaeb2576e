//! `cargo xtask check-extension DIR...` through the real CLI: the repository's extensions and every
//! service spec of siderolabs/extensions (tests/fixtures/talos-services, unchanged) pass; broken
//! manifests, service specs and contents fail with every problem listed, naming file, line and field,
//! the same way the build names them; `--json` says the same for CI.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const MANIFEST: &str = "version: v1alpha1\nmetadata:\n  name: NAME\n  version: \"1.0\"\n  author: someone\n  \
                        description: test\n  compatibility:\n    talos:\n      version: \">= v1.0.0\"\n";

/// An extension directory `name` under `parent` whose rootfs/ holds the given files.
fn extension(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("manifest.yaml"), MANIFEST.replace("NAME", name)).unwrap();
    for (rel, text) in files {
        let path = dir.join("rootfs").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const SERVICE: &str = "name: agent\ncontainer:\n  entrypoint: ./agent\nrestart: always\n";
const SPECS: &str = "usr/local/etc/containers";

fn check(dirs: &[&Path]) -> assert_cmd::Command {
    let mut cmd = xtask();
    cmd.arg("check-extension").args(dirs);
    cmd
}

fn json(dirs: &[&Path]) -> (bool, serde_json::Value) {
    let mut cmd = xtask();
    let out = run(cmd.arg("--json").arg("check-extension").args(dirs));
    (out.success, serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout)))
}

#[test]
fn the_repositorys_extensions_pass() {
    let dirs: Vec<PathBuf> = ["qemu-guest-agent", "iscsi-tools", "util-linux-tools"]
        .iter()
        .map(|n| repo_root().join("overlays/extensions").join(n))
        .collect();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let stdout = succeeds(&mut check(&refs));
    assert!(stdout.contains("ok: extension qemu-guest-agent") && stdout.contains(": qemu-guest-agent\n"), "{stdout}");
    assert!(stdout.contains("ok: extension iscsi-tools") && stdout.contains(": iscsid\n"), "{stdout}");
    let (ok, report) = json(&refs);
    assert!(ok && report["ok"] == true, "{report}");
    assert_eq!(report["extensions"][1]["services"], serde_json::json!(["iscsid"]));
}

/// Each current spec of siderolabs/extensions, copied unchanged into an extension of its own, passes.
#[test]
fn every_upstream_talos_service_spec_passes() {
    let fixtures = repo_root().join("tests/fixtures/talos-services");
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(&fixtures).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = format!("ext{}", dirs.len());
            dirs.push(extension(tmp.path(), &name, &[(&format!("{SPECS}/{file}"), &text)]));
        }
    }
    assert_eq!(dirs.len(), 31);
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let (ok, report) = json(&refs);
    assert!(ok, "{report:#}");
    let services: usize =
        report["extensions"].as_array().unwrap().iter().map(|e| e["services"].as_array().unwrap().len()).sum();
    assert_eq!(services, 31);
    // No key of theirs is unknown, and every ext-<name> they depend on is among them.
    for e in report["extensions"].as_array().unwrap() {
        assert_eq!(e["warnings"], serde_json::json!([]), "{e}");
    }
}

#[test]
fn a_broken_manifest_is_named_with_its_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = extension(tmp.path(), "agent", &[(&format!("{SPECS}/agent.yaml"), SERVICE)]);
    std::fs::write(dir.join("manifest.yaml"), MANIFEST.replace("NAME", "agent").replace("v1alpha1", "v2")).unwrap();
    let stderr = fails(&mut check(&[&dir]));
    assert!(stderr.contains("extension agent (") && stderr.contains("manifest.yaml:1: field `version`"), "{stderr}");
    assert!(stderr.contains("1 of 1 extension directories have problems"), "{stderr}");
}

#[test]
fn every_problem_of_a_bad_service_spec_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = "name: agent\ndepends:\n  - path: dev/x\n    service: cri\ncontainer:\n  entrypoint: [./agent]\n  \
               mounts:\n    - source: /dev\n      destination: /../dev\n      options: [rbind, sometimes]\n";
    let dir = extension(tmp.path(), "agent", &[(&format!("{SPECS}/agent.yaml"), bad)]);
    let stderr = fails(&mut check(&[&dir]));
    let file = dir.join("rootfs").join(SPECS).join("agent.yaml").display().to_string();
    for wanted in [
        format!("{file}:3: field `depends[0]`: more than one dependency in one entry (service, path)"),
        format!("{file}:6: field `container.entrypoint`: a list is not a string"),
        format!("{file}:9: field `container.mounts[0].destination`: \"/../dev\" is not a clean absolute path"),
        format!("{file}:10: field `container.mounts[0].options[1]`: \"sometimes\" is not a mount option"),
        format!("{file}: no `restart`"),
    ] {
        assert!(stderr.contains(&wanted), "{wanted:?} missing from:\n{stderr}");
    }
    let (ok, report) = json(&[&dir]);
    assert!(!ok && report["ok"] == false);
    assert_eq!(report["extensions"][0]["problems"].as_array().unwrap().len(), 5, "{report:#}");
}

#[test]
fn unknown_keys_are_warnings_not_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = extension(tmp.path(), "agent", &[(&format!("{SPECS}/agent.yaml"), &format!("{SERVICE}colour: red\n"))]);
    let out = run(&mut check(&[&dir]));
    assert!(out.success, "{}", out.stderr);
    assert!(out.stderr.contains("agent.yaml:5: field `colour`: unknown key, ignored"), "{}", out.stderr);
}

#[test]
fn contents_talos_refuses_are_listed_with_the_other_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let good = extension(tmp.path(), "good", &[(&format!("{SPECS}/agent.yaml"), SERVICE)]);
    let bad = extension(tmp.path(), "bad", &[("etc/motd", "hello\n"), (&format!("{SPECS}/x.yaml"), "name: x\n")]);
    std::fs::write(bad.join("notes.txt"), "").unwrap();
    let out = run(&mut check(&[&good, &bad, &tmp.path().join("missing")]));
    assert!(!out.success);
    assert!(out.stdout.contains("ok: extension good"), "{}", out.stdout);
    for wanted in [
        "/etc/motd (",
        "outside the paths Talos allows",
        "notes.txt: unexpected",
        "x.yaml: no `container`",
        "missing is not a directory",
        "2 of 3 extension directories have problems",
    ] {
        assert!(out.stderr.contains(wanted), "{wanted:?} missing from:\n{}", out.stderr);
    }
}

/// The build refuses what check-extension refuses, with the same message.
#[test]
fn the_build_says_what_check_extension_says() {
    let tmp = tempfile::tempdir().unwrap();
    let overlays = tmp.path().join("overlays");
    for entry in walkdir::WalkDir::new(repo_root().join("overlays")) {
        let entry = entry.unwrap();
        let dest = overlays.join(entry.path().strip_prefix(repo_root().join("overlays")).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
    let spec_file = overlays.join("extensions/iscsi-tools/rootfs").join(SPECS).join("iscsid.yaml");
    let text = std::fs::read_to_string(&spec_file).unwrap();
    std::fs::write(&spec_file, text.replace("restart: always", "restart: sometimes")).unwrap();
    let dir = overlays.join("extensions/iscsi-tools");
    let check_err = fails(&mut check(&[&dir]));
    let problem =
        check_err.lines().find(|l| l.contains("field `restart`")).expect("check names the field").trim().to_string();
    let spec = spec_copy(tmp.path());
    let build_err = fails(
        xtask()
            .arg("--spec")
            .arg(&spec)
            .arg("--overlays-dir")
            .arg(&overlays)
            .arg("--out-dir")
            .arg(tmp.path().join("out"))
            .args(["build-image", "--arch", "arm64"]),
    );
    assert!(build_err.contains(&problem), "the build does not say {problem:?}:\n{build_err}");
    assert!(!tmp.path().join("out").exists());
}

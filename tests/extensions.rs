//! System extensions and the no-shell policy, through the real CLI: bad extensions and smuggled shells
//! fail the build naming the extension, the file and where it came from, and leave out/ untouched; a
//! manifest copied from a real Talos extension parses and builds into a layer of the initramfs.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch copy of image-spec/ and overlays/ that a test may edit, and an out/ holding one earlier
/// output, which a refused build must leave as it was.
struct Workspace {
    dir: tempfile::TempDir,
    spec: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_copy(dir.path());
        copy_tree(&repo_root().join("overlays"), &dir.path().join("overlays"));
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("keep.txt"), "previous output").unwrap();
        Workspace { dir, spec }
    }

    fn overlays(&self) -> PathBuf {
        self.dir.path().join("overlays")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// A path inside extension `name`'s rootfs/.
    fn ext_file(&self, name: &str, rel: &str) -> PathBuf {
        let path = self.overlays().join("extensions").join(name).join("rootfs").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        path
    }

    fn edit(&self, path: &Path, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(path).unwrap();
        let edited = edit(text.clone());
        assert_ne!(text, edited, "the edit of {} changed nothing", path.display());
        std::fs::write(path, edited).unwrap();
    }

    fn xtask(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = xtask();
        cmd.env_remove("XTASK_OVERLAYS_DIR")
            .arg("--spec")
            .arg(&self.spec)
            .arg("--overlays-dir")
            .arg(self.overlays())
            .arg("--out-dir")
            .arg(self.out())
            .args(args);
        cmd
    }

    /// Runs build-image, which must fail without touching out/; returns stderr.
    fn build_fails(&self) -> String {
        let before = snapshot(&self.out());
        let stderr = fails(&mut self.xtask(&["build-image", "--arch", "arm64"]));
        assert_eq!(before, snapshot(&self.out()), "a refused build changed out/:\n{stderr}");
        stderr
    }
}

fn assert_mentions(stderr: &str, parts: &[&str]) {
    for part in parts {
        assert!(stderr.contains(part), "error does not mention {part:?}:\n{stderr}");
    }
}

#[test]
fn wrong_manifest_version_is_named() {
    let ws = Workspace::new();
    let manifest = ws.overlays().join("extensions/qemu-guest-agent/manifest.yaml");
    ws.edit(&manifest, |t| t.replace("version: v1alpha1", "version: v1alpha2"));
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["extension qemu-guest-agent", "manifest.yaml:1", "field `version`", "v1alpha2"]);
}

#[test]
fn manifest_without_name_is_named() {
    let ws = Workspace::new();
    let manifest = ws.overlays().join("extensions/iscsi-tools/manifest.yaml");
    ws.edit(&manifest, |t| t.lines().filter(|l| !l.contains("name: iscsi-tools")).map(|l| format!("{l}\n")).collect());
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["extension iscsi-tools", "iscsi-tools/manifest.yaml:", "missing field `name`"]);
}

#[test]
fn file_outside_the_allowed_paths_is_refused() {
    let ws = Workspace::new();
    std::fs::write(ws.ext_file("iscsi-tools", "etc/motd"), "hello\n").unwrap();
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["extension iscsi-tools", "/etc/motd", "outside the paths Talos allows"]);
}

#[test]
fn world_writable_file_is_refused() {
    let ws = Workspace::new();
    let file = ws.ext_file("qemu-guest-agent", "usr/local/share/qga/notes");
    std::fs::write(&file, "x").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["extension qemu-guest-agent", "/usr/local/share/qga/notes", "world-writable"]);
}

#[test]
fn device_nodes_and_fifos_are_refused() {
    for (tool, args, what) in [("mknod", &["c", "1", "3"][..], "a device node"), ("mkfifo", &[][..], "a fifo")] {
        let ws = Workspace::new();
        let node = ws.ext_file("util-linux-tools", "usr/local/lib/special");
        let made = std::process::Command::new(tool).arg(&node).args(args).status().unwrap();
        assert!(made.success(), "{tool} failed (the tests run as root)");
        let stderr = ws.build_fails();
        assert_mentions(&stderr, &["extension util-linux-tools", "/usr/local/lib/special", what]);
    }
}

#[test]
fn setuid_binary_is_refused() {
    let ws = Workspace::new();
    let file = ws.ext_file("iscsi-tools", "usr/local/bin/helper");
    std::fs::write(&file, b"\x7fELF").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["extension iscsi-tools", "/usr/local/bin/helper", "setuid"]);
}

#[test]
fn shell_smuggled_in_by_an_overlay_is_refused() {
    // A script for a shell in an extension…
    let ws = Workspace::new();
    let script = ws.ext_file("iscsi-tools", "usr/local/bin/login-helper");
    std::fs::write(&script, "#!/bin/sh\nexec iscsiadm \"$@\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = ws.build_fails();
    assert_mentions(
        &stderr,
        &["no-shell policy", "extension iscsi-tools", "/usr/local/bin/login-helper", "overlay", "#!/bin/sh"],
    );

    // …and a shell binary in a root overlay.
    let ws = Workspace::new();
    let shell = ws.overlays().join("tools/usr/bin/busybox");
    std::fs::create_dir_all(shell.parent().unwrap()).unwrap();
    std::fs::write(&shell, b"\x7fELF").unwrap();
    ws.edit(&ws.spec, |t| t.replace("overlays = []", "overlays = [\"tools\"]"));
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["no-shell policy", "the root filesystem", "/usr/bin/busybox", "overlay", "a shell"]);
}

#[test]
fn shell_smuggled_in_by_a_package_is_refused() {
    let ws = Workspace::new();
    // dash is excluded image-wide; take it off that list and let an extension ask for it.
    ws.edit(&ws.spec, |t| t.replace("    \"dash\",\n", ""));
    let packages = ws.overlays().join("extensions/util-linux-tools/packages.toml");
    ws.edit(&packages, |t| t.replace("packages = [\"util-linux\"]", "packages = [\"util-linux\", \"dash\"]"));
    succeeds(&mut ws.xtask(&["lock"]));
    let stderr = ws.build_fails();
    assert_mentions(
        &stderr,
        &[
            "no-shell policy",
            "extension util-linux-tools",
            "/usr/local/lib/containers/util-linux-tools/usr/bin/dash (package dash): a shell",
        ],
    );
}

#[test]
fn drop_files_entry_that_matches_nothing_is_named() {
    let ws = Workspace::new();
    ws.edit(&ws.spec, |t| t.replace("drop-files = [", "drop-files = [\n    \"/usr/sbin/no-such-tool\","));
    let stderr = ws.build_fails();
    assert_mentions(&stderr, &["node.toml, field `drop-files`", "/usr/sbin/no-such-tool", "matches nothing"]);
}

/// The second archive appended to the initramfs: found after the first one's trailer, zstd-compressed.
fn appended_cpio(initramfs: &[u8]) -> Vec<(String, Vec<u8>)> {
    let trailer = initramfs.windows(10).position(|w| w == b"TRAILER!!!").expect("first archive's trailer");
    let start = (trailer + 11 + 3) & !3;
    assert_eq!(&initramfs[start..start + 4], &[0x28, 0xb5, 0x2f, 0xfd], "no zstd frame after the first archive");
    let archive = zstd::stream::decode_all(&initramfs[start..]).unwrap();
    let mut entries = Vec::new();
    let mut pos = 0;
    loop {
        let field = |i: usize| {
            usize::from_str_radix(std::str::from_utf8(&archive[pos + 6 + i * 8..][..8]).unwrap(), 16).unwrap()
        };
        assert_eq!(&archive[pos..pos + 6], b"070701");
        let (size, name_size) = (field(6), field(11));
        let name = String::from_utf8(archive[pos + 110..pos + 110 + name_size - 1].to_vec()).unwrap();
        let data_start = (pos + 110 + name_size + 3) & !3;
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push((name, archive[data_start..data_start + size].to_vec()));
        pos = (data_start + size + 3) & !3;
    }
}

/// Every path in a squashfs, as `unsquashfs -l` lists it.
fn squashfs_paths(sqsh: &Path) -> Vec<String> {
    let out = std::process::Command::new("unsquashfs").args(["-l", "-n"]).arg(sqsh).output().unwrap();
    assert!(out.status.success(), "unsquashfs -l {}", sqsh.display());
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim_start_matches("squashfs-root").to_string()).collect()
}

#[test]
fn real_talos_manifest_builds_into_an_initramfs_layer() {
    host_tools();
    let _heavy = heavy();
    let ws = Workspace::new();
    // The manifest of Sidero Labs' iscsi-tools extension, byte for byte, instead of ours.
    let talos = repo_root().join("tests/fixtures/talos-iscsi-tools/manifest.yaml");
    std::fs::copy(&talos, ws.overlays().join("extensions/iscsi-tools/manifest.yaml")).unwrap();
    let stdout = succeeds(&mut ws.xtask(&["--json", "build-image", "--arch", "arm64"]));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let manifest = &report["manifest"];
    let dir = ws.out().join("qemu-arm64");

    let names: Vec<&str> =
        manifest["extensions"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["qemu-guest-agent", "iscsi-tools", "util-linux-tools"]);
    assert_eq!(manifest["extensions"][1]["version"], "$VERSION");
    let listed: Vec<&str> =
        manifest["artifacts"].as_array().unwrap().iter().map(|a| a["file"].as_str().unwrap()).collect();
    for name in &names {
        assert!(listed.contains(&format!("node-arm64.ext-{name}.sqsh").as_str()), "{name} layer not in {listed:?}");
    }

    let initramfs = std::fs::read(dir.join("node-arm64.initramfs")).unwrap();
    let appended = appended_cpio(&initramfs);
    let paths: Vec<&str> = appended.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "etc",
            "etc/machined",
            "etc/machined/extensions",
            "extensions",
            "extensions.yaml",
            "extensions/iscsi-tools.sqsh",
            "extensions/qemu-guest-agent.sqsh",
            "extensions/util-linux-tools.sqsh"
        ]
    );
    let file = |path: &str| &appended.iter().find(|(p, _)| p == path).unwrap().1;
    assert_eq!(
        String::from_utf8_lossy(file("etc/machined/extensions")),
        "qemu-guest-agent 10.0.13 /extensions/qemu-guest-agent.sqsh\niscsi-tools $VERSION /extensions/iscsi-tools.sqsh\n\
         util-linux-tools 2.41.5 /extensions/util-linux-tools.sqsh\n"
    );
    let yaml = String::from_utf8_lossy(file("extensions.yaml")).into_owned();
    assert!(yaml.starts_with("layers:\n- image: qemu-guest-agent.sqsh\n  metadata:\n"), "{yaml}");
    assert!(yaml.contains("author: Sidero Labs") && yaml.contains("version: '>= v1.1.0'"), "{yaml}");
    for name in &names {
        let published = std::fs::read(dir.join(format!("node-arm64.ext-{name}.sqsh"))).unwrap();
        assert!(file(&format!("extensions/{name}.sqsh")) == &published, "{name}: initramfs copy differs");
    }

    // No layer holds a shell, an SSH server or a getty.
    let forbidden =
        ["sh", "bash", "dash", "ash", "busybox", "sshd", "ssh", "dropbear", "getty", "agetty", "login", "su"];
    for sqsh in std::iter::once("rootfs.sqsh".to_string()).chain(names.iter().map(|n| format!("ext-{n}.sqsh"))) {
        let paths = squashfs_paths(&dir.join(format!("node-arm64.{sqsh}")));
        let found: Vec<&String> =
            paths.iter().filter(|p| forbidden.contains(&p.rsplit('/').next().unwrap_or_default())).collect();
        assert!(found.is_empty(), "{sqsh} holds {found:?}");
    }
    let holds = |layer: &str, wanted: &[&str]| {
        let paths = squashfs_paths(&dir.join(format!("node-arm64.ext-{layer}.sqsh")));
        for path in wanted {
            assert!(paths.iter().any(|p| p == path), "{layer} layer lacks {path}");
        }
    };
    // Talos's qemu-guest-agent.yaml runs ./qemu-ga from its root, which holds qemu-ga's config.
    holds(
        "qemu-guest-agent",
        &[
            "/usr/local/etc/containers/qemu-guest-agent.yaml",
            "/usr/local/lib/containers/qemu-guest-agent/usr/sbin/qemu-ga",
            "/usr/local/lib/containers/qemu-guest-agent/qemu-ga",
            "/usr/local/lib/containers/qemu-guest-agent/etc/qemu/qemu-ga.conf",
        ],
    );
    // Talos's iscsid.yaml runs /usr/local/sbin/iscsid with glibc from the node and its own libraries
    // named by the root's ld.so.cache; the per-node initiator name is machined's to write.
    holds(
        "iscsi-tools",
        &[
            "/usr/local/etc/containers/iscsid.yaml",
            "/usr/local/sbin/iscsid",
            "/usr/local/lib/containers/iscsid/usr/sbin/iscsid",
            "/usr/local/lib/containers/iscsid/etc/ld.so.cache",
            "/usr/local/etc/machined/create-files/iscsi-tools.yaml",
        ],
    );
}

//! Both arches build signed for Secure Boot, pass independent checks of every format and of the
//! signature, boot under UEFI in QEMU with the plain firmware and under Secure Boot, where the firmware
//! must refuse every changed image; bad inputs fail with clear errors and leave out/ untouched.

mod common;

use common::*;
use sha2::Digest;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn check_disk_formats(dir: &Path, base: &str, arch: &str) {
    let raw = dir.join(format!("{base}.raw"));
    // raw.zst is the raw disk, byte for byte, with a frame checksum zstd itself checks.
    let unpacked = std::process::Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(dir.join(format!("{base}.raw.zst")))
        .output()
        .unwrap();
    assert!(unpacked.status.success(), "zstd -d: {}", String::from_utf8_lossy(&unpacked.stderr));
    assert!(unpacked.stdout == std::fs::read(&raw).unwrap(), "{base}.raw.zst does not unpack to {base}.raw");
    let sgdisk = std::process::Command::new("sgdisk").arg("-v").arg(&raw).output().unwrap();
    let report = String::from_utf8_lossy(&sgdisk.stdout);
    assert!(sgdisk.status.success() && report.contains("No problems found"), "sgdisk -v {}:\n{report}", raw.display());

    // The ESP is partition 1; copy it out for fsck.vfat, which wants a whole filesystem.
    let info = std::process::Command::new("sgdisk").args(["-i", "1"]).arg(&raw).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let sector = |key: &str| -> u64 {
        let line = info.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in\n{info}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let (first, last) = (sector("First sector:"), sector("Last sector:"));
    assert!(info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "partition 1 is not an ESP:\n{info}");
    let bytes = std::fs::read(&raw).unwrap();
    let esp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(esp.path(), &bytes[(first * 512) as usize..((last + 1) * 512) as usize]).unwrap();
    let fsck = std::process::Command::new("fsck.vfat").arg("-n").arg(esp.path()).output().unwrap();
    assert!(fsck.status.success(), "fsck.vfat -n failed:\n{}", String::from_utf8_lossy(&fsck.stdout));
    let boot_file = if arch == "amd64" { "BOOTX64.EFI" } else { "BOOTAA64.EFI" };
    let copied = tempfile::NamedTempFile::new().unwrap();
    let mcopy = std::process::Command::new("mcopy")
        .args(["-n", "-i"])
        .arg(esp.path())
        .arg(format!("::/EFI/BOOT/{boot_file}"))
        .arg(copied.path())
        .output()
        .unwrap();
    assert!(mcopy.status.success(), "mcopy: {}", String::from_utf8_lossy(&mcopy.stderr));
    assert_eq!(std::fs::read(copied.path()).unwrap(), std::fs::read(dir.join(format!("{base}.efi"))).unwrap());

    let qcow2 = dir.join(format!("{base}.qcow2"));
    let check = std::process::Command::new("qemu-img").arg("check").arg(&qcow2).output().unwrap();
    assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));

    let objdump = if arch == "amd64" { "x86_64-linux-gnu-objdump" } else { "aarch64-linux-gnu-objdump" };
    let sections = std::process::Command::new(objdump).arg("-h").arg(dir.join(format!("{base}.efi"))).output().unwrap();
    let sections = String::from_utf8_lossy(&sections.stdout);
    for name in [".osrel", ".cmdline", ".uname", ".initrd", ".linux"] {
        assert!(sections.contains(name), "UKI lacks {name}:\n{sections}");
    }

    let listing = std::process::Command::new("cpio")
        .args(["-it", "--quiet", "-F"])
        .arg(dir.join(format!("{base}.initramfs")))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for path in ["init", "rootfs.sqsh", "etc/machined/modules"] {
        assert!(listing.lines().any(|l| l == path), "initramfs lacks {path}:\n{listing}");
    }
    let unsquash = std::process::Command::new("unsquashfs")
        .args(["-l", "-n"])
        .arg(dir.join(format!("{base}.rootfs.sqsh")))
        .output()
        .unwrap();
    let unsquash = String::from_utf8_lossy(&unsquash.stdout);
    assert!(unsquash.contains("squashfs-root/usr/lib/os-release"), "root squashfs lacks os-release");
}

/// What boot-test's report must prove about each role's boot of the one disk: its config, network,
/// time, API, on-demand modules and Kubernetes prerequisites (boot-test checks these too; the test
/// pins them so a weakened boot-test cannot pass).
fn check_roles(boot: &serde_json::Value, manifest: &serde_json::Value, arch: &str) {
    let disk =
        manifest["artifacts"].as_array().unwrap().iter().find(|a| a["file"].as_str().unwrap().ends_with(".qcow2"));
    assert_eq!(boot["disk_sha256"], disk.unwrap()["sha256"], "the roles booted another disk than manifest.json's");
    assert_eq!(boot["disk_sha256_after"], boot["disk_sha256"]);
    let nodes = boot["nodes"].as_array().unwrap();
    let roles: Vec<&str> = nodes.iter().map(|n| n["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["worker", "control-plane", "invalid-config"]);
    for node in nodes {
        check_node(node, manifest, arch);
        let status = &node["status"];
        // Reached from the host through the restricted user NIC's forward, and still up.
        assert_eq!(node["api_status"]["image"], status["image"], "{}", node["api_status"]);
        assert_eq!(status["time"]["synced"], true, "{}", status["time"]);
        assert_eq!(status["kubernetes"]["bpffs"]["mounted"], true);
        assert_eq!(status["kubernetes"]["usr_read_only"], true);
        for path in status["kubernetes"]["writable_paths"].as_array().unwrap() {
            assert_eq!((&path["writable"], &path["upper_on_scratch"]), (&true.into(), &true.into()), "{path}");
        }
        let on_demand = &status["modules_on_demand"]["requests"];
        let loaded = |request: &str, module: &str| {
            on_demand.as_array().unwrap().iter().any(|r| {
                r["request"] == request
                    && r["result"].as_str().unwrap().starts_with("ok")
                    && r["result"].as_str().unwrap().contains(module)
            })
        };
        assert!(loaded("br_netfilter", "br_netfilter"), "{on_demand}");
        assert_eq!(status["modules_on_demand"]["sig_enforce"], "Y");
        let lan = status["network"]["links"].as_array().unwrap().iter().find(|l| l["name"] == "eth1").unwrap().clone();
        match node["role"].as_str().unwrap() {
            "worker" => {
                assert_eq!(status["config"]["role"], "worker");
                assert_eq!(lan["lease"]["routers"], serde_json::json!(["10.0.3.1"]), "{lan}");
                assert_eq!(lan["lease"]["dns"], serde_json::json!(["10.0.3.1"]), "{lan}");
                assert!(node["renewed_after_secs"].as_f64().is_some(), "the LAN lease was not renewed");
                // machined reads the CIDATA FAT volume itself: no filesystem driver is asked for.
                assert!(status["config"]["source"].as_str().unwrap().ends_with("(vfat)"), "{}", status["config"]);
                assert!(!on_demand.to_string().contains("vfat"), "{on_demand}");
                assert_eq!(status["network"]["hostname"], "worker-1");
            }
            "control-plane" => {
                assert_eq!(status["config"]["role"], "controlplane");
                assert_eq!(lan["method"], "static");
                assert_eq!(lan["addresses"], serde_json::json!(["10.0.3.10/24"]), "{lan}");
                assert_eq!(status["network"]["hostname"], "cp-1");
            }
            _ => {
                assert_eq!(status["config"]["valid"], false);
                assert_eq!(status["config"]["error"]["field"], "machine.network.interfaces[0].addresses[0]");
                assert_eq!(status["facts"]["configuration"], false);
            }
        }
    }
}

/// What boot-test's report must prove about one boot of the node.
fn check_node(boot: &serde_json::Value, manifest: &serde_json::Value, arch: &str) {
    let status = &boot["status"];
    assert_eq!(status["arch"], arch);
    assert_eq!(status["version"], manifest["version"]);
    assert_eq!(status["ready"], true, "{status}");
    assert!(boot["ready_secs"].as_f64().unwrap() > 0.0);

    // The root: read-only overlayfs of the root squashfs and the extension layers of manifest.json.
    assert_eq!(status["root_fstype"], "overlay");
    assert_eq!(status["root_read_only"], true);
    assert_eq!(status["root_write_errno"], 30);
    let names = |list: &serde_json::Value| -> Vec<(String, String)> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["version"].as_str().unwrap().to_string()))
            .collect()
    };
    let extensions = names(&status["extensions"]);
    assert_eq!(extensions, names(&manifest["extensions"]));
    assert!(extensions.iter().any(|(n, _)| n == "qemu-guest-agent"), "{extensions:?}");

    // containerd answers on its socket; services run in their cgroups, the extension's isolated.
    assert!(!status["containerd"]["version"].as_str().unwrap_or_default().is_empty(), "{}", status["containerd"]);
    let services = status["services"].as_array().unwrap();
    for name in ["containerd", "qemu-guest-agent"] {
        let svc = services.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no service {name}"));
        assert_eq!(svc["state"], "running", "{svc}");
        assert_eq!(svc["restarts"], 0, "{svc}");
        assert_eq!(svc["cgroup"], format!("/system/{name}"), "{svc}");
    }
    let agent = services.iter().find(|s| s["name"] == "qemu-guest-agent").unwrap();
    for ns in ["mnt", "pid", "ipc", "uts"] {
        assert!(agent["namespaces"].as_array().unwrap().iter().any(|n| n == ns), "{agent}");
    }
    // Talos's qemu-guest-agent.yaml, unchanged, logs to a file (no logToConsole).
    assert_eq!(agent["log"], "/var/log/qemu-guest-agent.log", "{agent}");
    // Talos's iscsid.yaml, unchanged, waits for the network, which this node does not configure yet:
    // every wait is a fact the status reports false, and containerd and its initiator name are there.
    let iscsid = services.iter().find(|s| s["name"] == "iscsid").expect("iscsid is supervised");
    let facts = &status["facts"];
    assert_eq!(facts["cri"], true, "{facts}");
    if facts["network"].as_object().unwrap().values().all(|v| v == false) {
        assert_eq!(iscsid["state"], "waiting", "{iscsid}");
        let waiting: Vec<&str> =
            iscsid["waiting_for"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
        assert_eq!(waiting, ["network.addresses", "network.connectivity", "network.hostname", "network.etcfiles"]);
    } else {
        assert_eq!(iscsid["state"], "running", "{iscsid}");
    }

    // It was shut down through the guest agent: qemu-ga ran /sbin/shutdown, machined's applet.
    assert_eq!(boot["shutdown"], "machine-api-poweroff", "{}", boot["shutdown"]);
    assert_eq!(status["cgroups"]["kubepods"], "/sys/fs/cgroup/kubepods");

    // No shell at any path, no setuid/setgid file, nothing world-writable but sticky directories.
    assert_eq!(status["shells_found"], serde_json::json!([]));
    assert!(status["shells_checked"].as_u64().unwrap() > 1000, "{}", status["shells_checked"]);
    assert_eq!(status["setid_found"], serde_json::json!([]));
    assert_eq!(status["world_writable_found"], serde_json::json!([]));
    // The running kernel is the locked one: Debian 13's, from the security suite when it has a newer one.
    assert!(status["kernel"].as_str().unwrap().starts_with("6.12."), "{}", status["kernel"]);

    // The guest agent answered from the host, and runs nothing for it.
    assert_eq!(boot["guest_agent"]["ping"], true, "{}", boot["guest_agent"]);
    assert!(!boot["guest_agent"]["version"].as_str().unwrap().is_empty());
    assert_eq!(boot["guest_agent"]["guest_exec_enabled"], false);

    // /var was the encrypted scratch disk; after power-off its image holds writes but not the marker.
    assert_eq!(status["scratch"]["fstype"], "ext4", "{}", status["scratch"]);
    assert!(status["scratch"]["mapped"].as_str().unwrap().starts_with("/dev/dm-"));
    let scratch = &boot["scratch"];
    assert_eq!(scratch["marker"], status["scratch"]["marker"]);
    assert_eq!(scratch["marker_found"], false, "{scratch}");
    assert_eq!(scratch["marker_prefix_found"], false, "{scratch}");
    assert!(scratch["nonzero_bytes"].as_u64().unwrap() > 0, "{scratch}");

    // The hardening arguments are on the running kernel's command line.
    let cmdline: Vec<&str> = status["cmdline"].as_str().unwrap().split_whitespace().collect();
    let mut hardening = vec!["slab_nomerge", "init_on_free=1", "module.sig_enforce=1"];
    if arch == "amd64" {
        hardening.push("pti=on");
    }
    for arg in hardening {
        assert!(cmdline.contains(&arg), "{arg} missing from {cmdline:?}");
    }
    for arg in manifest["cmdline"].as_str().unwrap().split_whitespace() {
        assert!(cmdline.contains(&arg), "{arg} (from manifest.json) missing from {cmdline:?}");
    }
}

/// The UKI is signed by the key set's db key, as Debian's sbverify and the authenticode crate (with
/// RustCrypto's rsa) both find, and not by any other; each verifier also rejects a changed byte. The
/// variable store is an artifact, and the UKI has no gap between sections.
fn check_signature(dir: &Path, base: &str, keys: &Path, manifest: &serde_json::Value) {
    let uki = dir.join(format!("{base}.efi"));
    let db_cert = keys.join("db.crt");
    let (ok, text) = sbverify(&uki, &db_cert);
    assert!(ok, "sbverify --cert db.crt refused the UKI:\n{text}");
    let bytes = std::fs::read(&uki).unwrap();
    let trusted = std::fs::read_to_string(&db_cert).unwrap();
    authenticode_verify(&bytes, &trusted).unwrap_or_else(|e| panic!("authenticode: {e}"));
    assert_no_gaps(&bytes, &uki.display().to_string());

    let other = tempfile::tempdir().unwrap();
    let other_cert = secure_boot_keys(other.path()).join("db.crt");
    assert!(!sbverify(&uki, &other_cert).0, "sbverify accepted another db certificate");
    let other_pem = std::fs::read_to_string(&other_cert).unwrap();
    assert!(authenticode_verify(&bytes, &other_pem).is_err(), "authenticode accepted another db certificate");
    let mut changed = bytes.clone();
    changed[bytes.len() / 2] ^= 0x01;
    let changed_path = other.path().join("changed.efi");
    std::fs::write(&changed_path, &changed).unwrap();
    assert!(!sbverify(&changed_path, &db_cert).0, "sbverify accepted a changed UKI");
    let err = authenticode_verify(&changed, &trusted).unwrap_err();
    assert!(err.contains("digest"), "{err}");

    let record = &manifest["secure_boot"];
    let vars = record["vars"].as_str().unwrap_or_else(|| panic!("no variable store in {record}"));
    assert_eq!(vars, format!("{base}.secure-boot-vars.fd"));
    assert!(manifest["artifacts"].as_array().unwrap().iter().any(|a| a["file"] == vars));
    let der = std::process::Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&db_cert).output();
    let fingerprint: String = sha2::Sha256::digest(der.unwrap().stdout).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(record["db_certificate_sha256"], fingerprint);
}

/// What `boot-test --secure-boot` must prove beyond a plain boot: Secure Boot on, the kernel locked
/// down and saying so, and each changed image refused by the firmware.
fn check_secure_boot(boot: &serde_json::Value, dir: &Path) {
    assert_eq!(boot["secure_boot"], true);
    let status = &boot["status"]["secure_boot"];
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["setup_mode"], false, "{status}");
    assert_eq!(status["lockdown"], "integrity", "{status}");
    let log = std::fs::read_to_string(dir.join("boot-secure-boot-worker.log")).unwrap();
    assert!(log.contains("secureboot: Secure boot enabled"), "{log}");
    let refused: Vec<&str> =
        boot["refusals"].as_array().unwrap().iter().map(|r| r["image"].as_str().unwrap()).collect();
    assert_eq!(
        refused,
        ["unsigned UKI", "UKI signed by another db key", "signed UKI with one byte of .initrd flipped"],
        "{}",
        boot["refusals"]
    );
    for refusal in boot["refusals"].as_array().unwrap() {
        let line = refusal["line"].as_str().unwrap();
        assert!(line.contains("BdsDxe: failed to load Boot") && line.ends_with(": Access Denied"), "{refusal}");
        let log = std::fs::read_to_string(refusal["log"].as_str().unwrap()).unwrap();
        for started in ["EFI stub: ", "Linux version ", protocol::STATUS] {
            assert!(!log.contains(started), "a refused image started: {started:?} in\n{log}");
        }
    }
}

fn build_check_and_boot(arch: &str) {
    host_tools();
    let _heavy = heavy();
    let out = tempfile::tempdir().unwrap();
    let keys = secure_boot_keys(&out.path().join("keys"));
    let build = |out: &Path| -> String {
        let mut cmd = xtask();
        cmd.args(["--json", "--out-dir"])
            .arg(out)
            .args(["build-image", "--arch", arch, "--secure-boot-keys"])
            .arg(&keys);
        succeeds(&mut cmd)
    };
    let stdout = build(out.path());
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let board = format!("qemu-{arch}");
    let dir = out.path().join(&board);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest, report["manifest"]);
    assert_eq!(manifest["arch"], arch);
    for artifact in manifest["artifacts"].as_array().unwrap() {
        let path = dir.join(artifact["file"].as_str().unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), artifact["size"].as_u64().unwrap(), "{}", path.display());
        // Published for anyone to download and check: readable by all, like any release file.
        assert_eq!(meta.permissions().mode() & 0o777, 0o644, "{}", path.display());
    }
    // Published by one exchange of directories: no staging directory is left inside or beside it.
    for listed in [&dir, &out.path().to_path_buf()] {
        assert!(!std::fs::read_dir(listed).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".staging")));
    }
    check_disk_formats(&dir, &format!("node-{arch}"), arch);
    check_signature(&dir, &format!("node-{arch}"), &keys, &manifest);

    // The signed image boots under the plain firmware (no keys enrolled: Secure Boot off) ...
    let stdout = succeeds(xtask().args(["--json", "--out-dir"]).arg(out.path()).args(["boot-test", "--arch", arch]));
    let boot: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    check_roles(&boot, &manifest, arch);
    assert_eq!(boot["status"]["secure_boot"]["enabled"], false, "{}", boot["status"]["secure_boot"]);
    assert_eq!(boot["status"]["secure_boot"]["lockdown"], "none", "{}", boot["status"]["secure_boot"]);
    check_ram_proof(&boot, &dir);
    let log = std::fs::read_to_string(dir.join("boot-worker.log")).unwrap();
    for line in [protocol::STATUS, protocol::SHUTDOWN, protocol::SCRATCH_CLOSED, protocol::SHRED_DONE] {
        assert!(log.contains(line), "boot-worker.log lacks {line}:\n{log}");
    }
    assert!(log.contains("[containerd] "), "containerd's output is not on the console:\n{log}");

    // ... and under Secure Boot, where the firmware refuses it unsigned, signed by another key or changed.
    let stdout = succeeds(xtask().args(["--json", "--out-dir"]).arg(out.path()).args([
        "boot-test",
        "--arch",
        arch,
        "--secure-boot",
    ]));
    let boot: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // One node, the worker, boots under Secure Boot: the refusals' positive control.
    let nodes = boot["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{}", boot["nodes"]);
    assert_eq!(nodes[0]["role"], "worker");
    check_node(&nodes[0], &manifest, arch);
    check_secure_boot(&boot, &dir);

    // Nothing changed: nothing is downloaded, and the outputs are the same bytes. This time with a
    // minisign key too: the UKI is signed for Secure Boot first, so minisign's signature covers the
    // signed UKI that sbverify accepts.
    let minisign_keys = out.path().join("minisign");
    succeeds(xtask().args(["keygen", "--out"]).arg(&minisign_keys));
    let mut cmd = xtask();
    cmd.args(["--json", "--out-dir"]).arg(out.path()).args(["build-image", "--arch", arch, "--secure-boot-keys"]);
    cmd.arg(&keys).arg("--secret-key").arg(minisign_keys.join("nodeimg.key"));
    let again: serde_json::Value = serde_json::from_str(&succeeds(&mut cmd)).unwrap();
    assert_eq!(again["downloaded"], 0, "second build downloaded packages");
    assert_eq!(again["manifest"], manifest, "second build differs");
    let uki = dir.join(format!("node-{arch}.efi"));
    let (ok, text) = sbverify(&uki, &keys.join("db.crt"));
    assert!(ok, "sbverify refused the UKI of the minisign-signed build:\n{text}");
    let minisign = std::process::Command::new("minisign")
        .arg("-Vm")
        .arg(&uki)
        .arg("-p")
        .arg(minisign_keys.join("nodeimg.pub"))
        .output()
        .unwrap();
    assert!(
        minisign.status.success(),
        "minisign refused the signed UKI: {}",
        String::from_utf8_lossy(&minisign.stderr)
    );
}

/// The first role carries the RAM proof: the marker in the running node's dump, none after shredding;
/// the others report the marker absent. No dump and no nonce are left behind.
fn check_ram_proof(boot: &serde_json::Value, dir: &Path) {
    let nodes = boot["nodes"].as_array().unwrap();
    let ram = &nodes[0]["ram"];
    let running = &ram["running"]["Ok"];
    assert!(running["marker_offset"].is_u64(), "positive control not found: {ram}");
    // The guest's 1 GiB, less what the firmware keeps out of the memory map (amd64's dump is
    // 1 073 612 811 bytes, arm64's 1 073 744 059).
    assert!(running["size_bytes"].as_u64().unwrap() >= 1000 << 20, "{ram}");
    let after = &ram["after_shred"]["Ok"];
    assert!(after["marker_offset"].is_null() && after["nonzero_bytes"].as_u64().unwrap() > 0, "{ram}");
    assert_eq!(nodes[0]["status"]["ram_marker"]["state"], "held");
    assert!(nodes[0]["shutdown_ms"].is_u64(), "{}", nodes[0]);
    for node in &nodes[1..] {
        assert_eq!(node["status"]["ram_marker"]["state"], "absent", "{}", node["status"]["ram_marker"]);
        assert!(node["ram"].is_null());
    }
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ram-proof-"))
        .collect();
    assert!(left.is_empty(), "the RAM proof left {left:?} in {}", dir.display());
}

/// Shredding off (`machined.shred=off` in the spec's kernel arguments: no tmpfs unmount, the marker
/// file kept, no page-cache drop) must make boot-test fail on the post-shred dump, naming the offset:
/// the proof can fail. amd64, which boots faster.
#[test]
fn shredding_off_leaves_the_marker_in_memory_and_boot_test_names_its_offset() {
    host_tools();
    let _heavy = heavy();
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_copy(tmp.path());
    let text = std::fs::read_to_string(&spec).unwrap();
    let off = text.replacen(
        "kernel-args = [\"panic=-1\",",
        &format!("kernel-args = [\"{}\", \"panic=-1\",", protocol::SHRED_OFF_FLAG),
        1,
    );
    assert_ne!(off, text, "the spec's kernel-args line no longer starts with panic=-1");
    std::fs::write(&spec, off).unwrap();
    let out = tmp.path().join("out");
    succeeds(xtask().arg("--spec").arg(&spec).arg("--out-dir").arg(&out).args(["build-image", "--arch", "amd64"]));
    let stderr =
        fails(xtask().arg("--spec").arg(&spec).arg("--out-dir").arg(&out).args(["boot-test", "--arch", "amd64"]));
    assert!(
        stderr.contains("the post-shred memory dump") && stderr.contains("holds the RAM marker at offset "),
        "{stderr}"
    );
    assert!(stderr.contains("memory was not shredded"), "{stderr}");
    // The positive control held: the failure is the shredding's, not a missing marker.
    assert!(!stderr.contains("positive control failed"), "{stderr}");
}

#[test]
fn arm64_builds_and_boots() {
    build_check_and_boot("arm64");
}

#[test]
fn amd64_builds_and_boots() {
    build_check_and_boot("amd64");
}

/// The previous Debian release still builds and boots: bookworm's root (no extensions), its own lock,
/// its 6.1 kernel with uncompressed modules, and its /var/local, which Debian ships setgid and the
/// build normalises (saying so).
#[test]
fn bookworm_builds_and_boots() {
    host_tools();
    let _heavy = heavy();
    let out = tempfile::tempdir().unwrap();
    let spec = repo_root().join("image-spec/bookworm.toml");
    let build = run(xtask().arg("--json").arg("--spec").arg(&spec).arg("--out-dir").arg(out.path()).args([
        "build-image",
        "--arch",
        "amd64",
    ]));
    assert!(build.success, "{}", build.stderr);
    assert!(
        build.stderr.contains("/var/local (package base-files): a setgid/setuid directory, mode 2775 made 755"),
        "{}",
        build.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&build.stdout).unwrap();
    assert!(report["manifest"]["kernel"].as_str().unwrap().starts_with("6.1."), "{}", report["manifest"]);
    // systemd 252's stub ends in a symbol table outside its sections; the UKI must not keep it as a gap.
    let uki = out.path().join("qemu-amd64/node-amd64.efi");
    assert_no_gaps(&std::fs::read(&uki).unwrap(), &uki.display().to_string());
    let stdout = succeeds(xtask().arg("--json").arg("--spec").arg(&spec).arg("--out-dir").arg(out.path()).args([
        "boot-test",
        "--arch",
        "amd64",
    ]));
    let boot: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(boot["status"]["ready"], true, "{}", boot["status"]);
    assert_eq!(boot["status"]["root_fstype"], "squashfs", "no extensions, no overlay");
    assert_eq!(boot["status"]["setid_found"], serde_json::json!([]));
}

/// Runs build-image with a spec whose text is `spec`, expecting failure; returns stderr and checks
/// out/ was not touched.
fn build_with_spec_fails(spec: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let spec_path = spec_copy(tmp.path());
    std::fs::write(&spec_path, spec).unwrap();
    let out = tmp.path().join("out");
    let stderr = fails(xtask().arg("--spec").arg(&spec_path).arg("--out-dir").arg(&out).args([
        "build-image",
        "--arch",
        "arm64",
    ]));
    assert!(!out.exists(), "a failed build created {}", out.display());
    assert!(stderr.contains("node.toml"), "error does not name the spec file:\n{stderr}");
    stderr
}

/// A module directory the kernel lacks is refused before anything is written.
#[test]
fn unknown_on_demand_module_directory_is_named() {
    let _heavy = heavy();
    let spec = good_spec().replacen("on-demand-modules = [", "on-demand-modules = [\"fs/nosuchfs\", ", 1);
    let stderr = build_with_spec_fails(&spec);
    assert!(stderr.contains("field `on-demand-modules`: \"fs/nosuchfs\" holds no module of kernel 6.12"), "{stderr}");
}

fn good_spec() -> String {
    std::fs::read_to_string(repo_root().join("image-spec/node.toml")).unwrap()
}

#[test]
fn unknown_key_in_spec_is_named_with_its_line() {
    let spec = format!("{}\npakages = [\"x\"]\n", good_spec());
    let line = spec.lines().count();
    let stderr = build_with_spec_fails(&spec);
    assert!(stderr.contains(&format!("node.toml:{line}:1")) && stderr.contains("pakages"), "{stderr}");
}

#[test]
fn wrong_type_in_spec_is_named() {
    let spec = good_spec().replace("version = \"", "version = 12 #\"");
    let stderr = build_with_spec_fails(&spec);
    assert!(stderr.contains("node.toml:2:") && stderr.contains("invalid type"), "{stderr}");
}

#[test]
fn missing_field_in_spec_is_named() {
    let spec: String = good_spec().lines().filter(|l| !l.starts_with("suites")).map(|l| format!("{l}\n")).collect();
    let stderr = build_with_spec_fails(&spec);
    assert!(stderr.contains("missing field `suites`"), "{stderr}");
}

#[test]
fn unknown_package_makes_the_lock_stale() {
    let spec = good_spec().replace("packages = [", "packages = [\"no-such-package-xyz\", ");
    let stderr = build_with_spec_fails(&spec);
    assert!(stderr.contains("no-such-package-xyz") && stderr.contains("cargo xtask lock"), "{stderr}");
}

#[test]
fn unknown_board_is_refused_listing_the_known_ones() {
    let out = tempfile::tempdir().unwrap();
    let stderr = fails(xtask().arg("--out-dir").arg(out.path()).args(["build-image", "--board", "no-such-board"]));
    assert!(stderr.contains("no-such-board") && stderr.contains("qemu-arm64"), "{stderr}");
    assert!(snapshot(out.path()).len() == 1, "out dir was touched");
}

#[test]
fn bench_boot_only_without_a_built_image_says_to_build_first() {
    let out = tempfile::tempdir().unwrap();
    let bench = || {
        let mut c = xtask();
        c.arg("--out-dir").arg(out.path()).args(["bench", "--boot-only", "--arch", "arm64"]);
        c
    };
    let stderr = fails(&mut bench());
    assert!(
        stderr.contains("bench --boot-only boots the image in out/")
            && stderr.contains("build-image --board qemu-arm64")
            && stderr.contains("manifest.json"),
        "{stderr}"
    );
    let stderr = fails(bench().arg("--upload"));
    assert!(stderr.contains("--boot-only") && stderr.contains("--upload"), "{stderr}");
    assert!(snapshot(out.path()).len() == 1, "out dir was touched");
}

#[test]
fn bad_board_file_names_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("boards/qemu-arm64.toml")).unwrap();
    let text = text.replace("smp = 2", "smp = \"two\"");
    let line = text.lines().position(|l| l.contains("smp =")).unwrap() + 1;
    let board = tmp.path().join("broken.toml");
    std::fs::write(&board, text).unwrap();
    let out = tmp.path().join("out");
    let stderr = fails(xtask().arg("--out-dir").arg(&out).args(["build-image", "--board"]).arg(&board));
    assert!(stderr.contains(&format!("broken.toml:{line}:")) && stderr.contains("invalid type"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn unreachable_mirror_with_a_cold_cache_fails_clearly_and_leaves_out_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "previous output").unwrap();
    let before = snapshot(&out);
    let stderr =
        fails(xtask().arg("--out-dir").arg(&out).arg("--cache-dir").arg(tmp.path().join("empty-cache")).args([
            "--mirror",
            "http://127.0.0.1:9/debian",
            "build-image",
            "--arch",
            "amd64",
        ]));
    assert!(stderr.contains("127.0.0.1:9"), "{stderr}");
    assert_eq!(before, snapshot(&out), "out/ changed");
}

/// A machine that fails must fail boot-test with machined's reason and the console's tail, and a
/// boot that does not finish in time must fail on the timeout, with QEMU reaped either way.
#[test]
fn failing_boot_and_timeout_fail_boot_test_with_the_console_tail() {
    host_tools();
    let _heavy = heavy();
    let tmp = tempfile::tempdir().unwrap();
    // A board without the loop module: machined cannot attach /rootfs.sqsh and must say so.
    let text = std::fs::read_to_string(repo_root().join("boards/qemu-amd64.toml")).unwrap();
    let broken = text.replacen("\"loop\", ", "", 1);
    assert_ne!(broken, text, "the board's boot-modules line no longer names loop");
    let boards = tmp.path().join("boards");
    std::fs::create_dir(&boards).unwrap();
    std::fs::write(boards.join("qemu-amd64.toml"), broken).unwrap();
    // The lock covers every board's kernel, so the other board comes along unchanged.
    std::fs::copy(repo_root().join("boards/qemu-arm64.toml"), boards.join("qemu-arm64.toml")).unwrap();
    let out = tmp.path().join("out");
    let with_dirs = |cmd: &mut assert_cmd::Command| {
        cmd.arg("--boards-dir").arg(&boards).arg("--out-dir").arg(&out);
    };
    let mut build = xtask();
    with_dirs(&mut build);
    succeeds(build.args(["build-image", "--arch", "amd64"]));

    let mut boot = xtask();
    with_dirs(&mut boot);
    let stderr = fails(boot.args(["boot-test", "--arch", "amd64"]));
    assert!(stderr.contains(protocol::FATAL) && stderr.contains("loop"), "{stderr}");

    // An unsigned build has no variable store to boot Secure Boot with.
    let mut boot = xtask();
    with_dirs(&mut boot);
    let stderr = fails(boot.args(["boot-test", "--arch", "amd64", "--secure-boot"]));
    assert!(
        stderr.contains("needs a build signed for Secure Boot") && stderr.contains("--secure-boot-keys"),
        "{stderr}"
    );

    let mut boot = xtask();
    with_dirs(&mut boot);
    let stderr = fails(boot.args(["boot-test", "--arch", "amd64", "--timeout", "1"]));
    assert!(stderr.contains(&format!("no {} line within 1 s", protocol::STATUS.trim())), "{stderr}");
    let qemu_left = std::process::Command::new("pgrep").args(["-f", &out.display().to_string()]).output().unwrap();
    assert!(qemu_left.stdout.is_empty(), "QEMU still running: {}", String::from_utf8_lossy(&qemu_left.stdout));
}

//! The boot-test verdict: one function that takes everything a boot left behind (machined's status
//! line, the whole console, the guest agent's answers, the scratch disk image after power-off, and
//! under which firmware it ran) and either says what was proven or fails listing every way the boot
//! disproves the image; and its counterpart for an image the firmware must refuse ([`judge_refusal`]).

use super::console::{check_crash_loops, scan_for_failures};
use super::scan::Findings;
use crate::image::manifest::Manifest;
use crate::spec::protocol::{MARKER_PREFIX, SCRATCH_CLOSED, SHUTDOWN};
use crate::spec::{Arch, Board};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The kernel's own word that the firmware booted it with Secure Boot on.
pub const KERNEL_SECURE_BOOT: &str = "secureboot: Secure boot enabled";
/// edk2's boot manager on an image it could not start: `BdsDxe: failed to load Boot0001 "UEFI Misc
/// Device" from PciRoot(0x0)/Pci(0x1,0x0): Access Denied` for one the Secure Boot check refused.
/// Then it waits at its menu forever: the console shows nothing more and QEMU never exits.
pub const FIRMWARE_LOAD_FAILED: &str = "BdsDxe: failed to load Boot";
pub const ACCESS_DENIED: &str = ": Access Denied";
/// Console lines that only a started image prints: the kernel's EFI stub, the kernel, machined.
pub const IMAGE_STARTED: [&str; 3] = ["EFI stub: ", "Linux version ", crate::spec::protocol::STATUS];

/// Arguments every node must boot with, whatever the board and spec say: no slab merging, memory
/// zeroed when freed, only signed modules (and page-table isolation on amd64, see `required_args`).
const HARDENING_ARGS: [&str; 3] = ["slab_nomerge", "init_on_free=1", "module.sig_enforce=1"];

/// What machined reports, as far as boot-test checks it. Fields newer than an image are optional so
/// that an older image fails with a readable list of problems rather than a parse error.
#[derive(Debug, serde::Deserialize, Serialize, Clone)]
pub struct Status {
    pub arch: String,
    pub image: String,
    pub version: String,
    pub kernel: String,
    pub root_fstype: String,
    pub root_read_only: bool,
    #[serde(default)]
    pub root_write_errno: Option<i64>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub extensions: Vec<ExtensionStatus>,
    #[serde(default)]
    pub containerd: serde_json::Value,
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    #[serde(default)]
    pub scratch: serde_json::Value,
    /// Absent in an older image: then nothing was checked, which is not the same as nothing found.
    #[serde(default)]
    pub shells_found: Option<Vec<String>>,
    #[serde(default)]
    pub shells_checked: u64,
    /// Setuid/setgid files and loose world-writable entries on the running node (absent: not checked).
    #[serde(default)]
    pub setid_found: Option<Vec<String>>,
    #[serde(default)]
    pub world_writable_found: Option<Vec<String>>,
    #[serde(default)]
    pub cgroups: serde_json::Value,
    /// The firmware's SecureBoot and SetupMode variables and the kernel's lockdown mode (absent: not read).
    #[serde(default)]
    pub secure_boot: Option<SecureBootStatus>,
    #[serde(default)]
    pub milestones_ms: serde_json::Value,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, serde::Deserialize, Serialize, Clone, Default, PartialEq, Eq)]
pub struct SecureBootStatus {
    /// The SecureBoot variable: the firmware checked what it started.
    pub enabled: Option<bool>,
    /// The SetupMode variable: no platform key enrolled.
    #[serde(default)]
    pub setup_mode: Option<bool>,
    /// The kernel's lockdown mode: none, integrity or confidentiality.
    pub lockdown: Option<String>,
    /// What machined could not read.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Debug, serde::Deserialize, Serialize, Clone, PartialEq, Eq)]
pub struct ExtensionStatus {
    pub name: String,
    pub version: String,
}

#[derive(Debug, serde::Deserialize, Serialize, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub pid: Option<i64>,
    pub restarts: u64,
    pub state: String,
    /// Its cgroup (`/system/<name>`), for a running service.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Namespaces it does not share with machined.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GuestAgentReport {
    pub ping: bool,
    pub version: String,
    pub enabled_commands: usize,
    /// Whether the agent would run programs for the host (guest-exec): interactive access a
    /// shell-less node must not give.
    pub guest_exec_enabled: bool,
}

#[derive(Debug, Serialize)]
pub struct ScratchReport {
    pub image: PathBuf,
    pub size_bytes: u64,
    /// Bytes that are not zero: proof the node wrote to the disk.
    pub nonzero_bytes: u64,
    pub marker: String,
    pub marker_found: bool,
    /// Whether even the marker's fixed prefix (`NODEIMG-MARKER-`) occurs anywhere.
    pub marker_prefix_found: bool,
}

impl ScratchReport {
    /// From a scan of the scratch image for the marker prefix and (when machined reported one) the marker.
    pub fn new(marker: &str, findings: &Findings) -> ScratchReport {
        ScratchReport {
            image: findings.image.clone(),
            size_bytes: findings.size_bytes,
            nonzero_bytes: findings.nonzero_bytes,
            marker: marker.to_string(),
            marker_found: findings.first_hits.get(1).is_some_and(Option::is_some),
            marker_prefix_found: findings.first_hits.first().is_some_and(Option::is_some),
        }
    }
}

/// Everything one boot left behind.
pub struct Evidence<'a> {
    pub status: &'a Status,
    /// The whole console, after QEMU exited.
    pub log: &'a str,
    pub log_path: &'a Path,
    /// None when the image has no guest agent service; Err when it did not answer.
    pub guest_agent: Option<&'a Result<GuestAgentReport, String>>,
    /// None when the board has no scratch disk.
    pub scratch: Option<&'a ScratchReport>,
    /// Booted under the board's Secure Boot firmware with our keys enrolled: the node must say the
    /// firmware enforced Secure Boot and the kernel is locked down.
    pub secure_boot: bool,
}

/// What a passing boot proved, beyond the status itself.
#[derive(Debug)]
pub struct Proven {
    /// Kernel arguments present on the running command line.
    pub cmdline_required: Vec<String>,
    /// Service (re)starts seen on the console, per service.
    pub service_restarts: BTreeMap<String, u32>,
}

/// The verdict: Ok with what was proven, or an error listing every problem found.
pub fn judge(evidence: &Evidence, manifest: &Manifest, board: &Board) -> Result<Proven> {
    let mut problems = Vec::new();
    let cmdline_required = status_problems(evidence.status, manifest, board, &mut problems);
    secure_boot_problems(evidence, &mut problems);

    match evidence.guest_agent {
        Some(Err(e)) => problems.push(format!("the guest agent did not answer from the host: {e}")),
        Some(Ok(agent)) if agent.guest_exec_enabled => {
            problems.push("the guest agent offers guest-exec: it would run programs for the host".to_string())
        }
        Some(Ok(_)) | None => {}
    }

    if !evidence.log.contains(SHUTDOWN) {
        problems.push(format!("QEMU exited without machined's {SHUTDOWN} line"));
    }
    if let Err(e) = scan_for_failures(evidence.log, evidence.log_path) {
        problems.push(format!("{e:#}"));
    }
    let service_restarts = match check_crash_loops(evidence.log, evidence.log_path) {
        Ok(restarts) => restarts,
        Err(e) => {
            problems.push(format!("{e:#}"));
            BTreeMap::new()
        }
    };

    match (evidence.scratch, &board.file.scratch_disk) {
        (Some(scratch), _) => {
            if !scratch.marker.starts_with(MARKER_PREFIX) {
                problems.push(format!(
                    "machined reported no scratch marker (status scratch.marker is {:?})",
                    scratch.marker
                ));
            } else if scratch.marker_found || scratch.marker_prefix_found {
                problems.push(format!(
                    "the scratch disk image {} holds {} in plain text: /var was not encrypted",
                    scratch.image.display(),
                    if scratch.marker_found {
                        scratch.marker.clone()
                    } else {
                        format!("the marker prefix {MARKER_PREFIX}")
                    }
                ));
            } else if scratch.nonzero_bytes == 0 {
                problems.push(format!(
                    "the scratch disk image {} is all zeros: the node never wrote to it, so the marker's absence \
                     proves nothing",
                    scratch.image.display()
                ));
            }
            if !evidence.log.contains(SCRATCH_CLOSED) {
                problems
                    .push(format!("machined did not report closing the scratch disk at shutdown ({SCRATCH_CLOSED})"));
            }
        }
        (None, Some(_)) => problems.push("the board has a scratch disk, but it was not scanned".to_string()),
        (None, None) => {}
    }

    if !problems.is_empty() {
        bail!(
            "{}: the boot disproves the image (console in {}):\n  {}\nconsole tail:\n{}",
            board.name,
            evidence.log_path.display(),
            problems.join("\n  "),
            crate::util::cmd::tail(evidence.log, 30)
        );
    }
    Ok(Proven { cmdline_required, service_restarts })
}

/// What the status line and the console disprove about Secure Boot: under the Secure Boot firmware,
/// the firmware enforcing it, the kernel saying so and locking itself down; under any firmware,
/// machined reading all of it.
fn secure_boot_problems(evidence: &Evidence, problems: &mut Vec<String>) {
    let Some(sb) = &evidence.status.secure_boot else {
        problems.push("machined did not report Secure Boot and the lockdown mode (secure_boot)".to_string());
        return;
    };
    if !sb.errors.is_empty() {
        problems.push(format!("machined could not read the Secure Boot state: {}", sb.errors.join("; ")));
    }
    if !evidence.secure_boot {
        return;
    }
    if sb.enabled != Some(true) {
        problems.push(format!(
            "booted under Secure Boot firmware, but its SecureBoot variable is {:?}, not on (SetupMode {:?})",
            sb.enabled, sb.setup_mode
        ));
    }
    if !matches!(sb.lockdown.as_deref(), Some("integrity" | "confidentiality")) {
        problems.push(format!("the kernel is not locked down (lockdown {:?}, expected integrity)", sb.lockdown));
    }
    if !evidence.log.lines().any(|l| l.contains(KERNEL_SECURE_BOOT)) {
        problems.push(format!("the kernel did not log {KERNEL_SECURE_BOOT:?}"));
    }
}

/// What a refusal run proved: the firmware would not start the image.
#[derive(Debug, Serialize)]
pub struct RefusalProven {
    /// The image refused, e.g. "unsigned UKI".
    pub image: String,
    /// The firmware's line.
    pub line: String,
    /// Seconds from QEMU start to the refusal.
    pub refused_secs: f64,
    pub log: PathBuf,
}

/// The verdict on an image the Secure Boot firmware must refuse, from the first telling console line
/// (`needle` indexes [`refusal_needles`]): refused as proven, or an error saying the image booted.
pub fn judge_refusal(image: &str, seen: &super::console::Seen, log: &Path, board: &Board) -> Result<RefusalProven> {
    if seen.needle > 0 {
        bail!(
            "{}: the firmware booted the {image}, which it must refuse: the console shows {:?} after {:.1} s \
             (console in {})",
            board.name,
            seen.line.trim(),
            seen.elapsed.as_secs_f64(),
            log.display()
        );
    }
    if !seen.line.trim_end().ends_with(ACCESS_DENIED) {
        bail!(
            "{}: the firmware did not load the {image}, but not because the Secure Boot check refused it: {:?} \
             (console in {})",
            board.name,
            seen.line.trim(),
            log.display()
        );
    }
    Ok(RefusalProven {
        image: image.to_string(),
        line: seen.line.trim().to_string(),
        refused_secs: seen.elapsed.as_secs_f64(),
        log: log.to_path_buf(),
    })
}

/// What a refusal run waits for: the firmware's failed load first, then each sign of a started image.
pub fn refusal_needles() -> Vec<&'static str> {
    std::iter::once(FIRMWARE_LOAD_FAILED).chain(IMAGE_STARTED).collect()
}

/// Arguments the running kernel must have: every one the image was built with (board, then spec) and
/// the hardening defaults.
fn required_args(manifest: &Manifest, arch: Arch) -> Vec<String> {
    let mut args: Vec<String> = manifest.cmdline.split_whitespace().map(String::from).collect();
    let mut hardening: Vec<&str> = HARDENING_ARGS.to_vec();
    if arch == Arch::Amd64 {
        hardening.push("pti=on");
    }
    for arg in hardening {
        if !args.iter().any(|a| a == arg) {
            args.push(arg.to_string());
        }
    }
    args
}

/// What the status line disproves about the image and board, one line each; and the kernel arguments
/// it proves present.
fn status_problems(status: &Status, manifest: &Manifest, board: &Board, problems: &mut Vec<String>) -> Vec<String> {
    if status.arch != board.arch().debian() {
        problems.push(format!("arch is {:?}, the board is {}", status.arch, board.arch()));
    }
    if status.image != manifest.image {
        problems.push(format!("image is {:?}, manifest.json says {:?}", status.image, manifest.image));
    }
    if status.version != manifest.version {
        problems.push(format!("version is {:?}, manifest.json says {:?}", status.version, manifest.version));
    }
    if !status.ready {
        problems.push("machined reported the node not ready (ready=false)".to_string());
    }

    // The root: read-only squashfs, or a read-only overlay of it under the extension layers.
    let expected_fstype = if manifest.extensions.is_empty() { "squashfs" } else { "overlay" };
    if status.root_fstype != expected_fstype {
        problems.push(format!("root filesystem is {:?}, expected {expected_fstype}", status.root_fstype));
    }
    if !status.root_read_only || status.root_write_errno != Some(30) {
        problems.push(format!(
            "root is not proven read-only (root_read_only={}, write errno {:?}, expected EROFS=30)",
            status.root_read_only, status.root_write_errno
        ));
    }
    let built: Vec<ExtensionStatus> = manifest
        .extensions
        .iter()
        .map(|e| ExtensionStatus { name: e.name.clone(), version: e.version.clone() })
        .collect();
    if status.extensions != built {
        problems.push(format!("extensions loaded are {:?}, manifest.json lists {:?}", status.extensions, built));
    }

    // containerd answers on its socket.
    match status.containerd.get("version").and_then(|v| v.as_str()) {
        Some(v) if !v.is_empty() => {}
        _ => problems.push(format!("containerd did not answer on its socket: {}", status.containerd)),
    }
    // Services: each running.
    if !status.services.iter().any(|s| s.name == "containerd") {
        problems.push("containerd is not among the supervised services".to_string());
    }
    for svc in &status.services {
        if svc.state != "running" {
            problems.push(format!("service {} is {:?}, not running", svc.name, svc.state));
        }
        if svc.state == "running" && svc.pid.is_none() {
            problems.push(format!("service {} is running without a pid", svc.name));
        }
        if svc.state == "running" {
            let cgroup = format!("/system/{}", svc.name);
            if svc.cgroup.as_deref() != Some(cgroup.as_str()) {
                problems.push(format!("service {} runs in cgroup {:?}, not {cgroup}", svc.name, svc.cgroup));
            }
            // Extension services run isolated; containerd manages the node's own namespaces.
            let isolated = ["mnt", "pid", "ipc", "uts"];
            if svc.name != "containerd" && !isolated.iter().all(|ns| svc.namespaces.iter().any(|n| n == ns)) {
                problems.push(format!(
                    "service {} shares namespaces with machined: it has its own {:?}, expected {isolated:?}",
                    svc.name, svc.namespaces
                ));
            }
        }
        if svc.restarts > 0 {
            problems
                .push(format!("service {} was restarted {} times before the node was ready", svc.name, svc.restarts));
        }
    }
    if manifest.extensions.iter().any(|e| e.name == "qemu-guest-agent")
        && !status.services.iter().any(|s| s.name == "qemu-guest-agent" && s.state == "running")
    {
        problems.push("the qemu-guest-agent extension is loaded but its service is not running".to_string());
    }

    // No shell anywhere.
    match &status.shells_found {
        None => problems.push("machined did not report a search for shells (shells_found)".to_string()),
        Some(found) if !found.is_empty() => problems.push(format!("shells found on the node: {}", found.join(", "))),
        Some(_) if status.shells_checked == 0 => problems.push("the search for shells looked at nothing".to_string()),
        Some(_) => {}
    }
    // Nor a setuid/setgid file, nor anything world-writable but sticky directories.
    for (field, list, what) in [
        ("setid_found", &status.setid_found, "setuid/setgid files"),
        ("world_writable_found", &status.world_writable_found, "world-writable entries"),
    ] {
        match list {
            None => problems.push(format!("machined did not report a search for {what} ({field})")),
            Some(found) if !found.is_empty() => problems.push(format!("{what} on the node: {}", found.join(", "))),
            Some(_) => {}
        }
    }

    // /var: the scratch disk, encrypted, or (without a scratch-disk rule) a tmpfs.
    let scratch = &status.scratch;
    let field = |k: &str| scratch.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    if board.file.scratch_disk.is_some() {
        if !field("device").starts_with("/dev/")
            || !field("mapped").starts_with("/dev/dm-")
            || field("fstype") != "ext4"
            || !field("marker").starts_with(MARKER_PREFIX)
        {
            problems.push(format!("/var is not the encrypted scratch disk: {scratch}"));
        }
    } else if scratch.get("var").and_then(|v| v.as_str()) != Some("tmpfs") {
        problems.push(format!("the board has no scratch disk, yet /var is not a tmpfs: {scratch}"));
    }

    // cgroups: system services apart from workloads.
    for (key, path) in [("system", "/sys/fs/cgroup/system"), ("kubepods", "/sys/fs/cgroup/kubepods")] {
        if status.cgroups.get(key).and_then(|v| v.as_str()) != Some(path) {
            problems.push(format!("cgroup {key} is not {path}: {}", status.cgroups));
        }
    }

    // The kernel command line.
    let running: Vec<&str> = status.cmdline.split_whitespace().collect();
    let required = required_args(manifest, board.arch());
    for arg in &required {
        if !running.contains(&arg.as_str()) {
            problems
                .push(format!("kernel argument {arg} is missing from the running command line {:?}", status.cmdline));
        }
    }

    required
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKER: &str = "NODEIMG-MARKER-00112233445566778899aabbccddeeff";

    fn board() -> Board {
        crate::spec::load_board_file(&crate::util::paths::repo_root().join("boards/qemu-arm64.toml")).unwrap()
    }

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "image": "node", "version": "1", "arch": "arm64", "board": "qemu-arm64", "source_date_epoch": 0,
            "lock_sha256": "", "kernel": "6.1", "cmdline": "console=ttyAMA0 panic=-1",
            "extensions": [{"name": "qemu-guest-agent", "version": "7.2"}],
            "artifacts": [{"file": "node-arm64.raw", "size": 1, "sha256": "00"}],
        }))
        .unwrap()
    }

    /// A status line as a healthy arm64 node prints it.
    fn status() -> Status {
        serde_json::from_value(serde_json::json!({
            "arch": "arm64", "image": "node", "version": "1", "kernel": "6.1", "root_fstype": "overlay",
            "root_read_only": true, "root_write_errno": 30, "ready": true,
            "cmdline": "console=ttyAMA0 panic=-1 slab_nomerge init_on_free=1 module.sig_enforce=1 machined.scratch-serial=x",
            "extensions": [{"name": "qemu-guest-agent", "version": "7.2"}],
            "containerd": {"version": "1.6.20"},
            "services": [
                {"name": "containerd", "pid": 5, "restarts": 0, "state": "running", "cgroup": "/system/containerd", "namespaces": []},
                {"name": "qemu-guest-agent", "pid": 6, "restarts": 0, "state": "running",
                 "cgroup": "/system/qemu-guest-agent", "namespaces": ["mnt", "pid", "ipc", "uts"]},
            ],
            "scratch": {"device": "/dev/vdb", "mapped": "/dev/dm-0", "fstype": "ext4", "marker": MARKER},
            "shells_found": [], "shells_checked": 2000, "setid_found": [], "world_writable_found": [],
            "cgroups": {"system": "/sys/fs/cgroup/system", "kubepods": "/sys/fs/cgroup/kubepods"},
            "secure_boot": {"enabled": false, "setup_mode": true, "lockdown": "none", "errors": []},
        }))
        .unwrap()
    }

    const LOG: &str = "MACHINED-STATUS {}\nMACHINED-SHUTDOWN reason=power-button\nMACHINED-SCRATCH-CLOSED ok\n";

    fn findings(nonzero: u64, prefix: Option<u64>, marker: Option<u64>) -> Findings {
        Findings {
            image: "scratch.raw".into(),
            size_bytes: 1 << 20,
            nonzero_bytes: nonzero,
            first_hits: vec![prefix, marker],
        }
    }

    fn verdict(
        status: &Status,
        log: &str,
        agent: Option<Result<GuestAgentReport, String>>,
        scratch: ScratchReport,
    ) -> Result<Proven> {
        let evidence = Evidence {
            status,
            log,
            log_path: Path::new("boot.log"),
            guest_agent: agent.as_ref(),
            scratch: Some(&scratch),
            secure_boot: false,
        };
        judge(&evidence, &manifest(), &board())
    }

    fn agent(guest_exec_enabled: bool) -> Option<Result<GuestAgentReport, String>> {
        Some(Ok(GuestAgentReport { ping: true, version: "7.2".into(), enabled_commands: 3, guest_exec_enabled }))
    }

    #[test]
    fn a_healthy_boot_passes_and_names_what_it_proved() {
        let proven =
            verdict(&status(), LOG, agent(false), ScratchReport::new(MARKER, &findings(5000, None, None))).unwrap();
        assert!(proven.cmdline_required.contains(&"init_on_free=1".to_string()));
        assert!(proven.cmdline_required.contains(&"panic=-1".to_string()));
    }

    #[test]
    fn under_secure_boot_firmware_the_node_must_be_locked_down() {
        let scratch = ScratchReport::new(MARKER, &findings(5000, None, None));
        let agent = agent(false);
        let judge_sb = |status: &Status, log: &str| {
            let evidence = Evidence {
                status,
                log,
                log_path: Path::new("boot.log"),
                guest_agent: agent.as_ref(),
                scratch: Some(&scratch),
                secure_boot: true,
            };
            judge(&evidence, &manifest(), &board()).map(drop).map_err(|e| format!("{e:#}"))
        };
        let mut locked = status();
        locked.secure_boot = Some(SecureBootStatus {
            enabled: Some(true),
            setup_mode: Some(false),
            lockdown: Some("integrity".into()),
            errors: vec![],
        });
        let log = format!("[    0.000000] {KERNEL_SECURE_BOOT}\n{LOG}");
        judge_sb(&locked, &log).unwrap();

        let err = judge_sb(&status(), LOG).unwrap_err();
        for wanted in ["SecureBoot variable is Some(false)", "not locked down", KERNEL_SECURE_BOOT] {
            assert!(err.contains(wanted), "{wanted:?} missing from:\n{err}");
        }
        let mut unread = locked.clone();
        unread.secure_boot =
            Some(SecureBootStatus { errors: vec!["mount efivarfs: ENODEV".into()], ..Default::default() });
        let err = judge_sb(&unread, &log).unwrap_err();
        assert!(err.contains("could not read the Secure Boot state: mount efivarfs: ENODEV"), "{err}");
        let mut old = locked;
        old.secure_boot = None;
        assert!(judge_sb(&old, &log).unwrap_err().contains("did not report Secure Boot"));
    }

    #[test]
    fn a_refusal_is_proven_only_by_access_denied_and_a_started_image_is_named() {
        let seen = |needle: usize, line: &str| super::super::console::Seen {
            needle,
            line: line.into(),
            rest: String::new(),
            elapsed: std::time::Duration::from_secs(9),
        };
        let log = Path::new("refusal.log");
        let denied =
            "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Access Denied\r";
        let needles = refusal_needles();
        assert!(seen(0, denied).line.contains(needles[0]));
        let proven = judge_refusal("unsigned UKI", &seen(0, denied), log, &board()).unwrap();
        assert_eq!(proven.refused_secs, 9.0);
        let err = format!(
            "{:#}",
            judge_refusal("unsigned UKI", &seen(1, "EFI stub: Booting Linux Kernel..."), log, &board()).unwrap_err()
        );
        assert!(err.contains("booted the unsigned UKI") && err.contains("EFI stub"), "{err}");
        let not_found =
            "BdsDxe: failed to load Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x1,0x0): Not Found";
        let err = format!("{:#}", judge_refusal("tampered UKI", &seen(0, not_found), log, &board()).unwrap_err());
        assert!(err.contains("not because the Secure Boot check refused it"), "{err}");
    }

    #[test]
    fn every_way_a_boot_can_disprove_the_image_is_reported() {
        let clean = || ScratchReport::new(MARKER, &findings(5000, None, None));
        let fails = |status: &Status, log: &str, agent, scratch| {
            format!("{:#}", verdict(status, log, agent, scratch).unwrap_err())
        };
        let err = fails(&status(), LOG, agent(false), ScratchReport::new(MARKER, &findings(5000, Some(9), Some(9))));
        assert!(err.contains("in plain text"), "{err}");
        let err = fails(&status(), LOG, agent(false), ScratchReport::new(MARKER, &findings(0, None, None)));
        assert!(err.contains("all zeros"), "{err}");
        let err = fails(&status(), "MACHINED-SHUTDOWN\n", agent(false), clean());
        assert!(err.contains("closing the scratch disk"), "{err}");
        let err = fails(&status(), "MACHINED-SCRATCH-CLOSED\n", agent(false), clean());
        assert!(err.contains("without machined's MACHINED-SHUTDOWN"), "{err}");
        let err = fails(&status(), &format!("{LOG}Kernel panic - not syncing\n"), agent(false), clean());
        assert!(err.contains("Kernel panic"), "{err}");
        let err = fails(&status(), LOG, agent(true), clean());
        assert!(err.contains("guest-exec"), "{err}");
        let err = fails(&status(), LOG, Some(Err("no answer".into())), clean());
        assert!(err.contains("did not answer from the host: no answer"), "{err}");

        let mut bad = status();
        bad.root_write_errno = None;
        bad.shells_found = Some(vec!["/usr/bin/sh".into()]);
        bad.setid_found = Some(vec!["/usr/bin/su".into()]);
        bad.world_writable_found = None;
        bad.services[1].state = "exited".into();
        bad.cmdline = "console=ttyAMA0".into();
        let err = fails(&bad, LOG, agent(false), clean());
        for wanted in [
            "not proven read-only",
            "shells found on the node: /usr/bin/sh",
            "setuid/setgid files on the node: /usr/bin/su",
            "search for world-writable entries",
            "qemu-guest-agent is \"exited\"",
            "kernel argument panic=-1 is missing",
            "init_on_free=1 is missing",
        ] {
            assert!(err.contains(wanted), "{wanted:?} missing from:\n{err}");
        }
    }
}

//! The boot-test verdict: one function that takes everything a boot left behind (machined's status
//! line, the whole console, the guest agent's answers, the scratch disk image after power-off, and
//! under which firmware it ran) and either says what was proven or fails listing every way the boot
//! disproves the image; and its counterpart for an image the firmware must refuse ([`judge_refusal`]).

use super::console::{check_crash_loops, scan_for_failures};
use super::lan::{self, LanLog};
use super::qemu::LAN_NIC_MAC;
use super::ram::DumpScan;
use super::roles::{ConfigDelivery, Expectation, VolumeFormat};
use super::scan::Findings;
use crate::image::manifest::Manifest;
use crate::spec::protocol::{MARKER_PREFIX, SCRATCH_CLOSED, SHRED_DONE, SHUTDOWN};
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
    /// The boot modules machined loaded, in order.
    #[serde(default)]
    pub modules: Vec<String>,
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
    /// What the services' dependencies were judged against (`cri`, `network.*`, `configuration`, `time`).
    #[serde(default)]
    pub facts: serde_json::Value,
    /// The firmware's SecureBoot and SetupMode variables and the kernel's lockdown mode (absent: not read).
    #[serde(default)]
    pub secure_boot: Option<SecureBootStatus>,
    #[serde(default)]
    pub milestones_ms: serde_json::Value,
    /// The machine config: source, valid, role, error {field, why}.
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default)]
    pub network: serde_json::Value,
    #[serde(default)]
    pub time: serde_json::Value,
    #[serde(default)]
    pub kubernetes: serde_json::Value,
    #[serde(default)]
    pub modules_on_demand: serde_json::Value,
    /// The RAM marker: state held (with the holder's pid), absent (no nonce) or invalid; never the marker.
    #[serde(default)]
    pub ram_marker: serde_json::Value,
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
    /// For a waiting service, what does not hold yet (`network.connectivity`, `path /x`, `service cri`).
    #[serde(default)]
    pub waiting_for: Vec<String>,
    /// Why it is invalid, or why its last start failed.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// `console`, or the file its output goes to.
    #[serde(default)]
    pub log: String,
    #[serde(default)]
    pub log_tail: Vec<String>,
}

impl Status {
    /// Whether the status reports the fact a service waits for (`network.connectivity`,
    /// `configuration`, `time`) as not reached: a wait the node has not promised to end.
    fn fact_missing(&self, waited: &str) -> bool {
        let fact = match waited.split_once('.') {
            Some(("network", check)) => self.facts.get("network").and_then(|n| n.get(check)),
            None if waited == "configuration" || waited == "time" => self.facts.get(waited),
            _ => None,
        };
        fact.and_then(|f| f.as_bool()) == Some(false)
    }
}

/// How boot-test asked the node to shut down, and the reason machined must then report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// The ACPI power button (QMP system_powerdown).
    PowerButton,
    /// The guest agent's guest-shutdown: qemu-ga runs /sbin/shutdown, machined's applet, which asks
    /// machined over its API socket.
    GuestAgent,
}

impl ShutdownRequest {
    /// The start of the reason in machined's `MACHINED-SHUTDOWN reason=...` line.
    pub fn reason(self) -> &'static str {
        match self {
            ShutdownRequest::PowerButton => "power-button",
            ShutdownRequest::GuestAgent => "machine-api-poweroff",
        }
    }
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

/// The RAM proof of one boot (ram.rs): a dump while the node ran and one after machined reported
/// shredding done, each scanned for the marker (which is not kept here: the host computed it from
/// the nonce and forgot both).
#[derive(Debug, Serialize)]
pub struct RamReport {
    pub running: Result<DumpScan, String>,
    /// None when the boot never got as far as the shred line.
    pub after_shred: Option<Result<DumpScan, String>>,
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
    /// None when this boot was given no nonce (then machined must report the marker absent).
    pub ram: Option<&'a RamReport>,
    /// The status as the node's API served it through the forward, or why it did not.
    pub api: &'a Result<Status, String>,
    /// What the test LAN saw.
    pub lan: &'a LanLog,
    /// What this role's node must report, and how its config was delivered.
    pub expect: &'a Expectation,
    pub delivery: &'a ConfigDelivery,
    pub role: &'a str,
    pub shutdown: ShutdownRequest,
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
    node_problems(evidence, &mut problems);
    secure_boot_problems(evidence, &mut problems);

    match evidence.guest_agent {
        Some(Err(e)) => problems.push(format!("the guest agent did not answer from the host: {e}")),
        Some(Ok(agent)) if agent.guest_exec_enabled => {
            problems.push("the guest agent offers guest-exec: it would run programs for the host".to_string())
        }
        Some(Ok(_)) | None => {}
    }

    let wanted = format!("{SHUTDOWN} reason={}", evidence.shutdown.reason());
    match evidence.log.lines().find(|l| l.starts_with(SHUTDOWN)) {
        None => problems.push(format!("QEMU exited without machined's {SHUTDOWN} line")),
        Some(line) if !line.starts_with(&wanted) => problems
            .push(format!("asked to shut down by {:?}, machined reported {line:?}, not {wanted:?}", evidence.shutdown)),
        Some(_) => {}
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
    ram_problems(evidence, &mut problems);

    if !problems.is_empty() {
        bail!(
            "{} as {}: the boot disproves the image (console in {}):\n  {}\nconsole tail:\n{}",
            board.name,
            evidence.role,
            evidence.log_path.display(),
            problems.join("\n  "),
            crate::util::cmd::tail(evidence.log, 30)
        );
    }
    Ok(Proven { cmdline_required, service_restarts })
}

/// The shred line, and the RAM proof: the marker in the running node's memory (the positive control:
/// without it a clean dump proves nothing) and nowhere in the memory after shredding.
fn ram_problems(evidence: &Evidence, problems: &mut Vec<String>) {
    if !evidence.log.lines().any(|l| l.starts_with(SHRED_DONE)) {
        problems.push(format!("machined did not report shredding memory at shutdown ({SHRED_DONE})"));
    }
    let marker = &evidence.status.ram_marker;
    let state = marker.get("state").and_then(|s| s.as_str()).unwrap_or_default();
    let Some(ram) = evidence.ram else {
        if state != "absent" {
            problems.push(format!("given no nonce, machined must report the RAM marker absent, not {marker}"));
        }
        return;
    };
    if state != "held" {
        problems.push(format!("given a nonce, machined reported no RAM marker held: {marker}"));
    }
    match &ram.running {
        Err(e) => problems.push(format!("the memory dump of the running node failed: {e}")),
        Ok(dump) if dump.marker_offset.is_none() => problems.push(format!(
            "the running node's memory dump ({} bytes) does not hold the RAM marker: the positive control failed, \
             so a clean dump after shredding would prove nothing",
            dump.size_bytes
        )),
        Ok(_) => {}
    }
    match &ram.after_shred {
        None => problems.push(format!("no memory dump was taken after machined's {SHRED_DONE} line")),
        Some(Err(e)) => problems.push(format!("the memory dump after shredding failed: {e}")),
        Some(Ok(dump)) => {
            if let Some(offset) = dump.marker_offset {
                problems.push(format!(
                    "the post-shred memory dump ({} bytes) holds the RAM marker at offset {offset} ({offset:#x}): \
                     memory was not shredded",
                    dump.size_bytes
                ));
            } else if dump.nonzero_bytes == 0 {
                problems.push("the post-shred memory dump is all zeros: it shows nothing".to_string());
            }
        }
    }
}

/// What this role's node must show: its config, network, time, API, on-demand modules and the
/// Kubernetes prerequisites, one line per problem.
fn node_problems(evidence: &Evidence, problems: &mut Vec<String>) {
    let status = evidence.status;
    let expect = evidence.expect;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
    };
    let router = lan::ROUTER.to_string();

    // The config: its source, and the role, or the invalid field.
    let config = &status.config;
    let source = text(&config["source"]);
    match evidence.delivery.expected_source() {
        (prefix, _) if !source.starts_with(prefix) => {
            problems.push(format!("config.source is {}, expected {prefix}…", config["source"]))
        }
        (_, Some(fstype)) if !source.ends_with(&format!("({fstype})")) => {
            problems.push(format!("config.source is {}, expected a {fstype} volume", config["source"]))
        }
        _ => {}
    }
    match (expect.role, expect.invalid_field) {
        (Some(role), _) => {
            if config["valid"] != true || text(&config["role"]) != role {
                problems.push(format!("the node is not a valid {role}: config is {config}"));
            }
            let failed: Vec<&serde_json::Value> =
                config["files"].as_array().into_iter().flatten().filter(|f| !f["error"].is_null()).collect();
            if !failed.is_empty() {
                problems.push(format!("machine.files failed: {failed:?}"));
            }
            if status.facts["configuration"] != true {
                problems.push(format!("facts.configuration is not true with a valid config: {}", status.facts));
            }
        }
        (None, field) => {
            if config["valid"] != false || config["error"]["field"] != field.unwrap_or_default() {
                problems.push(format!("the invalid config is not reported against {field:?}: config is {config}"));
            }
            if !config["role"].is_null() || status.facts["configuration"] != false {
                problems.push(format!(
                    "an invalid config still gave the node a role or counts as applied: config {config}, facts {}",
                    status.facts
                ));
            }
        }
    }

    // The network: the LAN NIC as the role configures it, the host name, the default route.
    let network = &status.network;
    let links = network["links"].as_array().cloned().unwrap_or_default();
    let lan_link = links.iter().find(|l| l["mac"] == LAN_NIC_MAC);
    match lan_link {
        None => problems.push(format!("no link with the LAN NIC's MAC {LAN_NIC_MAC}: network is {network}")),
        Some(link) => {
            if text(&link["method"]) != expect.lan_method
                || !strings(&link["addresses"]).iter().any(|a| a == expect.lan_address)
            {
                problems.push(format!("the LAN link is not {} with {}: {link}", expect.lan_method, expect.lan_address));
            }
            if expect.lan_method == "dhcp" {
                let lease = &link["lease"];
                for (field, want) in [("routers", &router), ("dns", &router), ("ntp", &router)] {
                    if strings(&lease[field]) != [want.clone()] {
                        problems.push(format!("the LAN lease's {field} is {}, expected [{want}]", lease[field]));
                    }
                }
                if !strings(&lease["search"]).iter().any(|d| d == lan::DOMAIN) {
                    problems.push(format!("the LAN lease's search list {} lacks {}", lease["search"], lan::DOMAIN));
                }
            }
        }
    }
    if text(&network["hostname"]) != expect.hostname || text(&network["hostname_source"]) != expect.hostname_source {
        problems.push(format!(
            "host name is {} from {}, expected {} from {}",
            network["hostname"], network["hostname_source"], expect.hostname, expect.hostname_source
        ));
    }
    if text(&network["default_route"]) != router {
        problems.push(format!("the default route is {}, expected via {router}", network["default_route"]));
    }
    for need in ["addresses", "connectivity", "hostname", "etcfiles"] {
        if network["ready"][need] != true {
            problems.push(format!("network readiness {need} is not met: {}", network["ready"]));
        }
    }
    let lan_mac = LAN_NIC_MAC.to_string();
    if evidence.lan.dhcp_clients.contains(&lan_mac) != expect.lan_dhcp {
        problems.push(format!(
            "the LAN's DHCP server {} the node's LAN NIC (it saw {:?})",
            if expect.lan_dhcp { "never heard from" } else { "was asked by" },
            evidence.lan.dhcp_clients
        ));
    }

    // Time, from the LAN's NTP server.
    if status.time["synced"] != true || text(&status.time["server"]) != router || evidence.lan.ntp_replies == 0 {
        problems.push(format!(
            "time is not synced from {router}: time is {}, the LAN answered {} NTP queries",
            status.time, evidence.lan.ntp_replies
        ));
    }

    // The API, through the forward: the same node, still up.
    match evidence.api {
        Err(e) => problems.push(format!("the node's API did not answer through the forward: {e}")),
        Ok(api) => {
            if api.image != status.image || api.version != status.version || api.config != status.config {
                problems.push("the API served another node's status than the console showed".to_string());
            }
            // IPv6 router advertisements are taken: QEMU's user network advertises fec0::/64, and by
            // the API's later look the node has configured an address from it (SLAAC).
            let from_ra = api.network["links"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|l| strings(&l["ipv6"]))
                .any(|a| !a.starts_with("fe80:") && a != "::1/128");
            if !from_ra {
                problems.push(format!("no link has an IPv6 address from a router advertisement: {}", api.network));
            }
            if expect.renewal {
                let renewed = api.network["links"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["mac"] == LAN_NIC_MAC && l["renewals"].as_u64().unwrap_or(0) > 0);
                if !renewed || evidence.lan.renewals == 0 {
                    problems.push(format!(
                        "the LAN lease was not renewed before expiry ({} renewals at the LAN; the API's network is {})",
                        evidence.lan.renewals, api.network
                    ));
                }
            }
        }
    }

    // Modules on demand: br_netfilter and what it needs (llc, stp, bridge), and isofs where the
    // config volume is ISO-9660 (the kernel asks for it when machined mounts the volume; a FAT volume
    // machined reads itself), loaded from the root's tree although not boot modules, with signatures
    // enforced.
    let requests = status.modules_on_demand["requests"].as_array().cloned().unwrap_or_default();
    let loaded_on_demand = |module: &str| {
        requests.iter().any(|r| text(&r["result"]).starts_with("ok") && text(&r["result"]).contains(module))
    };
    let iso_volume = matches!(evidence.delivery, ConfigDelivery::Volume { format: VolumeFormat::Iso9660, .. });
    for module in ["br_netfilter"].into_iter().chain(iso_volume.then_some("isofs")) {
        if status.modules.iter().any(|m| m == module) {
            problems.push(format!("{module} is a boot module, so loading it proves nothing about on-demand loading"));
        } else if !loaded_on_demand(module) {
            problems.push(format!("{module} was not loaded on demand: {}", status.modules_on_demand));
        }
    }
    if text(&status.modules_on_demand["sig_enforce"]) != "Y" {
        problems.push(format!("module signatures are not enforced: {}", status.modules_on_demand));
    }

    // Kubernetes's prerequisites.
    let k8s = &status.kubernetes;
    if k8s["bpffs"]["mounted"] != true {
        problems.push(format!("bpffs is not mounted at /sys/fs/bpf: {}", k8s["bpffs"]));
    }
    let sysctls = strings(&k8s["sysctls"]);
    for wanted in ["net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1", "kernel.panic=10"] {
        if !sysctls.iter().any(|s| s == wanted) {
            problems.push(format!("sysctl {wanted} was not set: {}", k8s["sysctls"]));
        }
    }
    if !strings(&k8s["sysctl_errors"]).is_empty() {
        problems.push(format!("sysctls failed: {}", k8s["sysctl_errors"]));
    }
    let writable = k8s["writable_paths"].as_array().cloned().unwrap_or_default();
    if writable.is_empty() {
        problems.push("no writable paths were reported".to_string());
    }
    for path in &writable {
        if path["writable"] != true || path["upper_on_scratch"] != true || !path["error"].is_null() {
            problems.push(format!("writable path {} is not writable on the scratch disk: {path}", path["path"]));
        }
    }
    // The same probe that found the writable paths writable finds /usr read-only.
    if k8s["usr_read_only"] != true {
        problems.push(format!("/usr is not read-only (write errno {})", k8s["usr_write_errno"]));
    }
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
        // Waiting is as good as running only for facts the node reports unreached (e.g. the network,
        // until it is configured); any other wait, or any other state, disproves the image.
        let waits_for_facts = svc.state == "waiting"
            && !svc.waiting_for.is_empty()
            && svc.waiting_for.iter().all(|w| status.fact_missing(w));
        if svc.state != "running" && !waits_for_facts {
            let detail = [
                (!svc.waiting_for.is_empty()).then(|| format!("waiting for {}", svc.waiting_for.join(", "))),
                svc.error.clone(),
            ];
            let detail: Vec<String> = detail.into_iter().flatten().collect();
            let detail = if detail.is_empty() { String::new() } else { format!(" ({})", detail.join("; ")) };
            problems.push(format!("service {} is {:?}, not running{detail}", svc.name, svc.state));
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
    // The extensions' services (Talos's specs, unchanged) are supervised.
    for (extension, service) in [("qemu-guest-agent", "qemu-guest-agent"), ("iscsi-tools", "iscsid")] {
        let loaded = manifest.extensions.iter().any(|e| e.name == extension);
        if loaded && !status.services.iter().any(|s| s.name == service) {
            problems.push(format!("the {extension} extension is loaded but machined does not supervise {service}"));
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
    use crate::boot::roles::Scenario;

    const MARKER: &str = "NODEIMG-MARKER-00112233445566778899aabbccddeeff";

    fn board() -> Board {
        crate::spec::load_board_file(&crate::util::paths::repo_root().join("boards/qemu-arm64.toml")).unwrap()
    }

    fn manifest() -> Manifest {
        serde_json::from_value(serde_json::json!({
            "image": "node", "version": "1", "arch": "arm64", "board": "qemu-arm64", "source_date_epoch": 0,
            "lock_sha256": "", "kernel": "6.1", "cmdline": "console=ttyAMA0 panic=-1",
            "extensions": [{"name": "qemu-guest-agent", "version": "7.2"}, {"name": "iscsi-tools", "version": "2.1"}],
            "artifacts": [{"file": "node-arm64.raw", "size": 1, "sha256": "00"}],
        }))
        .unwrap()
    }

    /// A status line as a healthy arm64 node prints it.
    fn status() -> Status {
        let mut status: Status = serde_json::from_value(serde_json::json!({
            "arch": "arm64", "image": "node", "version": "1", "kernel": "6.1", "root_fstype": "overlay",
            "root_read_only": true, "root_write_errno": 30, "ready": true,
            "cmdline": "console=ttyAMA0 panic=-1 slab_nomerge init_on_free=1 module.sig_enforce=1 machined.scratch-serial=x",
            "extensions": [{"name": "qemu-guest-agent", "version": "7.2"}, {"name": "iscsi-tools", "version": "2.1"}],
            "containerd": {"version": "1.6.20"},
            "services": [
                {"name": "containerd", "pid": 5, "restarts": 0, "state": "running", "cgroup": "/system/containerd", "namespaces": []},
                {"name": "qemu-guest-agent", "pid": 6, "restarts": 0, "state": "running",
                 "cgroup": "/system/qemu-guest-agent", "namespaces": ["mnt", "pid", "ipc", "uts"]},
                {"name": "iscsid", "pid": 7, "restarts": 0, "state": "running",
                 "cgroup": "/system/iscsid", "namespaces": ["mnt", "pid", "ipc", "uts"]},
            ],
            "facts": {"cri": true, "network": {"addresses": true, "connectivity": true, "hostname": true,
                      "etcfiles": true}, "configuration": true, "time": true},
            "scratch": {"device": "/dev/vdb", "mapped": "/dev/dm-0", "fstype": "ext4", "marker": MARKER},
            "shells_found": [], "shells_checked": 2000, "setid_found": [], "world_writable_found": [],
            "cgroups": {"system": "/sys/fs/cgroup/system", "kubepods": "/sys/fs/cgroup/kubepods"},
            "modules": ["loop", "virtio_net"],
            "config": {"source": "cidata:/dev/vdc (vfat)", "valid": true, "applied": true, "role": "worker", "files": []},
            "network": {
                "hostname": "worker-1", "hostname_source": "dhcp", "default_route": "10.0.3.1",
                "ready": {"addresses": true, "connectivity": true, "hostname": true, "etcfiles": true},
                "links": [{"name": "eth1", "mac": LAN_NIC_MAC, "method": "dhcp", "addresses": ["10.0.3.15/24"],
                           "ipv6": ["fec0::5054:ff:fe12:3457/64", "fe80::5054:ff:fe12:3457/64"],
                           "renewals": 1,
                           "lease": {"routers": ["10.0.3.1"], "dns": ["10.0.3.1"], "ntp": ["10.0.3.1"], "search": ["cluster.test"]}}],
            },
            "time": {"synced": true, "server": "10.0.3.1"},
            "modules_on_demand": {"sig_enforce": "Y", "requests": [
                {"request": "fs-vfat", "result": "ok vfat,fat"}, {"request": "br_netfilter", "result": "ok br_netfilter"}]},
            "kubernetes": {
                "bpffs": {"mounted": true},
                "sysctls": ["net.ipv4.ip_forward=1", "net.bridge.bridge-nf-call-iptables=1", "kernel.panic=10"],
                "sysctl_errors": [],
                "writable_paths": [{"path": "/etc/cni", "writable": true, "upper_on_scratch": true, "error": null}],
                "usr_read_only": true,
            },
            "secure_boot": {"enabled": false, "setup_mode": true, "lockdown": "none", "errors": []},
        }))
        .unwrap();
        status.ram_marker =
            serde_json::json!({"state": "absent", "reason": "no fw_cfg entry opt/nodeimg/ram-nonce", "shred": true});
        status
    }

    fn worker() -> Scenario {
        crate::boot::roles::scenarios().remove(0)
    }

    fn lan_log() -> LanLog {
        LanLog { renewals: 1, ntp_replies: 2, dhcp_clients: vec![LAN_NIC_MAC.to_string()], ..LanLog::default() }
    }

    const LOG: &str = "MACHINED-STATUS {}\nMACHINED-SHUTDOWN reason=power-button\nMACHINED-SCRATCH-CLOSED ok\n\
                       MACHINED-SHRED-DONE ms=120 unmounted tmpfs /run; page cache dropped\n";

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
        verdict_after(status, log, agent, scratch, ShutdownRequest::PowerButton)
    }

    fn verdict_after(
        status: &Status,
        log: &str,
        agent: Option<Result<GuestAgentReport, String>>,
        scratch: ScratchReport,
        shutdown: ShutdownRequest,
    ) -> Result<Proven> {
        node_verdict(status, log, agent, scratch, &Ok(status.clone()), &lan_log(), &worker(), shutdown)
    }

    #[allow(clippy::too_many_arguments)] // one per piece of evidence
    fn node_verdict(
        status: &Status,
        log: &str,
        agent: Option<Result<GuestAgentReport, String>>,
        scratch: ScratchReport,
        api: &Result<Status, String>,
        lan: &LanLog,
        scenario: &Scenario,
        shutdown: ShutdownRequest,
    ) -> Result<Proven> {
        let evidence = Evidence {
            status,
            log,
            log_path: Path::new("boot.log"),
            guest_agent: agent.as_ref(),
            scratch: Some(&scratch),
            ram: None,
            api,
            lan,
            expect: &scenario.expect,
            delivery: &scenario.delivery,
            role: "worker",
            shutdown,
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
        let (lan, worker) = (lan_log(), worker());
        let judge_sb = |status: &Status, log: &str| {
            let api = Ok(status.clone());
            let evidence = Evidence {
                status,
                log,
                log_path: Path::new("boot.log"),
                guest_agent: agent.as_ref(),
                scratch: Some(&scratch),
                ram: None,
                api: &api,
                lan: &lan,
                expect: &worker.expect,
                delivery: &worker.delivery,
                role: "worker",
                shutdown: ShutdownRequest::PowerButton,
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
        let err = fails(&status(), "MACHINED-SHUTDOWN reason=power-button\n", agent(false), clean());
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

    #[test]
    fn every_way_a_node_can_miss_its_role_is_reported() {
        let clean = || ScratchReport::new(MARKER, &findings(5000, None, None));
        let fails = |status: &Status, api: &Result<Status, String>, lan: &LanLog, scenario: &Scenario| {
            format!(
                "{:#}",
                node_verdict(status, LOG, agent(false), clean(), api, lan, scenario, ShutdownRequest::PowerButton)
                    .unwrap_err()
            )
        };
        let mut bad = status();
        bad.config = serde_json::json!({"source": "smbios:oem-string", "valid": true, "role": "controlplane"});
        bad.network["hostname"] = "node-525400123456".into();
        bad.network["default_route"] = serde_json::Value::Null;
        bad.network["links"][0]["lease"]["routers"] = serde_json::json!([]);
        bad.network["links"][0]["addresses"] = serde_json::json!([]);
        bad.time = serde_json::json!({"synced": false, "reason": "no NTP servers"});
        bad.modules.push("br_netfilter".into());
        bad.modules_on_demand = serde_json::json!({"sig_enforce": "N", "requests": []});
        bad.kubernetes["bpffs"]["mounted"] = false.into();
        bad.kubernetes["writable_paths"][0]["upper_on_scratch"] = false.into();
        bad.kubernetes["usr_read_only"] = false.into();
        let mut no_renewal = status();
        no_renewal.network["links"][0]["renewals"] = 0.into();
        no_renewal.network["links"][0]["ipv6"] = serde_json::json!(["fe80::5054:ff:fe12:3457/64"]);
        let quiet_lan = LanLog::default();
        let err = fails(&bad, &Ok(no_renewal), &quiet_lan, &worker());
        for wanted in [
            "config.source is \"smbios:oem-string\"",
            "not a valid worker",
            "the LAN link is not dhcp with 10.0.3.15/24",
            "routers is []",
            "host name is \"node-525400123456\"",
            "the default route is null",
            "never heard from the node's LAN NIC",
            "time is not synced",
            "the API served another node's status",
            "was not renewed before expiry",
            "no link has an IPv6 address from a router advertisement",
            "br_netfilter is a boot module",
            "signatures are not enforced",
            "bpffs is not mounted",
            "not writable on the scratch disk",
            "/usr is not read-only",
        ] {
            assert!(err.contains(wanted), "{wanted:?} missing from:\n{err}");
        }
        let mut not_on_demand = status();
        not_on_demand.modules_on_demand["requests"] =
            serde_json::json!([{"request": "br_netfilter", "result": "missing"}]);
        let err = fails(&not_on_demand, &Ok(status()), &lan_log(), &worker());
        assert!(err.contains("br_netfilter was not loaded on demand"), "{err}");
        let err = fails(&status(), &Err("connection refused".into()), &lan_log(), &worker());
        assert!(err.contains("API did not answer through the forward: connection refused"), "{err}");

        // An invalid config must be reported against its field and give no role.
        let invalid = crate::boot::roles::scenarios().remove(2);
        let mut reported = status();
        reported.config = serde_json::json!({"source": "smbios:oem-string", "valid": false,
            "error": {"field": "machine.type", "why": "wrong"}});
        let err = fails(&reported, &Ok(reported.clone()), &lan_log(), &invalid);
        assert!(err.contains("not reported against Some(\"machine.network.interfaces[0].addresses[0]\")"), "{err}");
        assert!(err.contains("counts as applied"), "{err}");

        // The control-plane node's volume is ISO-9660: a FAT one, or isofs not loaded on demand, fails.
        let control_plane = crate::boot::roles::scenarios().remove(1);
        let mut as_fat = status();
        as_fat.config["source"] = "cidata:/dev/vdc (vfat)".into();
        let err = fails(&as_fat, &Ok(as_fat.clone()), &lan_log(), &control_plane);
        assert!(err.contains("expected a iso9660 volume"), "{err}");
        assert!(err.contains("isofs was not loaded on demand"), "{err}");
        let mut as_iso = as_fat;
        as_iso.config["source"] = "cidata:/dev/vdc (iso9660)".into();
        as_iso.modules_on_demand["requests"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"request": "fs-iso9660", "result": "ok isofs"}));
        let err = fails(&as_iso, &Ok(as_iso.clone()), &lan_log(), &control_plane);
        assert!(!err.contains("expected a iso9660") && !err.contains("isofs was not"), "{err}");
        assert!(err.contains("is not a valid controlplane"), "{err}");
    }

    /// A service may wait only for facts the node reports unreached; each check is shown to fire.
    #[test]
    fn services_waiting_for_unreached_facts_pass_and_nothing_else_does() {
        let clean = || ScratchReport::new(MARKER, &findings(5000, None, None));
        let fails = |status: &Status| format!("{:#}", verdict(status, LOG, agent(false), clean()).unwrap_err());
        // A node whose network never came up: iscsid waits for it, and that is no failure.
        let status = || {
            let mut waiting: Status = status();
            waiting.facts["network"]["addresses"] = false.into();
            waiting.facts["network"]["connectivity"] = false.into();
            waiting.services[2] = serde_json::from_value(serde_json::json!({"name": "iscsid", "pid": null,
                "restarts": 0, "state": "waiting", "waiting_for": ["network.addresses", "network.connectivity"]}))
            .unwrap();
            waiting
        };
        verdict(&status(), LOG, agent(false), clean()).unwrap();
        let mut reached = status();
        reached.facts["network"]["connectivity"] = serde_json::json!(true);
        let err = fails(&reached);
        assert!(
            err.contains(
                "service iscsid is \"waiting\", not running (waiting for network.addresses, network.connectivity)"
            ),
            "{err}"
        );
        let mut on_path = status();
        on_path.services[2].waiting_for = vec!["path /etc/iscsi/initiatorname.iscsi".into()];
        assert!(fails(&on_path).contains("waiting for path /etc/iscsi/initiatorname.iscsi"));
        let mut nothing = status();
        nothing.services[2].waiting_for.clear();
        assert!(fails(&nothing).contains("service iscsid is \"waiting\""));
        let mut invalid = status();
        invalid.services[2].state = "invalid".into();
        invalid.services[2].error = Some("x.yaml:3: field `restart`: bad".into());
        assert!(fails(&invalid).contains(
            "service iscsid is \"invalid\", not running (waiting for network.addresses, network.connectivity; x.yaml:3"
        ));
        let mut gone = status();
        gone.services.pop();
        assert!(fails(&gone).contains("the iscsi-tools extension is loaded but machined does not supervise iscsid"));
    }

    /// The shutdown boot-test asked for is the one machined reports; each mismatch is caught.
    #[test]
    fn the_shutdown_reason_matches_the_request() {
        let clean = || ScratchReport::new(MARKER, &findings(5000, None, None));
        let api_log = "MACHINED-SHUTDOWN reason=machine-api-poweroff (hypervisor initiated shutdown)\nMACHINED-SCRATCH-CLOSED ok\n\
                       MACHINED-SHRED-DONE ms=80 ok\n";
        verdict_after(&status(), api_log, agent(false), clean(), ShutdownRequest::GuestAgent).unwrap();
        let err = format!(
            "{:#}",
            verdict_after(&status(), LOG, agent(false), clean(), ShutdownRequest::GuestAgent).unwrap_err()
        );
        assert!(
            err.contains(
                "asked to shut down by GuestAgent, machined reported \"MACHINED-SHUTDOWN reason=power-button\""
            ),
            "{err}"
        );
        let err = format!("{:#}", verdict(&status(), api_log, agent(false), clean()).unwrap_err());
        assert!(err.contains("not \"MACHINED-SHUTDOWN reason=power-button\""), "{err}");
    }

    /// The RAM proof: a held marker found while running and absent after shredding passes; each way
    /// it can fail is named, the post-shred hit with its offset.
    #[test]
    fn every_way_the_ram_proof_can_fail_is_reported() {
        let dump = |offset: Option<u64>| DumpScan {
            size_bytes: 1 << 30,
            nonzero_bytes: 1 << 20,
            dump_secs: 2.0,
            scan_secs: 1.0,
            marker_offset: offset,
        };
        let mut held = status();
        held.ram_marker = serde_json::json!({"state": "held", "holder_pid": 300, "shred": true});
        let worker = worker();
        let judge_ram = |status: &Status, log: &str, ram: Option<&RamReport>| {
            let scratch = ScratchReport::new(MARKER, &findings(5000, None, None));
            let evidence = Evidence {
                status,
                log,
                log_path: Path::new("boot.log"),
                guest_agent: None,
                scratch: Some(&scratch),
                ram,
                api: &Ok(status.clone()),
                lan: &lan_log(),
                expect: &worker.expect,
                delivery: &worker.delivery,
                role: "worker",
                shutdown: ShutdownRequest::PowerButton,
                secure_boot: false,
            };
            judge(&evidence, &manifest(), &board()).map(|_| ()).map_err(|e| format!("{e:#}"))
        };
        let proof = |running, after| RamReport { running, after_shred: after };
        judge_ram(&held, LOG, Some(&proof(Ok(dump(Some(4096))), Some(Ok(dump(None)))))).unwrap();
        judge_ram(&status(), LOG, None).unwrap();

        let err =
            judge_ram(&held, LOG, Some(&proof(Ok(dump(Some(4096))), Some(Ok(dump(Some(0x1234_5678))))))).unwrap_err();
        assert!(
            err.contains("holds the RAM marker at offset 305419896 (0x12345678): memory was not shredded"),
            "{err}"
        );
        let err = judge_ram(&held, LOG, Some(&proof(Ok(dump(None)), Some(Ok(dump(None)))))).unwrap_err();
        assert!(err.contains("the positive control failed"), "{err}");
        let err = judge_ram(&held, LOG, Some(&proof(Err("QMP gone".into()), None))).unwrap_err();
        assert!(err.contains("dump of the running node failed: QMP gone"), "{err}");
        assert!(err.contains("no memory dump was taken after"), "{err}");
        let err = judge_ram(&held, LOG, Some(&proof(Ok(dump(Some(1))), Some(Err("exited".into()))))).unwrap_err();
        assert!(err.contains("dump after shredding failed: exited"), "{err}");
        let mut blank = dump(None);
        blank.nonzero_bytes = 0;
        let err = judge_ram(&held, LOG, Some(&proof(Ok(dump(Some(1))), Some(Ok(blank))))).unwrap_err();
        assert!(err.contains("all zeros"), "{err}");
        let err = judge_ram(&status(), LOG, Some(&proof(Ok(dump(Some(1))), Some(Ok(dump(None)))))).unwrap_err();
        assert!(err.contains("reported no RAM marker held"), "{err}");
        let err = judge_ram(&held, LOG, None).unwrap_err();
        assert!(err.contains("must report the RAM marker absent"), "{err}");
        let no_shred = LOG.lines().filter(|l| !l.starts_with(SHRED_DONE)).collect::<Vec<_>>().join("\n");
        let err = judge_ram(&status(), &no_shred, None).unwrap_err();
        assert!(err.contains("did not report shredding memory"), "{err}");
    }
}

//! `cargo xtask boot-test`: boots the disk build-image made (through UEFI firmware, not -kernel) as a
//! node, with a blank scratch disk and the guest agent's virtio-serial port attached, and proves what
//! the running machine is:
//!
//! - machined's status line: the root is read-only (squashfs, or overlayfs when extensions are
//!   layered over it), the extensions are those manifest.json lists, containerd answers on its
//!   socket, every service is up in its cgroup without restarts, no shell exists at any path, /var is
//!   the scratch disk under dm-crypt, and the kernel command line holds the board's and the spec's
//!   arguments and the hardening defaults;
//! - from the host: the guest agent answers guest-ping and guest-info over its socket;
//! - after the ACPI power button (QMP system_powerdown) and QEMU's exit: the scratch disk image was
//!   written but holds no trace of the marker machined wrote to /var (it was encrypted under a key
//!   that never left the machine's RAM);
//! - the whole console: no kernel panic, Oops, BUG/WARNING splat, machined failure or service crash
//!   loop.
//!
//! The console is kept in out/<board>/boot.log; timings go in the report.

use crate::build_image::Manifest;
use crate::qemu::{self, Accel, GuestAgent, Machine, NodeDevices, Qmp};
use crate::spec::{self, Arch, Board};
use crate::{cmd, hosttools, progress, Global};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BootTestArgs {
    /// Target architecture; picks that arch's default board
    #[arg(long, value_enum)]
    pub arch: Option<spec::Arch>,
    /// Board name (in boards/) or path to a board file
    #[arg(long)]
    pub board: Option<String>,
    /// Accelerator: auto uses KVM only where a probe proves it works
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Override the board's boot timeout, in seconds
    #[arg(long)]
    pub timeout: Option<u64>,
}

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
    #[serde(default)]
    pub cgroups: serde_json::Value,
    #[serde(default)]
    pub milestones_ms: serde_json::Value,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
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
pub struct BootReport {
    pub board: String,
    pub accel: &'static str,
    /// Seconds from QEMU start to the status line (the node ready).
    pub ready_secs: f64,
    /// Seconds from QEMU start until the guest agent had answered guest-ping and guest-info.
    pub guest_agent_secs: Option<f64>,
    /// Seconds from the power-button press to QEMU's exit.
    pub poweroff_secs: f64,
    pub status: Status,
    /// The guest agent's answers, when the image has the qemu-guest-agent service.
    pub guest_agent: Option<GuestAgentReport>,
    /// What was found on the scratch disk image after power-off.
    pub scratch: Option<ScratchReport>,
    /// Kernel arguments proven present on the running command line.
    pub cmdline_required: Vec<String>,
    /// Service (re)starts seen on the console, per service.
    pub service_restarts: BTreeMap<String, u32>,
    pub log: PathBuf,
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

pub const STATUS_PREFIX: &str = "MACHINED-STATUS ";

/// Console lines that mean the boot went wrong, whatever machined says.
const FAILURE_MARKERS: [&str; 8] = [
    "Kernel panic",
    "Oops",
    "BUG:",
    "WARNING: CPU",
    "------------[ cut here ]------------",
    "MACHINED-FATAL",
    "MACHINED-SCRATCH-CLOSE-FAILED",
    "Call trace:",
];

/// More restarts than this of one service during a boot is a crash loop.
const MAX_RESTARTS: u32 = 2;
/// Arguments every node must boot with, whatever the board and spec say: no slab merging, memory
/// zeroed when freed, only signed modules (and page-table isolation on amd64, see `required_args`).
const HARDENING_ARGS: [&str; 3] = ["slab_nomerge", "init_on_free=1", "module.sig_enforce=1"];
/// The scratch disk boot-test attaches (sparse; the node formats it).
const SCRATCH_SIZE: u64 = 256 * 1024 * 1024;
const MARKER_PREFIX: &[u8] = b"NODEIMG-MARKER-";
/// How long after the status line the guest agent may take to answer.
const GUEST_AGENT_LIMIT: Duration = Duration::from_secs(60);

pub fn run(global: &Global, args: &BootTestArgs) -> Result<()> {
    let board = spec::select_board(&global.boards_dir(), args.board.as_deref(), args.arch)?;
    let report = boot_test(global, &board, args)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_summary(&report);
    }
    Ok(())
}

fn print_summary(r: &BootReport) {
    let s = &r.status;
    println!(
        "boot-test {}: ready in {:.2} s ({}, kernel {}, root {} read-only), powered off {:.2} s after the power button",
        r.board, r.ready_secs, r.accel, s.kernel, s.root_fstype, r.poweroff_secs
    );
    if let Some(milestones) = s.milestones_ms.as_object() {
        let mut steps: Vec<(&String, u64)> = milestones.iter().map(|(k, v)| (k, v.as_u64().unwrap_or(0))).collect();
        steps.sort_by_key(|(_, ms)| *ms);
        let steps: Vec<String> = steps.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  kernel → ready (ms since kernel start): {}", steps.join(", "));
    }
    let extensions: Vec<String> = s.extensions.iter().map(|e| format!("{} {}", e.name, e.version)).collect();
    println!("  extensions: {}", if extensions.is_empty() { "none".to_string() } else { extensions.join(", ") });
    println!("  containerd: {}", s.containerd);
    for svc in &s.services {
        println!(
            "  service {}: {} (pid {:?}, restarts {}, cgroup {}, own namespaces {})",
            svc.name,
            svc.state,
            svc.pid,
            svc.restarts,
            svc.cgroup.as_deref().unwrap_or("-"),
            svc.namespaces.join(",")
        );
    }
    if let Some(ga) = &r.guest_agent {
        println!(
            "  guest agent {} answered guest-ping and guest-info ({} commands enabled, guest-exec {}) {:.2} s after QEMU start",
            ga.version,
            ga.enabled_commands,
            if ga.guest_exec_enabled { "ENABLED" } else { "disabled" },
            r.guest_agent_secs.unwrap_or_default()
        );
    }
    println!("  shells found: none of {} entries walked", s.shells_checked);
    match &r.scratch {
        Some(sc) => println!(
            "  scratch: {} on the node; {} bytes written to {}, marker {} not found on the disk",
            s.scratch,
            sc.nonzero_bytes,
            sc.image.display(),
            sc.marker
        ),
        None => println!("  scratch: {}", s.scratch),
    }
    println!("  kernel arguments present: {}", r.cmdline_required.join(" "));
}

pub fn boot_test(global: &Global, board: &Board, args: &BootTestArgs) -> Result<BootReport> {
    let dir = global.board_out_dir(&board.name);
    let manifest = Manifest::load(&dir).with_context(|| {
        format!("boot-test needs a built image: run `cargo xtask build-image --board {}`", board.name)
    })?;
    let disk = manifest
        .artifacts
        .iter()
        .find(|a| a.file.ends_with(".qcow2"))
        .or_else(|| manifest.artifacts.iter().find(|a| a.file.ends_with(".raw")))
        .map(|a| dir.join(&a.file))
        .context("manifest.json lists no disk image")?;
    hosttools::ensure(&hosttools::for_boot(board))?;
    let accel = qemu::choose_accel(board, args.accel)?;
    let timeout = Duration::from_secs(args.timeout.unwrap_or(board.file.qemu.boot_timeout_secs));
    let devices = NodeDevices {
        scratch_disk: match &board.file.scratch_disk {
            Some(rule) => Some((blank_scratch_disk(&dir)?, rule.serial.clone())),
            None => None,
        },
        guest_agent_socket: Some(dir.join("qga.sock")),
        rng: true,
    };
    let machine =
        Machine { board, disk: &disk, serial_log: dir.join("boot.log"), qmp_socket: dir.join("qmp.sock"), accel };
    let step = progress::step(format!("booting {} ({accel})", board.name));
    let started = Instant::now();
    let (mut qemu, qemu_stderr) = machine.start_with(&devices)?;
    let (status, ready) = wait_for_status(&mut qemu, &machine.serial_log, &qemu_stderr, started, timeout)?;
    let cmdline_required = check_status(&status, &manifest, board, &machine.serial_log)?;

    let has_agent = status.services.iter().any(|s| s.name == "qemu-guest-agent");
    let (guest_agent, guest_agent_secs) = match (&devices.guest_agent_socket, has_agent) {
        (Some(socket), true) => {
            step.set_message("asking the guest agent");
            let report = ask_guest_agent(socket).with_context(|| {
                format!(
                    "{}: the guest agent did not answer; console tail:\n{}",
                    board.name,
                    cmd::tail(&std::fs::read_to_string(&machine.serial_log).unwrap_or_default(), 30)
                )
            })?;
            (Some(report), Some(started.elapsed().as_secs_f64()))
        }
        _ => (None, None),
    };

    step.set_message("pressing the power button");
    let pressed = Instant::now();
    let mut qmp = Qmp::connect(&machine.qmp_socket, Duration::from_secs(5))?;
    qmp.execute("system_powerdown")?;
    let exited = qemu.wait_timeout(Duration::from_secs(30))?;
    let poweroff = pressed.elapsed();
    step.done();
    let log = std::fs::read_to_string(&machine.serial_log).unwrap_or_default();
    if exited.is_none() {
        qemu.kill();
        bail!(
            "{}: the machine did not power off within 30 s of the ACPI power button; console tail:\n{}",
            board.name,
            cmd::tail(&log, 30)
        );
    }
    if !log.contains("MACHINED-SHUTDOWN") {
        bail!(
            "{}: QEMU exited without machined's MACHINED-SHUTDOWN line; console tail:\n{}",
            board.name,
            cmd::tail(&log, 30)
        );
    }
    scan_for_failures(&log, &machine.serial_log)?;
    let service_restarts = check_crash_loops(&log, &machine.serial_log)?;
    let scratch = match &devices.scratch_disk {
        Some((image, _)) => {
            let marker = status.scratch.get("marker").and_then(|m| m.as_str()).unwrap_or_default().to_string();
            let report = scan_scratch_disk(image, &marker)?;
            if !log.contains("MACHINED-SCRATCH-CLOSED") {
                bail!(
                    "{}: machined did not report closing the scratch disk at shutdown; console tail:\n{}",
                    board.name,
                    cmd::tail(&log, 30)
                );
            }
            // Only the findings are kept; the image itself is 256 MiB of ciphertext.
            let _ = std::fs::remove_file(image);
            Some(report)
        }
        None => None,
    };
    for socket in [&machine.qmp_socket].into_iter().chain(&devices.guest_agent_socket) {
        let _ = std::fs::remove_file(socket);
    }
    Ok(BootReport {
        board: board.name.clone(),
        accel,
        ready_secs: ready.as_secs_f64(),
        guest_agent_secs,
        poweroff_secs: poweroff.as_secs_f64(),
        status,
        guest_agent,
        scratch,
        cmdline_required,
        service_restarts,
        log: machine.serial_log.clone(),
    })
}

/// A new sparse, all-zero disk image in the board's output directory, for this run only.
fn blank_scratch_disk(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("scratch.raw");
    let _ = std::fs::remove_file(&path);
    let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(SCRATCH_SIZE).with_context(|| format!("sizing {}", path.display()))?;
    Ok(path)
}

/// guest-sync, then guest-ping and guest-info.
fn ask_guest_agent(socket: &Path) -> Result<GuestAgentReport> {
    let mut agent = GuestAgent::connect(socket, Duration::from_secs(5))?;
    agent.sync(GUEST_AGENT_LIMIT)?;
    let ping = agent.execute("guest-ping", Duration::from_secs(10))?;
    if ping != serde_json::json!({}) {
        bail!("guest-ping returned {ping}, expected {{}}");
    }
    let info = agent.execute("guest-info", Duration::from_secs(10))?;
    let version = info.get("version").and_then(|v| v.as_str()).context("guest-info has no version")?.to_string();
    let commands = info.get("supported_commands").and_then(|c| c.as_array()).cloned().unwrap_or_default();
    let enabled = |c: &serde_json::Value| c.get("enabled").and_then(|e| e.as_bool()).unwrap_or(false);
    let guest_exec_enabled =
        commands.iter().any(|c| c.get("name").and_then(|n| n.as_str()) == Some("guest-exec") && enabled(c));
    Ok(GuestAgentReport {
        ping: true,
        version,
        enabled_commands: commands.iter().filter(|c| enabled(c)).count(),
        guest_exec_enabled,
    })
}

/// Reads the whole scratch image: counts what was written and looks for the marker and its prefix.
fn scan_scratch_disk(image: &Path, marker: &str) -> Result<ScratchReport> {
    if !marker.starts_with("NODEIMG-MARKER-") {
        bail!("machined reported no scratch marker (status scratch.marker is {marker:?})");
    }
    let mut file = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size_bytes = file.metadata()?.len();
    let needles: [&[u8]; 2] = [marker.as_bytes(), MARKER_PREFIX];
    let overlap = marker.len() - 1;
    let mut found = [false; 2];
    let mut nonzero_bytes = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    let mut carried = 0; // bytes kept from the previous chunk so a marker across the boundary is seen
    loop {
        let n = file.read(&mut buf[carried..]).with_context(|| format!("reading {}", image.display()))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..carried + n];
        nonzero_bytes += chunk[carried..].iter().filter(|b| **b != 0).count() as u64;
        for (needle, hit) in needles.iter().zip(found.iter_mut()) {
            *hit |= contains(chunk, needle);
        }
        let keep = overlap.min(chunk.len());
        let tail_start = chunk.len() - keep;
        buf.copy_within(tail_start..tail_start + keep, 0);
        carried = keep;
    }
    let report = ScratchReport {
        image: image.to_path_buf(),
        size_bytes,
        nonzero_bytes,
        marker: marker.to_string(),
        marker_found: found[0],
        marker_prefix_found: found[1],
    };
    if report.marker_found || report.marker_prefix_found {
        bail!(
            "the scratch disk image {} holds {} in plain text: /var was not encrypted",
            image.display(),
            if report.marker_found { marker } else { "the marker prefix NODEIMG-MARKER-" }
        );
    }
    if report.nonzero_bytes == 0 {
        bail!(
            "the scratch disk image {} is all zeros: the node never wrote to it, so the marker's absence proves nothing",
            image.display()
        );
    }
    Ok(report)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at..].starts_with(needle) {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Polls the console until machined's status line, a failure, QEMU's exit or the timeout.
pub fn wait_for_status(
    qemu: &mut crate::cmd::Running,
    serial_log: &Path,
    qemu_stderr: &Path,
    started: Instant,
    timeout: Duration,
) -> Result<(Status, Duration)> {
    let (line, elapsed) = wait_for_line(qemu, serial_log, qemu_stderr, started, timeout, STATUS_PREFIX)?;
    let status: Status = serde_json::from_str(line.trim())
        .with_context(|| format!("machined's status line is not the expected JSON: {line}"))?;
    Ok((status, elapsed))
}

/// Polls the console until a whole line holding `prefix` appears (returning what follows it and the
/// time since `started`), or fails on a console failure, QEMU's exit or the timeout. boot-test and
/// bench's floor boot both wait through here, so the two times they compare are taken alike.
pub fn wait_for_line(
    qemu: &mut crate::cmd::Running,
    serial_log: &Path,
    qemu_stderr: &Path,
    started: Instant,
    timeout: Duration,
    prefix: &str,
) -> Result<(String, Duration)> {
    loop {
        let log = std::fs::read_to_string(serial_log).unwrap_or_default();
        // Only whole lines: the line may be half-written when the file is read.
        let complete = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        if let Some(rest) = complete.lines().find_map(|l| l.split_once(prefix).map(|(_, rest)| rest)) {
            return Ok((rest.to_string(), started.elapsed()));
        }
        scan_for_failures(&log, serial_log)?;
        if let Some(exit) = qemu.try_wait()? {
            let stderr = std::fs::read_to_string(qemu_stderr).unwrap_or_default();
            bail!(
                "QEMU exited ({exit}) before the console showed {}\n`{}`\nQEMU stderr:\n{}console tail:\n{}",
                prefix.trim(),
                qemu.command_line(),
                cmd::tail(&stderr, 10),
                cmd::tail(&log, 30)
            );
        }
        if started.elapsed() > timeout {
            qemu.kill();
            bail!(
                "no {} line within {} s (console in {}); console tail:\n{}",
                prefix.trim(),
                timeout.as_secs(),
                serial_log.display(),
                cmd::tail(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fails on a kernel panic, Oops, BUG/WARNING splat or machined failure anywhere in the console.
pub fn scan_for_failures(log: &str, path: &Path) -> Result<()> {
    for (index, line) in log.lines().enumerate() {
        if let Some(marker) = FAILURE_MARKERS.iter().find(|m| line.contains(*m)) {
            let lines: Vec<&str> = log.lines().collect();
            let from = index.saturating_sub(5);
            let to = (index + 25).min(lines.len());
            bail!("console shows {marker:?} at {}:{}:\n{}", path.display(), index + 1, lines[from..to].join("\n"));
        }
    }
    Ok(())
}

/// Counts machined's restart lines per service; more than MAX_RESTARTS for one is a crash loop.
fn check_crash_loops(log: &str, path: &Path) -> Result<BTreeMap<String, u32>> {
    let mut restarts: BTreeMap<String, u32> = BTreeMap::new();
    for line in log.lines() {
        if let Some(rest) = line.split_once("MACHINED-SERVICE name=").map(|(_, r)| r) {
            let name = rest.split_whitespace().next().unwrap_or_default().to_string();
            let count = restarts.entry(name).or_insert(0);
            if rest.contains("restarting in") {
                *count += 1;
            }
        }
    }
    if let Some((name, count)) = restarts.iter().find(|(_, n)| **n > MAX_RESTARTS) {
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains(&format!("name={name} ")) || l.contains(&format!("[{name}] "))).collect();
        bail!(
            "service {name} is crash-looping: restarted {count} times (more than {MAX_RESTARTS}) in {}:\n{}",
            path.display(),
            cmd::tail(&lines.join("\n"), 20)
        );
    }
    Ok(restarts)
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

/// Checks the status line against the image and board; returns the kernel arguments proven present.
fn check_status(status: &Status, manifest: &Manifest, board: &Board, log: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
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

    // /var: the scratch disk, encrypted, or (without a scratch-disk rule) a tmpfs.
    let scratch = &status.scratch;
    let field = |k: &str| scratch.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    if board.file.scratch_disk.is_some() {
        if !field("device").starts_with("/dev/")
            || !field("mapped").starts_with("/dev/dm-")
            || field("fstype") != "ext4"
            || !field("marker").starts_with("NODEIMG-MARKER-")
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

    if !problems.is_empty() {
        bail!(
            "{}: machined's status disproves the image ({}):\n  {}",
            board.name,
            log.display(),
            problems.join("\n  ")
        );
    }
    Ok(required)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_needle_anywhere() {
        assert!(contains(b"xxNODEIMG-MARKER-1", b"NODEIMG-MARKER-1"));
        assert!(contains(b"NNODEIMG-MARKER-", b"NODEIMG-MARKER-"));
        assert!(!contains(b"NODEIMG-MARKER", b"NODEIMG-MARKER-"));
        assert!(!contains(b"", b"N"));
    }

    #[test]
    fn scratch_scan_finds_a_marker_across_chunk_boundaries_and_counts_writes() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("scratch.raw");
        let marker = "NODEIMG-MARKER-00112233445566778899aabbccddeeff";
        let mut data = vec![0u8; (4 << 20) + 4096];
        let at = (4 << 20) - 10; // straddles the first 4 MiB read
        data[at..at + marker.len()].copy_from_slice(marker.as_bytes());
        std::fs::write(&image, &data).unwrap();
        let err = scan_scratch_disk(&image, marker).unwrap_err().to_string();
        assert!(err.contains("plain text"), "{err}");

        data[at..at + marker.len()].copy_from_slice(&vec![0x5a; marker.len()]);
        std::fs::write(&image, &data).unwrap();
        let report = scan_scratch_disk(&image, marker).unwrap();
        assert_eq!(report.nonzero_bytes, marker.len() as u64);
        assert!(!report.marker_found && !report.marker_prefix_found);

        std::fs::write(&image, vec![0u8; 8192]).unwrap();
        assert!(scan_scratch_disk(&image, marker).unwrap_err().to_string().contains("all zeros"));
        assert!(scan_scratch_disk(&image, "").unwrap_err().to_string().contains("no scratch marker"));
    }

    #[test]
    fn crash_loops_are_counted_per_service() {
        let log = "MACHINED-SERVICE name=a started pid=5 restarts=0\n\
                   MACHINED-SERVICE name=a exited (status 1) after 0.1 s; restarting in 1 s\n\
                   MACHINED-SERVICE name=b exited (signal SIGTERM) after 9.0 s\n";
        let counts = check_crash_loops(log, Path::new("boot.log")).unwrap();
        assert_eq!(counts.get("a"), Some(&1));
        assert_eq!(counts.get("b"), Some(&0));
        let looping =
            log.to_string() + &"MACHINED-SERVICE name=a exited (status 1) after 0.1 s; restarting in 2 s\n".repeat(2);
        let err = check_crash_loops(&looping, Path::new("boot.log")).unwrap_err().to_string();
        assert!(err.contains("service a is crash-looping: restarted 3 times"), "{err}");
    }
}

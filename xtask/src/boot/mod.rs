//! Booting the built disk in QEMU under UEFI firmware (never `-kernel`) and proving what the running
//! machine is ([`boot_test`]):
//!
//! 1. The disk manifest.json names (qcow2, else raw) boots as a node, opened as a snapshot, with a
//!    blank scratch disk, the guest agent's virtio-serial port and a virtio entropy source.
//! 2. The console is watched until machined's status line (a failure or timeout ends it early).
//! 3. From the host: the guest agent answers guest-ping and guest-info (when the image runs it).
//! 4. The ACPI power button (QMP system_powerdown), and QEMU's exit.
//! 5. The scratch disk image is scanned for the marker machined wrote to /var.
//! 6. The verdict (verdict.rs) judges all of it at once: status, console, agent, scratch.
//!
//! With `--secure-boot` the machine runs the board's Secure Boot firmware with the variable store the
//! signed build enrolled its keys into, and the verdict also wants Secure Boot on and the kernel
//! locked down. That boot is the positive control for what follows it:
//!
//! 7. The refusals (refusal.rs): an unsigned UKI, one signed by another db key and the signed one with
//!    a byte of its .initrd flipped, each on a disk of its own under the same firmware and store, each
//!    proven refused by the firmware (verdict.rs, `judge_refusal`).
//!
//! The console is kept in out/<board>/boot.log (boot-secure-boot.log, refusal-*.log); timings go in
//! the report.

pub mod console;
pub mod qemu;
pub mod qmp;
pub mod refusal;
pub mod scan;
pub mod verdict;

use crate::image::manifest::Manifest;
use crate::spec::protocol::{FLOOR, MARKER_PREFIX, STATUS};
use crate::spec::workspace::Workspace;
use crate::spec::Board;
use crate::util::host;
use crate::util::progress;
use anyhow::{bail, Context, Result};
use qemu::{Accel, Firmware, Machine, NodeDevices};
use qmp::{GuestAgent, Qmp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use verdict::{Evidence, GuestAgentReport, RefusalProven, ScratchReport, Status};

/// How to boot.
#[derive(Clone, Copy, Debug)]
pub struct BootOptions {
    pub accel: Accel,
    /// Overrides the board's boot timeout.
    pub timeout: Option<Duration>,
    /// Boot under the board's Secure Boot firmware with the build's enrolled variable store.
    pub secure_boot: bool,
    /// With `secure_boot`: after the boot, prove the firmware refuses each changed image.
    pub refusals: bool,
}

/// What booting `board` needs on the host; with Secure Boot, also what the refusals sign with.
pub fn requirements(board: &Board, secure_boot: bool) -> Vec<host::Requirement> {
    let mut reqs = qemu::requirements(board);
    if secure_boot {
        reqs.extend(refusal::requirements());
    }
    reqs
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
    /// Booted under the Secure Boot firmware with our keys enrolled.
    pub secure_boot: bool,
    /// The images the firmware was proven to refuse (with `--secure-boot`).
    pub refusals: Vec<RefusalProven>,
}

/// How long after the status line the guest agent may take to answer.
const GUEST_AGENT_LIMIT: Duration = Duration::from_secs(60);
/// How long after the power button the machine may take to power off.
const POWEROFF_LIMIT: Duration = Duration::from_secs(30);

/// Boots the image in out/<board>/ and proves it; see the module doc for the steps.
pub fn boot_test(ws: &Workspace, board: &Board, options: &BootOptions) -> Result<BootReport> {
    // 1. Boot.
    let dir = ws.board_out_dir(&board.name);
    let manifest = Manifest::load(&dir).with_context(|| {
        format!("boot-test needs a built image: run `cargo xtask build-image --board {}`", board.name)
    })?;
    let disk = manifest
        .artifact(".qcow2")
        .or_else(|| manifest.artifact(".raw"))
        .map(|a| dir.join(&a.file))
        .context("manifest.json lists no disk image")?;
    host::ensure(&requirements(board, options.secure_boot))?;
    let accel = qemu::choose_accel(board, options.accel)?;
    let timeout = options.timeout.unwrap_or(Duration::from_secs(board.file.qemu.boot_timeout_secs));
    let (firmware, log_name) = if options.secure_boot {
        let vars = manifest.secure_boot.as_ref().and_then(|s| s.vars.as_ref()).with_context(|| {
            format!(
                "boot-test --secure-boot needs a build signed for Secure Boot with its variable store: run `cargo \
                 xtask build-image --board {} --secure-boot-keys DIR`",
                board.name
            )
        })?;
        (Firmware::secure_boot(board, &dir.join(vars))?, "boot-secure-boot.log")
    } else {
        (Firmware::plain(board), "boot.log")
    };
    let scratch_image = dir.join("scratch.raw");
    let devices = NodeDevices {
        scratch_disk: match &board.file.scratch_disk {
            Some(rule) => {
                scan::blank_disk(&scratch_image, scan::SCRATCH_SIZE)?;
                Some((scratch_image.clone(), rule.serial.clone()))
            }
            None => None,
        },
        guest_agent_socket: Some(dir.join("qga.sock")),
        rng: true,
    };
    let machine = Machine {
        board,
        firmware: &firmware,
        disk: &disk,
        serial_log: dir.join(log_name),
        qmp_socket: dir.join("qmp.sock"),
        accel,
    };
    let secure = if firmware.secure_boot { ", Secure Boot" } else { "" };
    let step = progress::step(format!("booting {} ({accel}{secure})", board.name));
    let started = Instant::now();
    let (mut qemu, qemu_stderr) = machine.start_with(&devices)?;

    // 2. The status line.
    let (line, ready) = console::wait_for_line(&mut qemu, &machine.serial_log, &qemu_stderr, started, timeout, STATUS)?;
    let status: Status = serde_json::from_str(line.trim())
        .with_context(|| format!("machined's status line is not the expected JSON: {line}"))?;

    // 3. The guest agent, from the host.
    let has_agent = status.services.iter().any(|s| s.name == "qemu-guest-agent");
    let (guest_agent, guest_agent_secs) = match (&devices.guest_agent_socket, has_agent) {
        (Some(socket), true) => {
            step.set_message("asking the guest agent");
            let answer = ask_guest_agent(socket).map_err(|e| format!("{e:#}"));
            (Some(answer), Some(started.elapsed().as_secs_f64()))
        }
        _ => (None, None),
    };

    // 4. Power button.
    step.set_message("pressing the power button");
    let pressed = Instant::now();
    let mut qmp = Qmp::connect(&machine.qmp_socket, Duration::from_secs(5))?;
    qmp.execute("system_powerdown")?;
    let exited = qemu.wait_timeout(POWEROFF_LIMIT)?;
    let poweroff = pressed.elapsed();
    step.done();
    let log = std::fs::read_to_string(&machine.serial_log).unwrap_or_default();
    if exited.is_none() {
        qemu.kill();
        bail!(
            "{}: the machine did not power off within {} s of the ACPI power button; console tail:\n{}",
            board.name,
            POWEROFF_LIMIT.as_secs(),
            crate::util::cmd::tail(&log, 30)
        );
    }

    // 5. The scratch disk.
    let scratch = match &devices.scratch_disk {
        Some((image, _)) => {
            let marker = status.scratch.get("marker").and_then(|m| m.as_str()).unwrap_or_default().to_string();
            let mut needles: Vec<&[u8]> = vec![MARKER_PREFIX.as_bytes()];
            if marker.starts_with(MARKER_PREFIX) {
                needles.push(marker.as_bytes());
            }
            let findings = scan::scan(image, &needles)?;
            // Only the findings are kept; the image itself is 256 MiB of ciphertext.
            let _ = std::fs::remove_file(image);
            Some(ScratchReport::new(&marker, &findings))
        }
        None => None,
    };
    for socket in [&machine.qmp_socket].into_iter().chain(&devices.guest_agent_socket) {
        let _ = std::fs::remove_file(socket);
    }

    // 6. The verdict.
    let evidence = Evidence {
        status: &status,
        log: &log,
        log_path: &machine.serial_log,
        guest_agent: guest_agent.as_ref(),
        scratch: scratch.as_ref(),
        secure_boot: firmware.secure_boot,
    };
    let proven = verdict::judge(&evidence, &manifest, board)?;

    // 7. The refusals, now that the signed image has booted under the same firmware.
    let refusals = if firmware.secure_boot && options.refusals {
        refusal::prove_refusals(&refusal::Run {
            board,
            manifest: &manifest,
            dir: &dir,
            firmware: &firmware,
            accel,
            timeout,
        })?
    } else {
        Vec::new()
    };
    Ok(BootReport {
        board: board.name.clone(),
        accel,
        ready_secs: ready.as_secs_f64(),
        guest_agent_secs,
        poweroff_secs: poweroff.as_secs_f64(),
        status,
        guest_agent: guest_agent.and_then(Result::ok),
        scratch,
        cmdline_required: proven.cmdline_required,
        service_restarts: proven.service_restarts,
        log: machine.serial_log.clone(),
        secure_boot: firmware.secure_boot,
        refusals,
    })
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

/// Seconds from QEMU start to the floor disk's machined line (see image::build::build_floor_disk),
/// waited for exactly as boot-test waits for the status line.
pub fn floor_boot(board: &Board, disk: &Path, dir: &Path) -> Result<f64> {
    let accel = qemu::choose_accel(board, Accel::Auto)?;
    let firmware = Firmware::plain(board);
    let machine = Machine {
        board,
        firmware: &firmware,
        disk,
        serial_log: dir.join("floor-boot.log"),
        qmp_socket: dir.join("floor-qmp.sock"),
        accel,
    };
    let started = Instant::now();
    let (mut qemu, stderr) = machine.start()?;
    let limit = Duration::from_secs(board.file.qemu.boot_timeout_secs);
    let (_, elapsed) = console::wait_for_line(&mut qemu, &machine.serial_log, &stderr, started, limit, FLOOR)
        .with_context(|| format!("the floor boot of {}", board.name))?;
    qemu.kill();
    Ok(elapsed.as_secs_f64())
}

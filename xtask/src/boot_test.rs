//! `cargo xtask boot-test`: boots the disk build-image made (through UEFI firmware, not -kernel),
//! waits for machined's status line, checks what it proves, then presses the ACPI power button over
//! QMP and expects a clean power-off. The console is kept in out/<board>/boot.log.

use crate::build_image::Manifest;
use crate::qemu::{self, Accel, Machine, Qmp};
use crate::spec::{self, Board};
use crate::{cmd, hosttools, progress, Global};
use anyhow::{bail, Context, Result};
use serde::Serialize;
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

/// What machined reports, as far as boot-test checks it.
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
    pub milestones_ms: serde_json::Value,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct BootReport {
    pub board: String,
    pub accel: &'static str,
    /// Seconds from QEMU start to the status line.
    pub ready_secs: f64,
    /// Seconds from the power-button press to QEMU's exit.
    pub poweroff_secs: f64,
    pub status: Status,
    pub log: PathBuf,
}

pub const STATUS_PREFIX: &str = "MACHINED-STATUS ";

/// Console lines that mean the boot went wrong, whatever machined says.
const FAILURE_MARKERS: [&str; 7] = [
    "Kernel panic",
    "Oops",
    "BUG:",
    "WARNING: CPU",
    "------------[ cut here ]------------",
    "MACHINED-FATAL",
    "Call trace:",
];

pub fn run(global: &Global, args: &BootTestArgs) -> Result<()> {
    let board = spec::select_board(&global.boards_dir(), args.board.as_deref(), args.arch)?;
    let report = boot_test(global, &board, args)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "boot-test {}: ready in {:.2} s ({}, kernel {}, root {} read-only), powered off {:.2} s after the power button",
            report.board, report.ready_secs, report.accel, report.status.kernel, report.status.root_fstype, report.poweroff_secs
        );
    }
    Ok(())
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
    let machine =
        Machine { board, disk: &disk, serial_log: dir.join("boot.log"), qmp_socket: dir.join("qmp.sock"), accel };
    let step = progress::step(format!("booting {} ({accel})", board.name));
    let started = Instant::now();
    let (mut qemu, qemu_stderr) = machine.start()?;
    let (status, ready) = wait_for_status(&mut qemu, &machine.serial_log, &qemu_stderr, started, timeout)?;
    check_status(&status, &manifest, board, &machine.serial_log)?;
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
    let _ = std::fs::remove_file(&machine.qmp_socket);
    Ok(BootReport {
        board: board.name.clone(),
        accel,
        ready_secs: ready.as_secs_f64(),
        poweroff_secs: poweroff.as_secs_f64(),
        status,
        log: machine.serial_log.clone(),
    })
}

/// Polls the console until the status line, a failure, QEMU's exit or the timeout.
pub fn wait_for_status(
    qemu: &mut crate::cmd::Running,
    serial_log: &Path,
    qemu_stderr: &Path,
    started: Instant,
    timeout: Duration,
) -> Result<(Status, Duration)> {
    loop {
        let log = std::fs::read_to_string(serial_log).unwrap_or_default();
        if let Some(line) = log.lines().find_map(|l| l.split_once(STATUS_PREFIX).map(|(_, json)| json)) {
            let elapsed = started.elapsed();
            let status: Status = serde_json::from_str(line.trim())
                .with_context(|| format!("machined's status line is not the expected JSON: {line}"))?;
            return Ok((status, elapsed));
        }
        scan_for_failures(&log, serial_log)?;
        if let Some(exit) = qemu.try_wait()? {
            let stderr = std::fs::read_to_string(qemu_stderr).unwrap_or_default();
            bail!(
                "QEMU exited ({exit}) before machined reported status\n`{}`\nQEMU stderr:\n{}console tail:\n{}",
                qemu.command_line(),
                cmd::tail(&stderr, 10),
                cmd::tail(&log, 30)
            );
        }
        if started.elapsed() > timeout {
            qemu.kill();
            bail!(
                "no MACHINED-STATUS line within {} s (console in {}); console tail:\n{}",
                timeout.as_secs(),
                serial_log.display(),
                cmd::tail(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
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

fn check_status(status: &Status, manifest: &Manifest, board: &Board, log: &Path) -> Result<()> {
    let mut problems = Vec::new();
    if status.arch != board.arch().debian() {
        problems.push(format!("arch is {:?}, the board is {}", status.arch, board.arch()));
    }
    if status.root_fstype != "squashfs" {
        problems.push(format!("root filesystem is {:?}, not squashfs", status.root_fstype));
    }
    if !status.root_read_only || status.root_write_errno != Some(30) {
        problems.push(format!(
            "root is not proven read-only (root_read_only={}, write errno {:?}, expected EROFS=30)",
            status.root_read_only, status.root_write_errno
        ));
    }
    if status.image != manifest.image {
        problems.push(format!("image is {:?}, manifest.json says {:?}", status.image, manifest.image));
    }
    if status.version != manifest.version {
        problems.push(format!("version is {:?}, manifest.json says {:?}", status.version, manifest.version));
    }
    if !problems.is_empty() {
        bail!(
            "{}: machined's status disproves the image ({}):\n  {}",
            board.name,
            log.display(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

//! Booting the built disk in QEMU under UEFI firmware (never `-kernel`) and proving what the running
//! machine is ([`boot_test`]). The same disk boots once per role (roles.rs): a worker and a
//! control-plane node from two NoCloud config volumes, and a node whose config is invalid; each boot:
//!
//! 1. The node's config is made (a CIDATA volume, FAT or ISO-9660, or an SMBIOS OEM string) and the
//!    test LAN (lan.rs) started; the disk manifest.json names (qcow2, else raw) boots as a snapshot with a
//!    blank scratch disk, two NICs (QEMU user networking with `restrict=on` forwarding the node's API
//!    port to 127.0.0.1, and the LAN), the guest agent's virtio-serial port and a virtio entropy source.
//! 2. The console is watched until machined's status line (a failure or timeout ends it early).
//! 3. From the host: the node's API through the forward (again after the lease was renewed, where the
//!    role waits for that), and the guest agent's guest-ping and guest-info (when the image runs it).
//! 4. Shutdown, and QEMU's exit: through the guest agent's guest-shutdown when it answered (qemu-ga
//!    runs /sbin/shutdown, machined's applet, which asks machined over its API socket), else the
//!    ACPI power button (QMP system_powerdown).
//! 5. The scratch disk image is scanned for the marker machined wrote to /var.
//! 6. The verdict (verdict.rs) judges all of it at once: status, API, LAN, console, agent, scratch,
//!    RAM.
//!
//! The first role's boot also proves RAM shredding (ram.rs): it is handed a fresh nonce and a shred
//! pause through fw_cfg; its memory is dumped before step 4 (the marker must be there: the positive
//! control) and again, frozen, once machined reports `MACHINED-SHRED-DONE` and before it powers off
//! (the marker must be gone). The other roles get no nonce and must report the marker absent: two
//! 1 GiB dumps under TCG cost about a boot's worth of time, so one role per arch carries the proof.
//!
//! Consoles are kept in out/<board>/boot-<role>.log; timings go in the report.
//!
//! With `--secure-boot` the machine runs the board's Secure Boot firmware with the variable store the
//! signed build enrolled its keys into, and the verdict also wants Secure Boot on and the kernel
//! locked down. That boot is the positive control for what follows it:
//!
//! 7. The refusals (refusal.rs): an unsigned UKI, one signed by another db key and the signed one with
//!    a byte of its .initrd flipped, each on a disk of its own under the same firmware and store, each
//!    proven refused by the firmware (verdict.rs, `judge_refusal`).
//!
//! Under Secure Boot only the first role (the worker) boots, as that positive control: the roles
//! themselves are the plain boot's to prove. Its console is boot-secure-boot-worker.log, the
//! refusals' refusal-*.log.

pub mod console;
pub mod lan;
pub mod qemu;
pub mod qmp;
pub mod ram;
pub mod refusal;
pub mod roles;
pub mod scan;
pub mod verdict;

use crate::disk::esp::build_esp;
use crate::image::manifest::Manifest;
use crate::spec::protocol::{CONFIG_OEM_STRING, CONFIG_VOLUME_LABEL, FLOOR, MARKER_PREFIX, SHRED_DONE, STATUS};
use crate::spec::workspace::Workspace;
use crate::spec::Board;
use crate::util::cmd::cmd;
use crate::util::digest::sha256_file;
use crate::util::host;
use crate::util::progress;
use anyhow::{bail, Context, Result};
use base64::Engine;
use lan::{Lan, LanLog};
use qemu::{Accel, Firmware, Machine, NodeDevices};
use qmp::{GuestAgent, Qmp};
use ram::RamProof;
use roles::{ConfigDelivery, Scenario, VolumeFormat};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use verdict::{Evidence, GuestAgentReport, RamReport, RefusalProven, ScratchReport, ShutdownRequest, Status};

/// How to boot.
#[derive(Clone, Copy, Debug)]
pub struct BootOptions {
    pub accel: Accel,
    /// Overrides the board's boot timeout.
    pub timeout: Option<Duration>,
    /// Only the first role (the worker): what bench times.
    pub first_role_only: bool,
    /// Boot under the board's Secure Boot firmware with the build's enrolled variable store.
    pub secure_boot: bool,
    /// With `secure_boot`: after the boot, prove the firmware refuses each changed image.
    pub refusals: bool,
}

/// What booting `board` needs on the host; with Secure Boot, also what the refusals sign with.
pub fn requirements(board: &Board, secure_boot: bool) -> Vec<host::Requirement> {
    let mut reqs = qemu::requirements(board);
    reqs.push(host::req(XORRISO, "xorriso", "boot-test (the control-plane node's ISO-9660 config volume)"));
    if secure_boot {
        reqs.extend(refusal::requirements());
    }
    reqs
}

#[derive(Debug, Serialize)]
pub struct BootReport {
    pub board: String,
    pub accel: &'static str,
    /// sha256 of the disk every role booted, before the first boot and after the last.
    pub disk_sha256: String,
    pub disk_sha256_after: String,
    /// The first role's figures, for the summary and bench.
    pub ready_secs: f64,
    pub poweroff_secs: f64,
    pub status: Status,
    /// Every role's boot, in order.
    pub nodes: Vec<NodeReport>,
    /// Booted under the Secure Boot firmware with our keys enrolled.
    pub secure_boot: bool,
    /// The images the firmware was proven to refuse (with `--secure-boot`).
    pub refusals: Vec<RefusalProven>,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub role: String,
    /// Seconds from QEMU start to the status line (the node ready).
    pub ready_secs: f64,
    /// Seconds from QEMU start until the guest agent had answered guest-ping and guest-info.
    pub guest_agent_secs: Option<f64>,
    /// The shutdown reason machined reported, as requested: `machine-api-poweroff` (guest-shutdown through
    /// the guest agent) or `power-button`.
    pub shutdown: String,
    /// Seconds from the shutdown request to QEMU's exit (the first role's includes the RAM proof's
    /// frozen dump and shred pause).
    pub poweroff_secs: f64,
    /// machined's own time from the start of its shutdown sequence to `MACHINED-SHRED-DONE`, in ms.
    pub shutdown_ms: Option<u64>,
    /// The memory dumps and what they held, for the role that carries the RAM proof.
    pub ram: Option<RamReport>,
    pub status: Status,
    /// The status as the node's API served it through the forward (the last fetch).
    pub api_status: Option<Status>,
    /// Seconds from the status line to the LAN lease's first renewal, where it was waited for.
    pub renewed_after_secs: Option<f64>,
    pub lan: LanLog,
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

/// How long after the status line the guest agent may take to answer.
const GUEST_AGENT_LIMIT: Duration = Duration::from_secs(60);
/// How long after the power button the machine may take to power off.
const POWEROFF_LIMIT: Duration = Duration::from_secs(30);
/// How long after the status line the LAN lease's renewal may take (it is due at half the lease).
const RENEWAL_LIMIT: Duration = Duration::from_secs(3 * lan::LEASE_SECS as u64);
/// The CIDATA volume: FAT32's smallest size (sparse on the host).
const CONFIG_VOLUME_BYTES: u64 = 34 << 20;
/// Makes the ISO-9660 config volume (its mkisofs emulation, as cloud-init's tools use).
const XORRISO: &str = "xorriso";

/// Boots the image in out/<board>/ once per role and proves it; see the module doc for the steps.
pub fn boot_test(ws: &Workspace, board: &Board, options: &BootOptions) -> Result<BootReport> {
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
    let firmware = if options.secure_boot {
        let vars = manifest.secure_boot.as_ref().and_then(|s| s.vars.as_ref()).with_context(|| {
            format!(
                "boot-test --secure-boot needs a build signed for Secure Boot with its variable store: run `cargo \
                 xtask build-image --board {} --secure-boot-keys DIR`",
                board.name
            )
        })?;
        Firmware::secure_boot(board, &dir.join(vars))?
    } else {
        Firmware::plain(board)
    };
    let disk_sha256 = sha256_file(&disk)?;
    let mut scenarios = roles::scenarios();
    if options.first_role_only || firmware.secure_boot {
        scenarios.truncate(1);
    }
    let mut nodes = Vec::new();
    // The first role carries the RAM proof: two memory dumps under TCG cost a boot's worth of time.
    for (i, scenario) in scenarios.iter().enumerate() {
        let prove_ram = i == 0 && !firmware.secure_boot;
        nodes.push(boot_node(board, &manifest, &disk, &dir, accel, &firmware, options, scenario, prove_ram)?);
    }

    // 7. The refusals, now that the signed image has booted under the same firmware.
    let refusals = if firmware.secure_boot && options.refusals {
        let timeout = options.timeout.unwrap_or(Duration::from_secs(board.file.qemu.boot_timeout_secs));
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
    let disk_sha256_after = sha256_file(&disk)?;
    if disk_sha256_after != disk_sha256 {
        bail!("{}: the disk changed while booting ({disk_sha256} before, {disk_sha256_after} after)", disk.display());
    }
    let first = &nodes[0];
    Ok(BootReport {
        board: board.name.clone(),
        accel,
        disk_sha256,
        disk_sha256_after,
        ready_secs: first.ready_secs,
        poweroff_secs: first.poweroff_secs,
        status: first.status.clone(),
        nodes,
        secure_boot: firmware.secure_boot,
        refusals,
    })
}

/// Makes the file that carries the scenario's config: a CIDATA volume or an OEM-string file.
fn deliver_config(dir: &Path, scenario: &Scenario) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    match &scenario.delivery {
        ConfigDelivery::Volume { format, user_data, meta_data } => {
            let volume = dir.join(format!("cidata-{}.img", scenario.name));
            let files: [(&str, &[u8]); 2] = [("user-data", user_data.as_bytes()), ("meta-data", meta_data.as_bytes())];
            match format {
                VolumeFormat::Fat => {
                    build_esp(&volume, CONFIG_VOLUME_BYTES, &files, 0, 0x0c1d_a7a0, CONFIG_VOLUME_LABEL)
                }
                VolumeFormat::Iso9660 => build_iso(&volume, &files),
            }
            .with_context(|| format!("making the {} config volume", scenario.name))?;
            Ok((Some(volume), None))
        }
        ConfigDelivery::OemString(text) => {
            let file = dir.join(format!("oem-{}.txt", scenario.name));
            let encoded = base64::engine::general_purpose::STANDARD.encode(text);
            std::fs::write(&file, format!("{CONFIG_OEM_STRING}{encoded}"))
                .with_context(|| format!("writing {}", file.display()))?;
            Ok((None, Some(file)))
        }
    }
}

/// An ISO-9660 NoCloud seed as cloud-init's cloud-localds makes one (`-volid cidata -joliet -rock`),
/// from `files` staged in a directory beside `volume` that is removed however this ends.
fn build_iso(volume: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let parent = volume.parent().unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix("cidata-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
    for (name, bytes) in files {
        let path = staging.path().join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let _ = std::fs::remove_file(volume);
    cmd(XORRISO)
        .args(["-as", "mkisofs", "-quiet", "-volid", CONFIG_VOLUME_LABEL, "-joliet", "-rock", "-output"])
        .arg(volume)
        .arg(staging.path())
        .run()
}

/// A free TCP port on 127.0.0.1 for the API forward (taken and released; QEMU binds it next).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?.local_addr()?.port())
}

/// The machine a node boots on, but for the RAM proof's fw_cfg entries: a blank scratch disk (where
/// the board has one), the guest agent's port, an entropy source, the two NICs and the config.
fn node_devices(
    board: &Board,
    dir: &Path,
    lan: &Lan,
    api_port: u16,
    (config_volume, oem_string_file): (Option<PathBuf>, Option<PathBuf>),
) -> Result<NodeDevices> {
    let scratch_image = dir.join("scratch.raw");
    Ok(NodeDevices {
        scratch_disk: match &board.file.scratch_disk {
            Some(rule) => {
                scan::blank_disk(&scratch_image, scan::SCRATCH_SIZE)?;
                Some((scratch_image, rule.serial.clone()))
            }
            None => None,
        },
        guest_agent_socket: Some(dir.join("qga.sock")),
        rng: true,
        api_forward: Some(api_port),
        lan_netdev: Some(lan.netdev("lan0")),
        config_volume,
        oem_string_file,
        fw_cfg: Vec::new(),
    })
}

/// One boot as `scenario`'s node: steps 1 to 6 of the module doc, and the RAM proof when `prove_ram`.
#[allow(clippy::too_many_arguments)] // the boot's inputs, each used once
fn boot_node(
    board: &Board,
    manifest: &Manifest,
    disk: &Path,
    dir: &Path,
    accel: &'static str,
    firmware: &Firmware,
    options: &BootOptions,
    scenario: &Scenario,
    prove_ram: bool,
) -> Result<NodeReport> {
    // 1. Config, LAN, boot.
    let timeout = options.timeout.unwrap_or(Duration::from_secs(board.file.qemu.boot_timeout_secs));
    let config = deliver_config(dir, scenario)?;
    let lan = Lan::start(scenario.offer.clone())?;
    let api_port = free_port()?;
    let ram_proof = if prove_ram { Some(RamProof::new(dir)?) } else { None };
    let devices = NodeDevices {
        fw_cfg: ram_proof.as_ref().map(RamProof::fw_cfg).unwrap_or_default(),
        ..node_devices(board, dir, &lan, api_port, config)?
    };
    let machine = Machine {
        board,
        firmware,
        disk,
        serial_log: dir.join(format!(
            "boot-{}{}.log",
            if firmware.secure_boot { "secure-boot-" } else { "" },
            scenario.name
        )),
        qmp_socket: dir.join("qmp.sock"),
        accel,
    };
    let secure = if firmware.secure_boot { ", Secure Boot" } else { "" };
    let step = progress::step(format!("booting {} as {} ({accel}{secure})", board.name, scenario.name));
    let started = Instant::now();
    let (mut qemu, qemu_stderr) = machine.start_with(&devices)?;

    // 2. The status line.
    let (line, ready) = console::wait_for_line(&mut qemu, &machine.serial_log, &qemu_stderr, started, timeout, STATUS)?;
    let status: Status = serde_json::from_str(line.trim())
        .with_context(|| format!("machined's status line is not the expected JSON: {line}"))?;
    let status_seen = Instant::now();

    // 3. From the host: the API, then the guest agent.
    step.set_message("asking the node's API");
    let mut api_status = fetch_api(api_port).map_err(|e| format!("{e:#}"));
    let mut renewed_after_secs = None;
    if scenario.expect.renewal {
        step.set_message("waiting for the LAN lease's renewal");
        while status_seen.elapsed() < RENEWAL_LIMIT {
            if lan.log().renewals > 0 {
                // Once more, so the API shows the renewal too.
                std::thread::sleep(Duration::from_secs(2));
                renewed_after_secs = Some(status_seen.elapsed().as_secs_f64());
                api_status = fetch_api(api_port).map_err(|e| format!("{e:#}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    } else {
        // The node stays up: the API answers again a little later.
        std::thread::sleep(Duration::from_secs(3));
        api_status = fetch_api(api_port).map_err(|e| format!("{e:#}"));
    }
    let has_agent = status.services.iter().any(|s| s.name == "qemu-guest-agent");
    let (guest_agent, guest_agent_secs) = match (&devices.guest_agent_socket, has_agent) {
        (Some(socket), true) => {
            step.set_message("asking the guest agent");
            let answer = ask_guest_agent(socket).map_err(|e| format!("{e:#}"));
            (Some(answer), Some(started.elapsed().as_secs_f64()))
        }
        _ => (None, None),
    };

    // The RAM proof's positive control: the running node's memory holds the marker.
    let running_dump = ram_proof.as_ref().map(|proof| {
        step.set_message("dumping the running node's memory");
        proof.dump_and_scan(&machine.qmp_socket, false).map_err(|e| format!("{e:#}"))
    });

    // 4. Shutdown.
    let pressed = Instant::now();
    let shutdown = match (&devices.guest_agent_socket, &guest_agent) {
        (Some(socket), Some(Ok(_))) => {
            step.set_message("shutting down through the guest agent");
            let mut agent = GuestAgent::connect(socket, Duration::from_secs(5))?;
            agent.sync(GUEST_AGENT_LIMIT)?;
            agent.send("guest-shutdown", serde_json::json!({"mode": "powerdown"}))?;
            ShutdownRequest::GuestAgent
        }
        _ => {
            step.set_message("pressing the power button");
            let mut qmp = Qmp::connect(&machine.qmp_socket, Duration::from_secs(5))?;
            qmp.execute("system_powerdown")?;
            ShutdownRequest::PowerButton
        }
    };
    // The RAM proof's other half: frozen after shredding, before the power-off.
    let ram = match (&ram_proof, running_dump) {
        (Some(proof), Some(running)) => {
            step.set_message("waiting for machined to shred, then dumping the memory");
            let shred = console::wait_for_line(
                &mut qemu,
                &machine.serial_log,
                &qemu_stderr,
                Instant::now(),
                POWEROFF_LIMIT,
                SHRED_DONE,
            );
            let after_shred = match shred {
                Ok(_) => Some(proof.dump_and_scan(&machine.qmp_socket, true).map_err(|e| format!("{e:#}"))),
                Err(e) => Some(Err(format!("{e:#}"))),
            };
            Some(RamReport { running, after_shred })
        }
        _ => None,
    };
    drop(ram_proof);
    let exited = qemu.wait_timeout(POWEROFF_LIMIT)?;
    let poweroff = pressed.elapsed();
    step.done();
    let log = std::fs::read_to_string(&machine.serial_log).unwrap_or_default();
    if exited.is_none() {
        qemu.kill();
        bail!(
            "{} as {}: the machine did not power off within {} s of the shutdown request ({shutdown:?}); console tail:\n{}",
            board.name,
            scenario.name,
            POWEROFF_LIMIT.as_secs(),
            crate::util::cmd::tail(&log, 30)
        );
    }
    let lan_log = lan.log();
    drop(lan);

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
    for file in [
        Some(&machine.qmp_socket),
        devices.guest_agent_socket.as_ref(),
        devices.config_volume.as_ref(),
        devices.oem_string_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        let _ = std::fs::remove_file(file);
    }

    // 6. The verdict.
    let evidence = Evidence {
        status: &status,
        log: &log,
        log_path: &machine.serial_log,
        guest_agent: guest_agent.as_ref(),
        scratch: scratch.as_ref(),
        ram: ram.as_ref(),
        api: &api_status,
        lan: &lan_log,
        expect: &scenario.expect,
        delivery: &scenario.delivery,
        role: scenario.name,
        shutdown,
        secure_boot: firmware.secure_boot,
    };
    let proven = verdict::judge(&evidence, manifest, board)?;
    Ok(NodeReport {
        role: scenario.name.to_string(),
        ready_secs: ready.as_secs_f64(),
        guest_agent_secs,
        shutdown: shutdown.reason().to_string(),
        poweroff_secs: poweroff.as_secs_f64(),
        shutdown_ms: shutdown_ms(&log),
        ram,
        status,
        api_status: api_status.ok(),
        renewed_after_secs,
        lan: lan_log,
        guest_agent: guest_agent.and_then(Result::ok),
        scratch,
        cmdline_required: proven.cmdline_required,
        service_restarts: proven.service_restarts,
        log: machine.serial_log.clone(),
    })
}

/// The `ms=` of machined's `MACHINED-SHRED-DONE ms=<ms> ...` line.
fn shutdown_ms(log: &str) -> Option<u64> {
    let line = log.lines().find_map(|l| l.strip_prefix(SHRED_DONE))?;
    line.split_whitespace().find_map(|w| w.strip_prefix("ms="))?.parse().ok()
}

/// The node's status from its API, through the forward on 127.0.0.1.
fn fetch_api(port: u16) -> Result<Status> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to the node's API through 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut document = String::new();
    stream.read_to_string(&mut document).context("reading the node's API")?;
    serde_json::from_str(document.trim())
        .with_context(|| format!("the node's API answered {} bytes that are not its status", document.len()))
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

/// One boot of the floor disk (see image::build::build_floor_disk).
#[derive(Debug, Clone, Copy)]
pub struct FloorBoot {
    /// Seconds from QEMU start to machined's floor line, waited for exactly as boot-test waits for
    /// the status line.
    pub secs: f64,
    /// The kernel's clock when machined printed it: the kernel's share of the boot (the rest is
    /// firmware and stub).
    pub machined_ms: u64,
}

/// Boots the floor disk once.
pub fn floor_boot(board: &Board, disk: &Path, dir: &Path) -> Result<FloorBoot> {
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
    // The machine bench's node boots on (the first role's), so the firmware and kernel find the same
    // devices: the floor differs from the node in its initramfs alone.
    let scenario = &roles::scenarios()[0];
    let lan = Lan::start(scenario.offer.clone())?;
    let devices = node_devices(board, dir, &lan, free_port()?, deliver_config(dir, scenario)?)?;
    let started = Instant::now();
    let (mut qemu, stderr) = machine.start_with(&devices)?;
    let limit = Duration::from_secs(board.file.qemu.boot_timeout_secs);
    let (rest, elapsed) = console::wait_for_line(&mut qemu, &machine.serial_log, &stderr, started, limit, FLOOR)
        .with_context(|| format!("the floor boot of {}", board.name))?;
    qemu.kill();
    let machined_ms = rest
        .trim()
        .strip_prefix("ready_ms=")
        .and_then(|ms| ms.parse().ok())
        .with_context(|| format!("the floor line of {} has no ready_ms=<ms>: {FLOOR}{rest}", board.name))?;
    Ok(FloorBoot { secs: elapsed.as_secs_f64(), machined_ms })
}

//! Starting a board's QEMU under UEFI firmware, talking QMP to it, and deciding TCG versus KVM.
//! Used by boot-test and by bench (which boots a trivial initramfs for the floor).

use crate::cmd::{cmd, Cmd, Running};
use crate::spec::{Arch, Board};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Accelerator choice from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when a probe proves it works for this board, else TCG.
    Auto,
    Tcg,
    Kvm,
}

/// One QEMU machine to start.
pub struct Machine<'a> {
    pub board: &'a Board,
    /// The boot disk (raw or qcow2), opened as a snapshot so the artifact is never modified.
    pub disk: &'a Path,
    /// Serial console capture.
    pub serial_log: PathBuf,
    /// QMP control socket.
    pub qmp_socket: PathBuf,
    pub accel: &'static str,
}

fn disk_format(disk: &Path) -> &'static str {
    if disk.extension().and_then(|e| e.to_str()) == Some("qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

/// What a node boot adds to the board's machine (bench's floor boot adds nothing).
#[derive(Clone, Debug, Default)]
pub struct NodeDevices {
    /// A raw disk image attached as a virtio disk with this serial: the board's scratch disk.
    pub scratch_disk: Option<(PathBuf, String)>,
    /// Host end (a unix socket QEMU listens on) of the virtio-serial port `org.qemu.guest_agent.0`.
    pub guest_agent_socket: Option<PathBuf>,
    /// A virtio entropy source, as cloud VMs have: the firmware hands the kernel a seed from it and
    /// the node's random pool is ready at once (machined draws the scratch key from it).
    pub rng: bool,
}

/// The virtio-serial port name the QEMU guest agent opens.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

impl Machine<'_> {
    pub fn command_with(&self, devices: &NodeDevices) -> Cmd {
        let b = &self.board.file;
        let mut c = cmd(&b.qemu.binary).arg("-machine").arg(format!("{},accel={}", b.qemu.machine, self.accel)).args([
            "-m",
            &b.qemu.memory_mib.to_string(),
            "-smp",
            &b.qemu.smp.to_string(),
        ]);
        if let Some(cpu) = &b.qemu.cpu {
            c = c.args(["-cpu", cpu]);
        }
        c = c
            .args(["-nodefaults", "-display", "none", "-no-reboot", "-no-user-config"])
            .arg("-serial")
            .arg(format!("file:{}", self.serial_log.display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp_socket.display()))
            .args(firmware_args(self.board))
            .arg("-drive")
            .arg(format!("if=none,id=boot,format={},snapshot=on,file={}", disk_format(self.disk), self.disk.display()))
            .args(["-device", "virtio-blk-pci,drive=boot,bootindex=0"]);
        if let Some((image, serial)) = &devices.scratch_disk {
            c = c
                .arg("-drive")
                .arg(format!("if=none,id=scratch,format=raw,file={}", image.display()))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=scratch,serial={serial}"));
        }
        if devices.rng {
            c = c.args(["-device", "virtio-rng-pci"]);
        }
        if let Some(socket) = &devices.guest_agent_socket {
            c = c
                .args(["-device", "virtio-serial-pci,id=vser0", "-chardev"])
                .arg(format!("socket,id=qga0,path={},server=on,wait=off", socket.display()))
                .args(["-device", &format!("virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}")]);
        }
        c
    }

    /// Starts QEMU; its own stderr goes to `<serial_log>.qemu-stderr`.
    pub fn start(&self) -> Result<(Running, PathBuf)> {
        self.start_with(&NodeDevices::default())
    }

    /// Starts QEMU with the node's extra devices.
    pub fn start_with(&self, devices: &NodeDevices) -> Result<(Running, PathBuf)> {
        for stale in [&self.serial_log, &self.qmp_socket].into_iter().chain(&devices.guest_agent_socket) {
            let _ = std::fs::remove_file(stale);
        }
        std::fs::File::create(&self.serial_log).with_context(|| format!("creating {}", self.serial_log.display()))?;
        let stderr_path = self.serial_log.with_extension("qemu-stderr");
        let stderr = std::fs::File::create(&stderr_path)?;
        let stdout = stderr.try_clone()?;
        Ok((self.command_with(devices).spawn(stdout, stderr)?, stderr_path))
    }
}

/// The board's UEFI firmware as pflash: code read-only, the variable store as a throwaway snapshot
/// (so no per-run copy of the template is needed).
fn firmware_args(board: &Board) -> [String; 4] {
    let firmware = &board.file.firmware;
    [
        "-drive".to_string(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={}", firmware.code.display()),
        "-drive".to_string(),
        format!("if=pflash,format=raw,unit=1,snapshot=on,file={}", firmware.vars.display()),
    ]
}

/// Picks the accelerator. KVM must prove itself: on this machine kind /dev/kvm exists but OVMF dies
/// with "KVM internal error" (FACTS.md), so its mere presence decides nothing.
pub fn choose_accel(board: &Board, wanted: Accel) -> Result<&'static str> {
    let host_matches = board.arch() == Arch::Amd64 && std::env::consts::ARCH == "x86_64"
        || board.arch() == Arch::Arm64 && std::env::consts::ARCH == "aarch64";
    match wanted {
        Accel::Tcg => Ok("tcg"),
        Accel::Kvm if !host_matches => {
            bail!("KVM cannot run {} guests on this {} host", board.arch(), std::env::consts::ARCH)
        }
        Accel::Kvm => Ok("kvm"),
        Accel::Auto if !host_matches || !Path::new("/dev/kvm").exists() => Ok("tcg"),
        Accel::Auto => Ok(if kvm_probe(board)? { "kvm" } else { "tcg" }),
    }
}

/// Boots the board's firmware alone under KVM for up to 10 s: KVM works if the firmware reaches its
/// boot manager (it prints "BdsDxe" on the serial line) and QEMU reports no KVM error.
fn kvm_probe(board: &Board) -> Result<bool> {
    let scratch = tempfile::tempdir().context("creating a directory for the KVM probe")?;
    let serial = scratch.path().join("serial.log");
    let output_path = scratch.path().join("qemu.log");
    let output = std::fs::File::create(&output_path)?;
    let b = &board.file;
    let mut probe = cmd(&b.qemu.binary)
        .arg("-machine")
        .arg(format!("{},accel=kvm", b.qemu.machine))
        .args(["-m", "256", "-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .args(firmware_args(board))
        .spawn(output.try_clone()?, output)?;
    let start = Instant::now();
    let works = loop {
        let qemu_output = std::fs::read_to_string(&output_path).unwrap_or_default();
        if qemu_output.contains("KVM internal error")
            || qemu_output.contains("Could not access KVM")
            || probe.try_wait()?.is_some()
        {
            break false;
        }
        if std::fs::read_to_string(&serial).unwrap_or_default().contains("BdsDxe") {
            break true;
        }
        if start.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    probe.kill();
    Ok(works)
}

/// Connects to a socket QEMU creates once it has started, retrying for up to `limit`.
fn connect_unix(socket: &Path, limit: Duration, what: &str) -> Result<UnixStream> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() > limit => {
                return Err(e).with_context(|| format!("connecting to {what} {}", socket.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A QMP connection (line-delimited JSON over a unix socket).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (waiting up to `limit` for QEMU to create the socket) and negotiates capabilities.
    pub fn connect(socket: &Path, limit: Duration) -> Result<Qmp> {
        let stream = connect_unix(socket, limit, "QMP socket")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut qmp = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading from QMP")? == 0 {
            bail!("QMP connection closed");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent invalid JSON: {line}"))
    }

    /// Runs a command and returns its `return` value, skipping asynchronous events.
    pub fn execute(&mut self, command: &str) -> Result<serde_json::Value> {
        writeln!(self.writer, "{}", serde_json::json!({ "execute": command })).context("writing to QMP")?;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                bail!("QMP {command} failed: {error}");
            }
        }
    }
}

/// A QEMU guest agent connection: line-delimited JSON over the host end of its virtio-serial port.
/// The port carries whatever an earlier client left half-read, and QEMU drops what the host writes
/// while the agent has not opened its end, so every exchange starts with `guest-sync` (a fresh id,
/// echoed back once the agent is really listening), resent until answered.
pub struct GuestAgent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl GuestAgent {
    /// Connects to the socket QEMU listens on (it exists once QEMU has started).
    pub fn connect(socket: &Path, limit: Duration) -> Result<GuestAgent> {
        let stream = connect_unix(socket, limit, "the guest agent socket")?;
        // Seeded from the clock so ids differ between runs (a stale reply cannot match).
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Ok(GuestAgent { reader: BufReader::new(stream.try_clone()?), writer: stream, next_id: seed % 1_000_000_000 })
    }

    /// Resynchronises: sends guest-sync with a fresh id until the agent echoes it, within `limit`.
    pub fn sync(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer");
        while start.elapsed() < limit {
            self.next_id += 1;
            let id = self.next_id;
            let request = serde_json::json!({"execute": "guest-sync", "arguments": {"id": id}});
            writeln!(self.writer, "{request}").context("writing to the guest agent")?;
            let attempt = Instant::now();
            self.writer.set_read_timeout(Some(Duration::from_millis(500)))?;
            while attempt.elapsed() < Duration::from_secs(2) {
                match self.read_message() {
                    Ok(Some(message)) if message.get("return").and_then(|r| r.as_u64()) == Some(id) => return Ok(()),
                    Ok(Some(message)) => last = format!("unexpected reply {message}"),
                    Ok(None) => {}
                    Err(e) => {
                        last = format!("{e:#}");
                        break;
                    }
                }
            }
        }
        bail!("the guest agent did not answer guest-sync within {} s ({last})", limit.as_secs())
    }

    /// One line: Ok(None) on a read timeout or a line that is not JSON (stale bytes, or the 0xFF an
    /// agent sends to delimit a resynchronisation).
    fn read_message(&mut self) -> Result<Option<serde_json::Value>> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => bail!("the guest agent socket was closed"),
            Ok(_) => {
                let start = line.iter().position(|&b| b != 0xff).unwrap_or(line.len());
                Ok(serde_json::from_slice(&line[start..]).ok())
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e).context("reading from the guest agent"),
        }
    }

    /// Runs a command (after `sync`) and returns its `return` value.
    pub fn execute(&mut self, command: &str, limit: Duration) -> Result<serde_json::Value> {
        writeln!(self.writer, "{}", serde_json::json!({ "execute": command })).context("writing to the guest agent")?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(message) = self.read_message()? {
                if let Some(value) = message.get("return") {
                    return Ok(value.clone());
                }
                if let Some(error) = message.get("error") {
                    bail!("guest agent {command} failed: {error}");
                }
            }
        }
        bail!("the guest agent did not answer {command} within {} s", limit.as_secs())
    }
}

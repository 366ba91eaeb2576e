//! Starting a board's QEMU under UEFI firmware (its ordinary build, or its Secure Boot build with a
//! variable store holding our keys), and deciding TCG versus KVM. Used by boot-test and by bench
//! (which boots a trivial initramfs for the floor).

use crate::spec::protocol::API_PORT;
use crate::spec::{Arch, Board};
use crate::util::cmd::{cmd, Cmd, Running};
use crate::util::host::{req, Requirement};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What booting `board` in QEMU needs on the host.
pub fn requirements(board: &Board) -> Vec<Requirement> {
    let f = &board.file;
    let mut reqs = vec![
        req(f.qemu.binary.clone(), f.qemu.package.clone(), "boot-test"),
        req(f.firmware.code.display().to_string(), f.firmware.package.clone(), "boot-test (UEFI firmware)"),
        req(f.firmware.vars.display().to_string(), f.firmware.package.clone(), "boot-test (UEFI variables)"),
    ];
    if let Some(secure_boot) = &f.secure_boot {
        let code = secure_boot.code.display().to_string();
        reqs.push(req(code, f.firmware.package.clone(), "boot-test --secure-boot (Secure Boot firmware)"));
    }
    reqs
}

/// The UEFI firmware a machine starts: code and variable store as pflash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    /// Opened as a throwaway snapshot, so one store (or the package's template) serves every boot.
    pub vars: PathBuf,
    /// The code keeps the variables in SMM: QEMU needs `smm=on` and a secure pflash.
    pub smm: bool,
    /// Whether this is the board's Secure Boot firmware with our keys enrolled.
    pub secure_boot: bool,
}

impl Firmware {
    /// The board's ordinary firmware with the package's empty variable store: no keys, Secure Boot off.
    pub fn plain(board: &Board) -> Firmware {
        let f = &board.file.firmware;
        Firmware { code: f.code.clone(), vars: f.vars.clone(), smm: false, secure_boot: false }
    }

    /// The board's Secure Boot firmware with `vars`, the store a signed build enrolled its keys into.
    pub fn secure_boot(board: &Board, vars: &Path) -> Result<Firmware> {
        let Some(secure_boot) = &board.file.secure_boot else {
            bail!("{}: the board has no [secure-boot] table naming its Secure Boot firmware", board.path.display());
        };
        Ok(Firmware {
            code: secure_boot.code.clone(),
            vars: vars.to_path_buf(),
            smm: secure_boot.smm,
            secure_boot: true,
        })
    }

    /// `-machine` suffix and the arguments that attach the firmware: code read-only, the variable
    /// store as a snapshot; with SMM, the flash only SMM code may write (OVMF's Secure Boot build hangs
    /// silently without it).
    fn args(&self) -> (&'static str, Vec<String>) {
        let mut args = vec![
            "-drive".to_string(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={}", self.code.display()),
            "-drive".to_string(),
            format!("if=pflash,format=raw,unit=1,snapshot=on,file={}", self.vars.display()),
        ];
        if self.smm {
            args.extend(["-global".to_string(), "driver=cfi.pflash01,property=secure,value=on".to_string()]);
            (",smm=on", args)
        } else {
            ("", args)
        }
    }
}

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
    pub firmware: &'a Firmware,
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
    /// The first NIC: QEMU user networking with `restrict=on` (nothing leaves the host), forwarding
    /// this port on 127.0.0.1 to the node's API port.
    pub api_forward: Option<u16>,
    /// The second NIC's `-netdev` (boot-test's LAN, lan.rs).
    pub lan_netdev: Option<String>,
    /// A NoCloud config volume, attached read-only as a virtio disk.
    pub config_volume: Option<PathBuf>,
    /// A file whose content becomes one SMBIOS OEM string (type 11).
    pub oem_string_file: Option<PathBuf>,
    /// QEMU fw_cfg entries (`opt/...` name, host file): the RAM proof's nonce and shred pause.
    pub fw_cfg: Vec<(String, PathBuf)>,
}

/// The NICs' MAC addresses, in PCI order (the node names them eth0 and eth1).
pub const API_NIC_MAC: &str = "52:54:00:12:34:56";
pub const LAN_NIC_MAC: &str = "52:54:00:12:34:57";

/// The virtio-serial port name the QEMU guest agent opens.
pub const GUEST_AGENT_PORT: &str = "org.qemu.guest_agent.0";

impl Machine<'_> {
    pub fn command_with(&self, devices: &NodeDevices) -> Cmd {
        let b = &self.board.file;
        let (machine_options, firmware_args) = self.firmware.args();
        let machine = format!("{},accel={}{machine_options}", b.qemu.machine, self.accel);
        let mut c = cmd(&b.qemu.binary).arg("-machine").arg(machine).args([
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
            .args(firmware_args)
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
        if let Some(port) = devices.api_forward {
            // romfile= leaves out iPXE's option ROM: the firmware never boots from the network here.
            c = c
                .arg("-netdev")
                .arg(format!("user,id=api0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:{API_PORT}"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=api0,mac={API_NIC_MAC},romfile="));
        }
        if let Some(netdev) = &devices.lan_netdev {
            c = c
                .arg("-netdev")
                .arg(netdev)
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=lan0,mac={LAN_NIC_MAC},romfile="));
        }
        if let Some(volume) = &devices.config_volume {
            c = c
                .arg("-drive")
                .arg(format!("if=none,id=cidata,format=raw,readonly=on,file={}", volume.display()))
                .args(["-device", "virtio-blk-pci,drive=cidata"]);
        }
        if let Some(file) = &devices.oem_string_file {
            c = c.arg("-smbios").arg(format!("type=11,path={}", file.display()));
        }
        for (name, file) in &devices.fw_cfg {
            c = c.arg("-fw_cfg").arg(format!("name={name},file={}", file.display()));
        }
        if let Some(socket) = &devices.guest_agent_socket {
            c = c
                .args(["-device", "virtio-serial-pci,id=vser0", "-chardev"])
                .arg(format!("socket,id=qga0,path={},server=on,wait=off", socket.display()))
                .args(["-device", &format!("virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}")]);
        }
        c
    }

    /// Starts QEMU with the node's extra devices; its own stderr goes to `<serial_log>.qemu-stderr`.
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

/// Picks the accelerator. KVM must prove itself: on some hosts /dev/kvm exists but OVMF dies with
/// "KVM internal error" under it, so its mere presence decides nothing.
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
        .args(Firmware::plain(board).args().1)
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

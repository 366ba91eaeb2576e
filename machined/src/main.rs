//! machined: the node's PID 1.
//!
//! Runs from the initramfs (`/init`): mounts /proc, /sys and /dev, loads the boot modules listed in
//! /etc/machined/modules, mounts /rootfs.sqsh read-only (with the system extensions' layers over it as
//! a read-only overlayfs) and switches into it. Then it makes the node: cgroup v2 with system/ and
//! kubepods/, the scratch disk encrypted under a RAM-only key and formatted on /var, device links,
//! machined's API socket on /system, containerd and the extension services (read from Talos's spec
//! files as they are), supervised. Once containerd answers and the services are up (or wait for
//! nothing on its way) it reports one `MACHINED-STATUS {json}` line on the console (with whether the
//! firmware enforced Secure Boot and the kernel's lockdown mode). With `machined.smoke=1` on the kernel
//! command line it shuts down right after; otherwise it waits for the ACPI power button or
//! SIGTERM/SIGINT/SIGPWR/SIGUSR2, supervising meanwhile (node.rs), then stops the services, closes the
//! scratch disk (the key dies with it) and powers off. Any failure prints `MACHINED-FATAL: ...` and
//! powers off: PID 1 never exits and never hangs. This file is the boot order; the console lines it
//! and boot-test agree on are in protocol.rs.
//!
//! The image build compiles this crate with Debian's cargo-web for both architectures
//! (xtask/src/initramfs/machined.rs), statically linked. Its few dependencies are named, with why, in
//! machined/Cargo.toml; the older system calls are still declared by hand in `sys`.
//!
//! Run under another name (a service binding /sbin/init as /sbin/shutdown), it is that applet
//! (applet.rs) instead.
//!
//! `no_main`: std's runtime start aborts when fds 0-2 are closed and /dev/null cannot be opened, which
//! is exactly an initramfs whose kernel found no /dev/console. Starting from the C `main` lets machined
//! mount devtmpfs and open the console itself instead.

#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code, unused_imports))]

mod api;
mod applet;
mod cgroups;
mod config;
mod config_source;
mod console;
mod containerd;
mod contents;
mod devices;
mod dhcp;
mod dm;
mod facts;
mod fallible;
mod fat;
mod json;
mod kubernetes;
mod machine_api;
mod modprobe;
mod modules;
mod netlink;
mod network;
mod node;
mod parse;
#[allow(dead_code)] // some of the contract is for the builder's side only
mod protocol;
mod ram_marker;
mod root;
mod scratch;
mod secure_boot;
mod service_root;
mod service_spec;
mod services;
mod sntp;
mod status;
mod sys;

use fallible::{Context, Fallible};
use node::Node;
use protocol::{FLOOR, FLOOR_FLAG, NETWORK_WAIT_ARG, SCRATCH, SHRED_OFF_FLAG, SHUTDOWN, SMOKE_FLAG, STATUS};
use services::{Isolation, Supervisor};
use status::{ContainerdStatus, ExtensionStatus, Status};
use std::fs::{self, OpenOptions};
use std::os::raw::{c_int, c_ulong};
use std::time::Duration;

const OS_RELEASE: &str = "/usr/lib/os-release";
const WRITE_PROBE: &str = "/.machined-write-probe";
const EROFS: i32 = 30;

#[cfg(not(test))]
#[no_mangle]
// The C runtime calls it with argc valid strings in argv; nothing else does.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn main(argc: c_int, argv: *const *const std::os::raw::c_char) -> c_int {
    let init_start = sys::boot_ms();
    // SAFETY: the C runtime passes argc NUL-terminated strings in argv.
    let args = unsafe { applet::args(argc, argv) };
    if let Some(status) = applet::dispatch(&args) {
        return status;
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { sys::getpid() } != 1 {
        let _ = sys::write_all_fd(
            2,
            b"machined: refusing to run: it is PID 1 of the node image (it mounts filesystems and powers the machine off)\n",
        );
        return 2;
    }
    std::panic::set_hook(Box::new(|info| console::fatal(&format!("panic: {info}"))));
    // Block the shutdown signals first so none is lost (PID 1 ignores signals it neither handles
    // nor blocks); they are read from a signalfd once booted.
    let sigmask = match node::block_signals() {
        Ok(mask) => mask,
        Err(e) => console::fatal(&e),
    };
    match boot(init_start, &sigmask) {
        Ok(None) => {
            console::write(format!("{SHUTDOWN} reason=floor\n").as_bytes());
            console::power_off()
        }
        Ok(Some((mut node, smoke))) => {
            if smoke {
                node.shutdown("smoke", machine_api::PowerAction::PowerOff)
            }
            node.run()
        }
        Err(e) => console::fatal(&e),
    }
}

/// Brings the machine up to the reported state. Returns None for a floor boot, else the node and
/// whether this is a smoke boot.
fn boot(init_start: u64, sigmask: &sys::sigset_t) -> Fallible<Option<(Node, bool)>> {
    let mut milestones = vec![("init_start", init_start)];
    mount_api_filesystems()?;
    console::setup()?;
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting on the spot.
    // SAFETY: plain system call without pointers.
    unsafe { sys::reboot(sys::RB_DISABLE_CAD) };
    let cmdline = read_trimmed("/proc/cmdline")?;
    if parse::cmdline_has(&cmdline, FLOOR_FLAG) {
        console::write(format!("{FLOOR} ready_ms={}\n", sys::boot_ms()).as_bytes());
        return Ok(None);
    }

    modprobe::hold();
    let modules = modules::start()?;
    modules.wait_for(&["loop", "squashfs", "overlay"])?;
    milestones.push(("root_modules_loaded", sys::boot_ms()));

    let root = root::assemble()?;
    milestones.push(("root_mounted", sys::boot_ms()));

    let os_release = fs::read_to_string(OS_RELEASE).ctx(|| format!("read {OS_RELEASE} in the new root"))?;
    let field = |key: &str| {
        parse::os_release_get(&os_release, key).ok_or_else(|| format!("{OS_RELEASE} in the new root has no {key}="))
    };
    let image = field("IMAGE_ID")?;
    let version = field("IMAGE_VERSION")?;
    let kernel = read_trimmed("/proc/sys/kernel/osrelease")?;

    // The walk for shells and loose modes (the run-time audit of the build's content rules) runs
    // beside the boot at SCHED_IDLE: it gets only CPU time nothing else wants, so it no longer holds
    // up the scratch disk (1.1-1.5 s under TCG) and does not slow containerd's start either. The
    // status waits for it.
    let layer_paths = root.layer_paths();
    let contents_scan = std::thread::Builder::new()
        .name("contents-scan".into())
        .spawn(move || {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 is this thread; param is a valid sched_param. Best effort: on failure
            // the walk runs at normal priority.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            contents::scan(&layer_paths, "/")
        })
        .ctx(|| "start the contents scan".into())?;

    let hierarchy = cgroups::setup()?;
    milestones.push(("cgroups_ready", sys::boot_ms()));

    // containerd first: it takes longest to answer. It starts now, while the scratch disk is made,
    // and waits for its configuration until /var is ready (containerd::ConfigGate).
    let mut supervisor = Supervisor::new()?;
    let containerd_gate = if containerd::present() {
        containerd::prefetch();
        let (spec, gate) = containerd::prepare()?;
        supervisor.add(spec, Isolation::Shared);
        milestones.push(("containerd_spawning", sys::boot_ms()));
        supervisor.tick(&facts::Facts::default());
        milestones.push(("containerd_started", sys::boot_ms()));
        Some(gate)
    } else {
        None
    };

    // mke2fs formats the scratch disk in a child while machined reads the services and looks for shells.
    modules.wait_for(&["virtio_pci", "virtio_blk", "dm_crypt", "xts", "ecb"])?;
    milestones.push(("scratch_modules_loaded", sys::boot_ms()));
    let formatting = scratch::begin(&cmdline, &mut milestones);
    let bpffs = kubernetes::mount_bpffs();
    // From now on the kernel's module requests go to machined's copy in the root (the scratch
    // disk's mapping made, see modprobe::hold).
    let modprobe_helper = modprobe::install();
    // The machine config: the block devices are registered by now (the scratch disk was looked for).
    let loaded = config_source::load(&[]);
    milestones.push(("config_read", sys::boot_ms()));
    let network = network::start(loaded.config(), loaded.meta_hostname());
    let network_wait = parse::cmdline_value(&cmdline, NETWORK_WAIT_ARG).and_then(|v| v.parse().ok()).unwrap_or(0);
    let config_sysctls = loaded.config().map(|c| c.sysctls.clone()).unwrap_or_default();
    let prepared = kubernetes::prepare(&kernel, &config_sysctls, bpffs);
    let extension_services = services::discover();
    devices::link_virtio_ports();
    let scratch = match formatting {
        Ok(formatting) => scratch::finish(formatting, &mut milestones),
        Err(outcome) => outcome,
    };
    match &scratch {
        scratch::Outcome::Encrypted(m) => console::write(
            format!(
                "{SCRATCH}{} mapped as {} (aes-xts-plain64, ephemeral key), ext4 on /var\n",
                m.device, m.mapped.path
            )
            .as_bytes(),
        ),
        scratch::Outcome::Tmpfs { missing, reason } => {
            let what = if *missing { "missing" } else { "unusable" };
            console::write(format!("{SCRATCH}{what}: {reason}; /var is a tmpfs\n").as_bytes());
            scratch::mount_tmpfs()?;
        }
    }
    milestones.push(("scratch_ready", sys::boot_ms()));
    // On /var: the writable paths' upper layers, the config's files and the extensions' per-node files.
    let writable = kubernetes::mount_writable_paths();
    let files = loaded.config().map(|c| config::apply_files(&c.files)).unwrap_or_default();
    services::create_node_files();
    // Before the extension services start: Talos's specs depend on the socket's path.
    let api = machine_api::Api::listen()?;

    // /var is ready for containerd's state, and the writable paths it reads (the CNI directories).
    let containerd_state = match containerd_gate {
        Some(gate) => {
            gate.open()?;
            milestones.push(("containerd_config_given", sys::boot_ms()));
            ContainerdStatus::NotAnswering { error: format!("{} never accepted a connection", containerd::SOCKET) }
        }
        None => ContainerdStatus::Missing,
    };
    supervisor.add_extension_services(extension_services);
    // containerd has not answered yet: nothing is known.
    supervisor.tick(&facts::Facts::default());
    milestones.push(("services_started", sys::boot_ms()));
    // The RAM marker (test boots only): its holder runs before the status is reported, after the
    // services have started, so that it does not hold containerd back.
    modules.wait_for(&["qemu_fw_cfg"])?;
    let ram_marker = ram_marker::start();
    let shred = !parse::cmdline_has(&cmdline, SHRED_OFF_FLAG);
    let shred_pause = ram_marker::shred_pause();

    let modules = modules.finish()?;
    milestones.push(("modules_loaded", sys::boot_ms()));
    // After every module: efivarfs is one.
    let secure_boot = secure_boot::read();

    let mut node = Node::new(sigmask, supervisor, api, scratch, containerd_state)?;
    node.shred_at_shutdown(shred, shred_pause.clone().unwrap_or(None));
    node.watch_network(network, Duration::from_secs(network_wait), loaded.config().is_some());
    let ready = node.wait_until_ready(&mut milestones);
    let given = milestones.iter().find(|(m, _)| *m == "containerd_config_given").map(|(_, ms)| *ms);
    if let Some(read) = given.and_then(containerd::config_read_ms) {
        milestones.push(("containerd_config_read", read));
    }
    let contents = contents_scan.join().map_err(|_| "the contents scan panicked".to_string())?;
    milestones.push(("shells_checked", sys::boot_ms()));
    let mounts = fs::read_to_string("/proc/self/mounts").ctx(|| "read /proc/self/mounts".into())?;
    let (root_read_only, root_write_errno) = probe_root_write();
    milestones.push(("ready", sys::boot_ms()));

    let status = Status {
        arch: parse::debian_arch(),
        image,
        version,
        kernel,
        root_fstype: parse::root_fstype(&mounts),
        root_read_only,
        root_write_errno,
        modules,
        cmdline: cmdline.clone(),
        loop_device: root.loop_device,
        ready,
        extensions: root
            .extensions
            .iter()
            .map(|e| ExtensionStatus { name: e.name.clone(), version: e.version.clone() })
            .collect(),
        containerd: node.containerd_status(),
        services: node.supervisor.summaries(&node.facts()),
        facts: node.facts(),
        scratch: status::scratch_json(&node.scratch),
        shells_found: contents.shells,
        shells_checked: contents.checked,
        setid_found: contents.setid,
        world_writable_found: contents.world_writable,
        cgroup_controllers: hierarchy.controllers,
        virtio_ports: devices::link_virtio_ports(),
        secure_boot,
        milestones_ms: milestones,
        sections: vec![
            ("config", loaded.json(&files)),
            ("kubernetes", kubernetes::json(&prepared, &writable)),
            ("modules_on_demand", modprobe::json(&modprobe_helper)),
            ("ram_marker", ram_marker::json(&ram_marker, shred, &shred_pause)),
        ],
    };
    let status = node.refreshed(status);
    let line = format!("{STATUS}{}\n", status::status_json(status.clone()));
    console::write(line.as_bytes());
    node.publish_status(status, modprobe_helper);
    Ok(Some((node, parse::cmdline_has(&cmdline, SMOKE_FLAG))))
}

fn read_trimmed(path: &str) -> Fallible<String> {
    fs::read_to_string(path)
        .map(|s| s.trim_end_matches(&['\n', '\0', ' '][..]).to_string())
        .ctx(|| format!("read {path}"))
}

/// proc, sysfs and devtmpfs (the kernel does not mount devtmpfs into an initramfs).
fn mount_api_filesystems() -> Fallible<()> {
    let hardened = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    let mounts: [(&str, &str, c_ulong, Option<&str>); 3] = [
        ("proc", "/proc", hardened, None),
        ("sysfs", "/sys", hardened, None),
        ("devtmpfs", "/dev", sys::MS_NOSUID, Some("mode=0755")),
    ];
    for (fstype, target, flags, data) in mounts {
        fs::create_dir_all(target).ctx(|| format!("create {target}"))?;
        sys::do_mount(Some(fstype), target, Some(fstype), flags, data).ctx(|| format!("mount {fstype} on {target}"))?;
    }
    Ok(())
}

/// Tries to create a file in /: (read_only, errno). read_only is true only for EROFS.
fn probe_root_write() -> (bool, Option<i32>) {
    match OpenOptions::new().write(true).create_new(true).open(WRITE_PROBE) {
        Ok(_) => {
            let _ = fs::remove_file(WRITE_PROBE);
            (false, None)
        }
        Err(e) => (e.raw_os_error() == Some(EROFS), e.raw_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_struct_sizes() {
        assert_eq!(std::mem::size_of::<sys::loop_info64>(), 232);
        assert_eq!(std::mem::size_of::<sys::loop_config>(), 304);
        assert_eq!(std::mem::size_of::<sys::sigset_t>(), 128);
        assert_eq!(std::mem::size_of::<sys::pollfd>(), 8);
    }
}

//! machined: the node's PID 1.
//!
//! Runs from the initramfs (`/init`): mounts /proc, /sys and /dev, loads the boot modules listed in
//! /etc/machined/modules, mounts /rootfs.sqsh read-only (with the system extensions' layers over it as
//! a read-only overlayfs) and switches into it. Then it makes the node: cgroup v2 with system/ and
//! kubepods/, the scratch disk encrypted under a RAM-only key and formatted on /var, device links,
//! containerd and the extension services, supervised. Once containerd answers and the services are up
//! it reports one `MACHINED-STATUS {json}` line on the console. With `machined.smoke=1` on the kernel
//! command line it shuts down right after; otherwise it waits for the ACPI power button or
//! SIGTERM/SIGINT/SIGPWR/SIGUSR2, supervising meanwhile, then stops the services, closes the scratch
//! disk (the key dies with it) and powers off. Any failure prints `MACHINED-FATAL: ...` and powers
//! off: PID 1 never exits and never hangs.
//!
//! Std only and valid for rustc 1.63: the image build compiles this crate with Debian's rustc for both
//! architectures (xtask/src/machined_build.rs). libc functions are declared by hand in `sys`.
//!
//! `no_main`: std's runtime start aborts when fds 0-2 are closed and /dev/null cannot be opened, which
//! is exactly an initramfs whose kernel found no /dev/console. Starting from the C `main` lets machined
//! mount devtmpfs and open the console itself instead.

#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod cgroups;
mod containerd;
mod devices;
mod dm;
mod json;
mod modules;
mod parse;
mod root;
mod scratch;
mod services;
mod shells;
mod sys;

use services::{Isolation, Supervisor};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::raw::{c_int, c_ulong};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

const OS_RELEASE: &str = "/usr/lib/os-release";
const SMOKE_FLAG: &str = "machined.smoke=1";
/// bench boots machined alone in an initramfs with this flag to measure the floor: firmware, stub and
/// kernel with a trivial init that reports at once and powers off.
const FLOOR_FLAG: &str = "machined.floor=1";
const WRITE_PROBE: &str = "/.machined-write-probe";
const EROFS: i32 = 30;
/// How long machined waits for the node to be ready (containerd answering, services started) before
/// it reports anyway, with `ready: false`.
const READY_LIMIT: Duration = Duration::from_secs(90);
/// How long a service may wait for its depends-paths before the node counts as ready without it.
const DEPENDS_GRACE: Duration = Duration::from_secs(5);
/// For this long after boot, services waiting for a path are checked every 100 ms, then every second.
const FAST_POLL_PERIOD: Duration = Duration::from_secs(15);
/// How long services get to exit after SIGTERM at shutdown.
const SERVICE_STOP_GRACE: Duration = Duration::from_secs(10);

type Fallible<T> = Result<T, String>;

/// Adds what was being done to an io::Error (whose Display carries the errno text).
trait Context<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Fallible<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, what: F) -> Fallible<T> {
        self.map_err(|e| format!("{}: {}", what(), e))
    }
}

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: c_int, _argv: *const *const std::os::raw::c_char) -> c_int {
    let init_start = sys::boot_ms();
    // SAFETY: getpid has no preconditions.
    if unsafe { sys::getpid() } != 1 {
        let _ = sys::write_all_fd(
            2,
            b"machined: refusing to run: it is PID 1 of the node image (it mounts filesystems and powers the machine off)\n",
        );
        return 2;
    }
    std::panic::set_hook(Box::new(|info| fatal(&format!("panic: {info}"))));
    // Block the shutdown signals first so none is lost (PID 1 ignores signals it neither handles
    // nor blocks); they are read from a signalfd once booted.
    let sigmask = match block_signals() {
        Ok(mask) => mask,
        Err(e) => fatal(&e),
    };
    match boot(init_start, &sigmask) {
        Ok(None) => {
            console_write(b"MACHINED-SHUTDOWN reason=floor\n");
            power_off()
        }
        Ok(Some((mut node, smoke))) => {
            if smoke {
                node.shutdown("smoke")
            }
            node.run()
        }
        Err(e) => fatal(&e),
    }
}

/// An extension as reported.
pub struct ExtensionStatus {
    pub name: String,
    pub version: String,
}

/// containerd as reported.
pub enum ContainerdStatus {
    /// The root has no /usr/bin/containerd.
    Missing,
    Answered {
        version: String,
        revision: Option<String>,
    },
    NotAnswering {
        error: String,
    },
}

/// What machined reports once the node is up.
pub struct Status {
    pub arch: &'static str,
    pub image: String,
    pub version: String,
    pub kernel: String,
    pub root_fstype: Option<String>,
    pub root_read_only: bool,
    pub root_write_errno: Option<i32>,
    pub modules: Vec<String>,
    pub cmdline: String,
    pub loop_device: String,
    pub ready: bool,
    pub extensions: Vec<ExtensionStatus>,
    pub containerd: ContainerdStatus,
    pub services: Vec<services::Summary>,
    pub scratch: json::Object,
    pub shells_found: Vec<String>,
    pub shells_checked: u64,
    pub cgroup_controllers: Vec<String>,
    pub virtio_ports: Vec<String>,
    pub milestones_ms: Vec<(&'static str, u64)>,
}

/// The status as one JSON object on one line.
pub fn status_json(s: Status) -> String {
    let mut milestones = json::Object::new();
    for (name, ms) in &s.milestones_ms {
        milestones = milestones.u64(name, *ms);
    }
    let extensions =
        s.extensions.iter().map(|e| json::Object::new().str("name", &e.name).str("version", &e.version)).collect();
    let containerd = json::Object::new().str("socket", containerd::SOCKET);
    let containerd = match &s.containerd {
        ContainerdStatus::Missing => containerd.bool("missing", true),
        ContainerdStatus::Answered { version, revision } => {
            containerd.str("version", version).opt_str("revision", revision.as_deref())
        }
        ContainerdStatus::NotAnswering { error } => containerd.str("error", error),
    };
    let services = s
        .services
        .iter()
        .map(|svc| {
            json::Object::new()
                .str("name", &svc.name)
                .opt_i64("pid", svc.pid.map(i64::from))
                .u64("restarts", u64::from(svc.restarts))
                .str("state", &svc.state)
                .opt_str("cgroup", svc.cgroup.as_deref())
                .str_array("namespaces", &svc.namespaces)
        })
        .collect();
    let cgroups = json::Object::new()
        .str("system", cgroups::SYSTEM)
        .str("kubepods", cgroups::KUBEPODS)
        .str_array("controllers", &s.cgroup_controllers);
    json::Object::new()
        .str("arch", s.arch)
        .str("image", &s.image)
        .str("version", &s.version)
        .str("kernel", &s.kernel)
        .opt_str("root_fstype", s.root_fstype.as_deref())
        .bool("root_read_only", s.root_read_only)
        .opt_i64("root_write_errno", s.root_write_errno.map(i64::from))
        .str_array("modules", &s.modules)
        .str("cmdline", &s.cmdline)
        .str("loop_device", &s.loop_device)
        .bool("ready", s.ready)
        .objects("extensions", extensions)
        .object("containerd", containerd)
        .objects("services", services)
        .object("scratch", s.scratch)
        .str_array("shells_found", &s.shells_found)
        .u64("shells_checked", s.shells_checked)
        .object("cgroups", cgroups)
        .str_array("virtio_ports", &s.virtio_ports)
        .object("milestones_ms", milestones)
        .finish()
}

fn scratch_json(outcome: &scratch::Outcome) -> json::Object {
    match outcome {
        scratch::Outcome::Encrypted(m) => json::Object::new()
            .str("device", &m.device)
            .str("mapped", &m.mapped.path)
            .str("cipher", "aes-xts-plain64")
            .str("fstype", m.fstype)
            .str("marker", &m.marker),
        scratch::Outcome::Tmpfs { missing, reason } => {
            let o = json::Object::new().bool("missing", *missing).str("var", "tmpfs");
            if *missing {
                o.str("reason", reason)
            } else {
                o.str("error", reason)
            }
        }
    }
}

/// Brings the machine up to the reported state. Returns None for a floor boot, else the node and
/// whether this is a smoke boot.
fn boot(init_start: u64, sigmask: &sys::sigset_t) -> Fallible<Option<(Node, bool)>> {
    let mut milestones = vec![("init_start", init_start)];
    mount_api_filesystems()?;
    setup_console()?;
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting on the spot.
    // SAFETY: plain system call without pointers.
    unsafe { sys::reboot(sys::RB_DISABLE_CAD) };
    let cmdline = read_trimmed("/proc/cmdline")?;
    if parse::cmdline_has(&cmdline, FLOOR_FLAG) {
        console_write(format!("MACHINED-FLOOR ready_ms={}\n", sys::boot_ms()).as_bytes());
        return Ok(None);
    }

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

    let hierarchy = cgroups::setup()?;
    milestones.push(("cgroups_ready", sys::boot_ms()));

    // mke2fs formats the scratch disk in a child while machined reads the services and looks for shells.
    modules.wait_for(&["virtio_pci", "virtio_blk", "dm_crypt", "xts", "ecb"])?;
    milestones.push(("scratch_modules_loaded", sys::boot_ms()));
    let formatting = scratch::begin(&cmdline, &mut milestones);
    containerd::prefetch();
    let extension_services = services::discover();
    devices::link_virtio_ports();
    // The walk for shells uses the time mke2fs runs (and leaves the CPUs to containerd later).
    let (shells_found, shells_checked) = shells::find_shells();
    milestones.push(("shells_checked", sys::boot_ms()));
    let scratch = match formatting {
        Ok(formatting) => scratch::finish(formatting, &mut milestones),
        Err(outcome) => outcome,
    };
    match &scratch {
        scratch::Outcome::Encrypted(m) => console_write(
            format!(
                "MACHINED-SCRATCH {} mapped as {} (aes-xts-plain64, ephemeral key), ext4 on /var\n",
                m.device, m.mapped.path
            )
            .as_bytes(),
        ),
        scratch::Outcome::Tmpfs { missing, reason } => {
            let what = if *missing { "missing" } else { "unusable" };
            console_write(format!("MACHINED-SCRATCH {what}: {reason}; /var is a tmpfs\n").as_bytes());
            scratch::mount_tmpfs()?;
        }
    }
    milestones.push(("scratch_ready", sys::boot_ms()));

    // containerd first: it takes longest to answer.
    let mut supervisor = Supervisor::new()?;
    let containerd_state = if containerd::present() {
        supervisor.add(containerd::prepare()?, Isolation::Shared);
        ContainerdStatus::NotAnswering { error: format!("{} never accepted a connection", containerd::SOCKET) }
    } else {
        ContainerdStatus::Missing
    };
    supervisor.add_extension_services(extension_services);
    supervisor.tick();
    milestones.push(("services_started", sys::boot_ms()));

    let modules = modules.finish()?;
    milestones.push(("modules_loaded", sys::boot_ms()));

    let mut node = Node::new(sigmask, supervisor, scratch, containerd_state)?;
    let ready = node.wait_until_ready(&mut milestones);
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
        services: node.supervisor.summaries(),
        scratch: scratch_json(&node.scratch),
        shells_found,
        shells_checked,
        cgroup_controllers: hierarchy.controllers,
        virtio_ports: devices::link_virtio_ports(),
        milestones_ms: milestones,
    };
    let line = format!("MACHINED-STATUS {}\n", status_json(status));
    console_write(line.as_bytes());
    Ok(Some((node, parse::cmdline_has(&cmdline, SMOKE_FLAG))))
}

/// The running node: what machined watches and supervises until shutdown.
struct Node {
    sigfd: File,
    inputs: Vec<(String, File)>,
    last_input_scan: Option<Instant>,
    supervisor: Supervisor,
    scratch: scratch::Outcome,
    containerd: ContainerdStatus,
    last_probe: Option<Instant>,
    /// When containerd's socket first accepted a connection (ms since boot).
    socket_seen_ms: Option<u64>,
    created: Instant,
}

impl Node {
    fn new(
        sigmask: &sys::sigset_t,
        supervisor: Supervisor,
        scratch: scratch::Outcome,
        containerd: ContainerdStatus,
    ) -> Fallible<Node> {
        // SAFETY: sigmask is an initialised sigset_t.
        let fd: RawFd = sys::check(unsafe { sys::signalfd(-1, sigmask, sys::SFD_NONBLOCK | sys::SFD_CLOEXEC) })
            .ctx(|| "signalfd".into())?;
        // SAFETY: fd is a fresh descriptor we own.
        let sigfd = unsafe { File::from_raw_fd(fd) };
        Ok(Node {
            sigfd,
            inputs: Vec::new(),
            last_input_scan: None,
            supervisor,
            scratch,
            containerd,
            last_probe: None,
            socket_seen_ms: None,
            created: Instant::now(),
        })
    }

    fn containerd_status(&self) -> ContainerdStatus {
        match &self.containerd {
            ContainerdStatus::Missing => ContainerdStatus::Missing,
            ContainerdStatus::Answered { version, revision } => {
                ContainerdStatus::Answered { version: version.clone(), revision: revision.clone() }
            }
            ContainerdStatus::NotAnswering { error } => ContainerdStatus::NotAnswering { error: error.clone() },
        }
    }

    /// Supervises until containerd answers and every service is up, or READY_LIMIT passes. Returns
    /// whether the node is ready.
    fn wait_until_ready(&mut self, milestones: &mut Vec<(&'static str, u64)>) -> bool {
        let start = Instant::now();
        loop {
            self.turn(Duration::from_millis(20));
            self.advance_probe();
            if let Some(ms) = self.socket_seen_ms {
                if !milestones.iter().any(|(m, _)| *m == "containerd_socket") {
                    milestones.push(("containerd_socket", ms));
                }
            }
            if let ContainerdStatus::Answered { .. } = self.containerd {
                if !milestones.iter().any(|(m, _)| *m == "containerd_answered") {
                    milestones.push(("containerd_answered", sys::boot_ms()));
                }
            }
            let containerd_done = !matches!(self.containerd, ContainerdStatus::NotAnswering { .. });
            if containerd_done && self.supervisor.settled(DEPENDS_GRACE) {
                return true;
            }
            if start.elapsed() > READY_LIMIT {
                console_write(
                    format!("MACHINED-NOT-READY after {} s: reporting anyway\n", READY_LIMIT.as_secs()).as_bytes(),
                );
                return false;
            }
        }
    }

    /// Asks containerd for its version once its socket accepts connections, every 100 ms until it
    /// answers.
    fn advance_probe(&mut self) {
        if !matches!(self.containerd, ContainerdStatus::NotAnswering { .. }) {
            return;
        }
        let due = self.last_probe.map_or(true, |t| t.elapsed() >= Duration::from_millis(100));
        if !due || self.supervisor.pid_of("containerd").is_none() || !containerd::socket_accepts() {
            return;
        }
        if self.socket_seen_ms.is_none() {
            self.socket_seen_ms = Some(sys::boot_ms());
        }
        self.last_probe = Some(Instant::now());
        self.containerd = match containerd::version() {
            Ok((version, revision)) => ContainerdStatus::Answered { version, revision },
            Err(error) => ContainerdStatus::NotAnswering { error },
        };
    }

    /// The steady state: supervise until the power button or a shutdown signal, then shut down.
    fn run(&mut self) -> ! {
        loop {
            self.turn(Duration::from_secs(1));
        }
    }

    /// One round of the event loop: waits up to `max_wait` for a signal, a power-button press or
    /// service output, handles it, reaps children, and starts services that are due. Shuts down
    /// (never returns) on a shutdown request.
    fn turn(&mut self, max_wait: Duration) {
        if self.last_input_scan.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
            scan_inputs(&mut self.inputs);
            self.last_input_scan = Some(Instant::now());
        }
        let logs = self.supervisor.log_fds();
        let mut fds: Vec<sys::pollfd> = std::iter::once(self.sigfd.as_raw_fd())
            .chain(self.inputs.iter().map(|(_, f)| f.as_raw_fd()))
            .chain(logs.iter().map(|(fd, _)| *fd))
            .map(|fd| sys::pollfd { fd, events: sys::POLLIN, revents: 0 })
            .collect();
        // Devices appear within seconds of boot: a service waiting for one is checked often then.
        // Later, paths come from the operator, and once a second is soon enough.
        let early = self.created.elapsed() < FAST_POLL_PERIOD;
        let mut wait =
            if self.supervisor.waiting() && early { max_wait.min(Duration::from_millis(100)) } else { max_wait };
        if let Some(at) = self.supervisor.next_restart() {
            wait = wait.min(at.saturating_duration_since(Instant::now()));
        }
        // SAFETY: fds is a live array of pollfd of the given length.
        let ready = unsafe { sys::poll(fds.as_mut_ptr(), fds.len() as c_ulong, wait.as_millis() as c_int) };
        reap(&mut self.supervisor);
        if ready > 0 {
            if fds[0].revents & sys::POLLIN != 0 {
                if let Some(name) = read_signals(&mut self.sigfd) {
                    self.shutdown(&format!("signal {name}"));
                }
            }
            // Service output follows the inputs (counted before any input is dropped below).
            let logs_start = 1 + self.inputs.len();
            let input_fds = &fds[1..logs_start];
            let mut gone = Vec::new();
            let mut pressed = false;
            for (i, pfd) in input_fds.iter().enumerate() {
                if pfd.revents & sys::POLLIN != 0 {
                    match read_input(&mut self.inputs[i].1) {
                        Ok(true) => pressed = true,
                        Ok(false) => {}
                        Err(_) => gone.push(i),
                    }
                } else if pfd.revents & (sys::POLLERR | sys::POLLHUP | sys::POLLNVAL) != 0 {
                    gone.push(i);
                }
            }
            for i in gone.into_iter().rev() {
                self.inputs.remove(i);
            }
            if pressed {
                self.shutdown("power-button");
            }
            for (pfd, (_, service)) in fds[logs_start..].iter().zip(&logs) {
                if pfd.revents != 0 {
                    self.supervisor.drain_log(*service);
                }
            }
        }
        if self.supervisor.waiting_for_devices() {
            devices::link_virtio_ports();
        }
        self.supervisor.tick();
    }

    /// Reports the reason, stops the services and every other process, closes the scratch disk
    /// (dropping its key) and powers off.
    fn shutdown(&mut self, reason: &str) -> ! {
        console_write(format!("MACHINED-SHUTDOWN reason={reason}\n").as_bytes());
        self.supervisor.stop_all(SERVICE_STOP_GRACE, reap);
        for (sig, grace) in [(sys::SIGTERM, Duration::from_secs(3)), (sys::SIGKILL, Duration::from_secs(1))] {
            if !reap_children() {
                break;
            }
            // SAFETY: kill(-1) signals every process but PID 1 itself.
            unsafe { sys::kill(-1, sig) };
            let start = Instant::now();
            while reap_children() && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // SAFETY: sync has no preconditions.
        unsafe { sys::sync() };
        if let scratch::Outcome::Encrypted(mounted) = &self.scratch {
            match scratch::teardown(mounted) {
                Ok(done) => console_write(format!("MACHINED-SCRATCH-CLOSED {done}\n").as_bytes()),
                Err(e) => console_write(format!("MACHINED-SCRATCH-CLOSE-FAILED {e}\n").as_bytes()),
            }
        }
        power_off()
    }
}

/// Reaps every exited child, handing services' exits to the supervisor.
fn reap(supervisor: &mut Supervisor) {
    loop {
        let mut status: c_int = 0;
        // SAFETY: status is writable.
        let pid = unsafe { sys::waitpid(-1, &mut status, sys::WNOHANG) };
        if pid <= 0 {
            if pid < 0 && io::Error::last_os_error().raw_os_error() == Some(sys::EINTR) {
                continue;
            }
            return;
        }
        // Anything not a service is an orphan reparented to PID 1 (e.g. a container's process).
        supervisor.on_exit(pid, status);
    }
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

/// Points fds 0, 1 and 2 at /dev/console.
fn setup_console() -> Fallible<()> {
    let path = sys::cstr("/dev/console");
    // SAFETY: path is NUL-terminated.
    let fd = sys::check(unsafe { sys::open(path.as_ptr(), sys::O_RDWR | sys::O_NOCTTY) })
        .ctx(|| "open /dev/console".into())?;
    for target in 0..3 {
        if fd != target {
            // SAFETY: both are plain descriptors.
            sys::check(unsafe { sys::dup2(fd, target) }).ctx(|| format!("dup2 /dev/console onto fd {target}"))?;
        }
    }
    if fd > 2 {
        // SAFETY: fd is ours and no longer needed.
        unsafe { sys::close(fd) };
    }
    Ok(())
}

/// Writes one message to the console: fd 1 if it works, else /dev/console, else /dev/kmsg.
pub(crate) fn console_write(msg: &[u8]) {
    if sys::write_all_fd(1, msg).is_ok() {
        return;
    }
    for path in ["/dev/console", "/dev/kmsg"] {
        let file = OpenOptions::new().write(true).custom_flags(sys::O_NOCTTY).open(path);
        if let Ok(file) = file {
            if sys::write_all_fd(file.as_raw_fd(), msg).is_ok() {
                return;
            }
        }
    }
}

/// Waits until `path` exists (devtmpfs creates device nodes as the kernel registers devices).
pub(crate) fn wait_for_path(path: &str, timeout: Duration) -> Fallible<()> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > timeout {
            return Err(format!("{path} did not appear within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
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

fn shutdown_signals() -> [c_int; 5] {
    [sys::SIGTERM, sys::SIGINT, sys::SIGPWR, sys::SIGUSR2, sys::SIGCHLD]
}

fn block_signals() -> Fallible<sys::sigset_t> {
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let mut set: sys::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid sigset_t.
    unsafe {
        sys::sigemptyset(&mut set);
        for sig in shutdown_signals() {
            sys::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: set is initialised; the old mask is not wanted.
    sys::check(unsafe { sys::sigprocmask(sys::SIG_BLOCK, &set, std::ptr::null_mut()) })
        .ctx(|| "block signals (sigprocmask)".into())?;
    Ok(set)
}

/// Reaps every exited child; returns whether any child remains.
fn reap_children() -> bool {
    loop {
        let mut status: c_int = 0;
        // SAFETY: status is writable.
        let pid = unsafe { sys::waitpid(-1, &mut status, sys::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid == 0 {
            return true;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(sys::EINTR) {
            continue;
        }
        return err.raw_os_error() != Some(sys::ECHILD);
    }
}

/// Opens /dev/input/event* devices not yet open (non-blocking).
fn scan_inputs(inputs: &mut Vec<(String, File)>) {
    let entries = match fs::read_dir("/dev/input") {
        Ok(entries) => entries,
        Err(_) => return,
    };
    let mut paths: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    paths.sort();
    for path in paths {
        if inputs.iter().any(|(p, _)| *p == path) {
            continue;
        }
        if let Ok(file) = OpenOptions::new().read(true).custom_flags(sys::O_NONBLOCK).open(&path) {
            inputs.push((path, file));
        }
    }
}

/// Drains an input device. Ok(true) if a power-key press was among the events.
fn read_input(file: &mut File) -> io::Result<bool> {
    let mut buf = [0u8; parse::INPUT_EVENT_SIZE * 32];
    let mut pressed = false;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(pressed),
            Ok(n) => pressed |= parse::has_power_press(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(pressed),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Drains the signalfd; returns the first shutdown signal's name (SIGCHLD only wakes the reaper).
fn read_signals(sigfd: &mut File) -> Option<String> {
    let mut buf = [0u8; sys::SIGNALFD_SIGINFO_SIZE];
    let mut found = None;
    while let Ok(n) = sigfd.read(&mut buf) {
        if n < sys::SIGNALFD_SIGINFO_SIZE {
            break;
        }
        let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if signo as c_int != sys::SIGCHLD && found.is_none() {
            found = Some(parse::signal_name(signo));
        }
    }
    found
}

/// Prints `MACHINED-FATAL: <msg>` and powers off after a second. Never returns.
pub(crate) fn fatal(msg: &str) -> ! {
    let line = format!("MACHINED-FATAL: {}\n", msg.replace('\n', " "));
    console_write(line.as_bytes());
    // SAFETY: sync has no preconditions.
    unsafe { sys::sync() };
    std::thread::sleep(Duration::from_secs(1));
    power_off()
}

/// sync + reboot(RB_POWER_OFF); if even that fails, halt, and as a last resort sleep forever (an
/// exiting PID 1 panics the kernel).
fn power_off() -> ! {
    // SAFETY: plain system calls without pointers.
    unsafe {
        sys::sync();
        sys::reboot(sys::RB_POWER_OFF);
        sys::reboot(sys::RB_HALT_SYSTEM);
    }
    let _ = sys::write_all_fd(1, b"MACHINED-FATAL: reboot(RB_POWER_OFF) failed\n");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            arch: "arm64",
            image: "node".into(),
            version: "1.0".into(),
            kernel: "6.1.0-50-cloud-arm64".into(),
            root_fstype: Some("overlay".into()),
            root_read_only: true,
            root_write_errno: Some(30),
            modules: vec!["loop".into(), "squashfs".into()],
            cmdline: "console=ttyAMA0 \"quoted\"".into(),
            loop_device: "/dev/loop0".into(),
            ready: true,
            extensions: vec![ExtensionStatus { name: "qemu-guest-agent".into(), version: "7.2".into() }],
            containerd: ContainerdStatus::Answered { version: "1.6.20".into(), revision: None },
            services: vec![services::Summary {
                name: "containerd".into(),
                pid: Some(42),
                restarts: 0,
                state: "running".into(),
                cgroup: Some("/system/containerd".into()),
                namespaces: vec![],
            }],
            scratch: scratch_json(&scratch::Outcome::Tmpfs { missing: true, reason: "none".into() }),
            shells_found: vec![],
            shells_checked: 7,
            cgroup_controllers: vec!["cpu".into(), "memory".into()],
            virtio_ports: vec!["org.qemu.guest_agent.0".into()],
            milestones_ms: vec![("init_start", 1), ("modules_loaded", 2), ("root_mounted", 3), ("ready", 4)],
        }
    }

    #[test]
    fn status_line_has_every_field() {
        assert_eq!(
            status_json(sample()),
            concat!(
                r#"{"arch":"arm64","image":"node","version":"1.0","kernel":"6.1.0-50-cloud-arm64","root_fstype":"overlay","#,
                r#""root_read_only":true,"root_write_errno":30,"modules":["loop","squashfs"],"#,
                r#""cmdline":"console=ttyAMA0 \"quoted\"","loop_device":"/dev/loop0","ready":true,"#,
                r#""extensions":[{"name":"qemu-guest-agent","version":"7.2"}],"#,
                r#""containerd":{"socket":"/run/containerd/containerd.sock","version":"1.6.20","revision":null},"#,
                r#""services":[{"name":"containerd","pid":42,"restarts":0,"state":"running","cgroup":"/system/containerd","namespaces":[]}],"#,
                r#""scratch":{"missing":true,"var":"tmpfs","reason":"none"},"shells_found":[],"shells_checked":7,"#,
                r#""cgroups":{"system":"/sys/fs/cgroup/system","kubepods":"/sys/fs/cgroup/kubepods","controllers":["cpu","memory"]},"#,
                r#""virtio_ports":["org.qemu.guest_agent.0"],"#,
                r#""milestones_ms":{"init_start":1,"modules_loaded":2,"root_mounted":3,"ready":4}}"#
            )
        );
    }

    #[test]
    fn containerd_and_scratch_variants() {
        let mut s = sample();
        s.containerd = ContainerdStatus::NotAnswering { error: "connect: refused".into() };
        s.scratch = scratch_json(&scratch::Outcome::Tmpfs { missing: false, reason: "has a GPT".into() });
        let line = status_json(s);
        assert!(
            line.contains(r#""containerd":{"socket":"/run/containerd/containerd.sock","error":"connect: refused"}"#),
            "{line}"
        );
        assert!(line.contains(r#""scratch":{"missing":false,"var":"tmpfs","error":"has a GPT"}"#), "{line}");
        let mut s = sample();
        s.containerd = ContainerdStatus::Missing;
        assert!(status_json(s).contains(r#""containerd":{"socket":"/run/containerd/containerd.sock","missing":true}"#));
    }

    #[test]
    fn kernel_struct_sizes() {
        assert_eq!(std::mem::size_of::<sys::loop_info64>(), 232);
        assert_eq!(std::mem::size_of::<sys::loop_config>(), 304);
        assert_eq!(std::mem::size_of::<sys::sigset_t>(), 128);
        assert_eq!(std::mem::size_of::<sys::pollfd>(), 8);
    }
}

//! The running node: machined's event loop after boot. It supervises the services (judging their
//! dependencies against the node's facts, [`Node::facts`]), answers its API socket, waits for the
//! node to become ready (containerd answering, every service up or waiting for nothing on its way),
//! and shuts down on the ACPI power button, a shutdown signal or an API request: services stopped,
//! every other process killed, the scratch disk closed (its key dies with the mapping), power off
//! (or reboot).

use crate::console;
use crate::facts::{Facts, NetworkFacts};
use crate::fallible::{Context, Fallible};
use crate::machine_api::{self, Api, PowerAction, Request};
use crate::protocol::{
    NOT_READY, RAM_MARKER_FILE, SCRATCH_CLOSED, SCRATCH_CLOSE_FAILED, SHRED_DONE, SHRED_OFF_FLAG, SHUTDOWN,
};
use crate::services::Supervisor;
use crate::status::{self, ContainerdStatus, Status};
use crate::{api, containerd, devices, json, modprobe, network, parse, scratch, sys};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::raw::{c_int, c_ulong};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long machined waits for the node to be ready (containerd answering, services started) before
/// it reports anyway, with `ready: false`.
const READY_LIMIT: Duration = Duration::from_secs(90);
/// How long a service may wait for its depends-paths before the node counts as ready without it.
const DEPENDS_GRACE: Duration = Duration::from_secs(5);
/// For this long after boot, services waiting for a path are checked every 100 ms, then every second.
const FAST_POLL_PERIOD: Duration = Duration::from_secs(15);
/// How long services get to exit after SIGTERM at shutdown.
const SERVICE_STOP_GRACE: Duration = Duration::from_secs(10);

/// The running node: what machined watches and supervises until shutdown.
pub struct Node {
    sigfd: File,
    inputs: Vec<(String, File)>,
    last_input_scan: Option<Instant>,
    pub supervisor: Supervisor,
    api: Api,
    pub scratch: scratch::Outcome,
    containerd: ContainerdStatus,
    last_probe: Option<Instant>,
    /// When containerd's socket first accepted a connection (ms since boot).
    socket_seen_ms: Option<u64>,
    created: Instant,
    network: Option<network::Shared>,
    /// How long readiness may wait for the network to settle, from its start.
    network_wait: Duration,
    configured: bool,
    /// The status as last reported, refreshed for the API while the node runs.
    status: Option<(Status, api::Latest)>,
    last_refresh: Instant,
    modprobe_helper: Result<(), String>,
    /// Whether the shutdown shreds memory (off only with `machined.shred=off`, for the test that
    /// proves the memory scan can fail), and how long a test boot waits after shredding.
    shred: bool,
    shred_pause: Option<Duration>,
}

impl Node {
    pub fn new(
        sigmask: &sys::sigset_t,
        supervisor: Supervisor,
        api: Api,
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
            api,
            scratch,
            containerd,
            last_probe: None,
            socket_seen_ms: None,
            created: Instant::now(),
            network: None,
            network_wait: Duration::ZERO,
            configured: false,
            status: None,
            last_refresh: Instant::now(),
            modprobe_helper: Ok(()),
            shred: true,
            shred_pause: None,
        })
    }

    /// The network the node runs (see network.rs), whether a machine config was applied, and how long
    /// readiness may wait for the network.
    pub fn watch_network(&mut self, network: network::Shared, wait: Duration, configured: bool) {
        self.network = Some(network);
        self.network_wait = wait;
        self.configured = configured;
    }

    /// Whether the shutdown shreds memory, and the pause after it a test boot asked for.
    pub fn shred_at_shutdown(&mut self, shred: bool, pause: Option<Duration>) {
        self.shred = shred;
        self.shred_pause = pause;
    }

    /// What the services' dependencies are judged against now.
    pub fn facts(&self) -> Facts {
        let state = self.network.as_ref().map(network::snapshot).unwrap_or_default();
        Facts {
            cri: matches!(self.containerd, ContainerdStatus::Answered { .. }),
            network: NetworkFacts {
                addresses: state.has("addresses"),
                connectivity: state.has("connectivity"),
                hostname: state.has("hostname"),
                etcfiles: state.has("etcfiles"),
            },
            configuration: self.configured,
            time_synced: state.time.synced,
        }
    }

    fn network_settled(&self) -> bool {
        self.network.as_ref().is_none_or(|n| network::snapshot(n).settled)
    }

    /// `status` with its live parts (services, containerd, network, time, modules loaded on demand)
    /// as they are now.
    pub fn refreshed(&self, mut status: Status) -> Status {
        status.facts = self.facts();
        status.services = self.supervisor.summaries(&status.facts);
        status.containerd = self.containerd_status();
        let state = self.network.as_ref().map(network::snapshot).unwrap_or_default();
        let live = [
            ("network", network::json(&state, self.network_wait.as_secs())),
            ("time", network::time_json(&state.time)),
        ];
        for (key, section) in live {
            match status.sections.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = section,
                None => status.sections.push((key, section)),
            }
        }
        status
    }

    /// Serves the status on the API port from now on, refreshed once a second.
    pub fn publish_status(&mut self, status: Status, modprobe_helper: Result<(), String>) {
        let latest = api::serve(status::status_json(status.clone()));
        self.status = Some((status, latest));
        self.modprobe_helper = modprobe_helper;
    }

    fn refresh_api(&mut self) {
        if self.last_refresh.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_refresh = Instant::now();
        if let Some((status, latest)) = self.status.take() {
            let mut status = self.refreshed(status);
            if let Some(slot) = status.sections.iter_mut().find(|(k, _)| *k == "modules_on_demand") {
                slot.1 = modprobe::json(&self.modprobe_helper);
            }
            api::update(&latest, status::status_json(status.clone()));
            self.status = Some((status, latest));
        }
    }

    pub fn containerd_status(&self) -> ContainerdStatus {
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
    pub fn wait_until_ready(&mut self, milestones: &mut Vec<(&'static str, u64)>) -> bool {
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
            // The network may hold readiness back only as long as the board allows.
            let network_done = self.network_settled() || start.elapsed() >= self.network_wait;
            if network_done && self.network_settled() && !milestones.iter().any(|(m, _)| *m == "network_settled") {
                milestones.push(("network_settled", sys::boot_ms()));
            }
            if containerd_done && network_done && self.supervisor.settled(DEPENDS_GRACE, &self.facts()) {
                return true;
            }
            if start.elapsed() > READY_LIMIT {
                console::write(format!("{NOT_READY} after {} s: reporting anyway\n", READY_LIMIT.as_secs()).as_bytes());
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
        let due = self.last_probe.is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
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
    pub fn run(&mut self) -> ! {
        loop {
            self.turn(Duration::from_secs(1));
            self.refresh_api();
        }
    }

    /// One round of the event loop: waits up to `max_wait` for a signal, a power-button press or
    /// service output, handles it, reaps children, and starts services that are due. Shuts down
    /// (never returns) on a shutdown request.
    fn turn(&mut self, max_wait: Duration) {
        if self.last_input_scan.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            scan_inputs(&mut self.inputs);
            self.last_input_scan = Some(Instant::now());
        }
        let logs = self.supervisor.output_fds();
        let mut fds: Vec<sys::pollfd> = [self.sigfd.as_raw_fd(), self.api.fd()]
            .into_iter()
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
                    self.shutdown(&format!("signal {name}"), PowerAction::PowerOff);
                }
            }
            if fds[1].revents & sys::POLLIN != 0 {
                self.serve_api();
            }
            // Service output follows the inputs (counted before any input is dropped below).
            let logs_start = 2 + self.inputs.len();
            let input_fds = &fds[2..logs_start];
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
                self.shutdown("power-button", PowerAction::PowerOff);
            }
            for (pfd, (_, service)) in fds[logs_start..].iter().zip(&logs) {
                if pfd.revents != 0 {
                    self.supervisor.drain_output(*service);
                }
            }
        }
        if self.supervisor.waiting_for_devices() {
            devices::link_virtio_ports();
        }
        let facts = self.facts();
        self.supervisor.tick(&facts);
    }

    /// Answers the clients waiting on the API socket; a shutdown request is answered, then carried out.
    fn serve_api(&mut self) {
        while let Some((stream, request)) = self.api.accept() {
            match request {
                Ok(Request::Status) => {
                    let facts = self.facts();
                    let status = json::Object::new()
                        .object("facts", status::facts_json(&facts))
                        .objects("services", status::services_json(&self.supervisor.summaries(&facts)));
                    machine_api::answer(stream, &status.finish());
                }
                Ok(Request::PowerOff(message)) => {
                    self.shutdown_for(stream, "poweroff", &message, PowerAction::PowerOff)
                }
                Ok(Request::Reboot(message)) => self.shutdown_for(stream, "reboot", &message, PowerAction::Reboot),
                Err(e) => machine_api::answer(stream, &format!("error: {e}")),
            }
        }
    }

    /// Says `ok` to the client that asked, then shuts down: `MACHINED-SHUTDOWN reason=machine-api-<verb> (<message>)`.
    fn shutdown_for(&mut self, client: UnixStream, verb: &str, message: &str, action: PowerAction) -> ! {
        machine_api::answer(client, "ok");
        let why = if message.is_empty() { String::new() } else { format!(" ({message})") };
        self.shutdown(&format!("machine-api-{verb}{why}"), action)
    }

    /// Reports the reason, stops the services and every other process, closes the scratch disk
    /// (dropping its key), shreds what memory held (see [`shred_memory`]), reports that with the time
    /// it all took, and powers off or reboots.
    pub fn shutdown(&mut self, reason: &str, action: PowerAction) -> ! {
        let began = Instant::now();
        console::write(format!("{SHUTDOWN} reason={reason}\n").as_bytes());
        if let Some(network) = &self.network {
            network::stop(network);
        }
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
                Ok(done) => console::write(format!("{SCRATCH_CLOSED} {done}\n").as_bytes()),
                Err(e) => console::write(format!("{SCRATCH_CLOSE_FAILED} {e}\n").as_bytes()),
            }
        }
        let done = if self.shred {
            shred_memory()
        } else {
            format!("skipped ({SHRED_OFF_FLAG}): tmpfs mounts, {RAM_MARKER_FILE} and the page cache kept")
        };
        console::write(format!("{SHRED_DONE} ms={} {done}\n", began.elapsed().as_millis()).as_bytes());
        if let Some(pause) = self.shred_pause {
            // A test boot's host dumps the memory now (its fw_cfg asked for this pause).
            std::thread::sleep(pause);
        }
        match action {
            PowerAction::PowerOff => console::power_off(),
            PowerAction::Reboot => console::reboot(),
        }
    }
}

/// After every process but PID 1 is gone and the scratch disk is closed: removes the RAM marker's
/// file, unmounts every tmpfs (last mounted first; a busy one is detached and freed when its last
/// user goes), syncs and drops the page cache. With init_on_free=1 the kernel zeroes each page as it
/// is freed, so what these pages held is gone once this returns. Returns what was done, for the
/// console.
fn shred_memory() -> String {
    let mut done = Vec::new();
    match fs::remove_file(RAM_MARKER_FILE) {
        Ok(()) => done.push(format!("removed {RAM_MARKER_FILE}")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => done.push(format!("cannot remove {RAM_MARKER_FILE}: {e}")),
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mut unmounted, mut detached, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for target in parse::mounts_of_type(&mounts, "tmpfs") {
        match sys::unmount_or_detach(&target) {
            Ok(false) => unmounted.push(target),
            Ok(true) => detached.push(target),
            Err(e) => failed.push(format!("{target}: {e}")),
        }
    }
    done.push(format!("unmounted tmpfs {}", if unmounted.is_empty() { "none".into() } else { unmounted.join(",") }));
    if !detached.is_empty() {
        done.push(format!("detached busy tmpfs {}", detached.join(",")));
    }
    if !failed.is_empty() {
        done.push(format!("cannot unmount {}", failed.join(", ")));
    }
    // SAFETY: sync has no preconditions.
    unsafe { sys::sync() };
    match fs::write("/proc/sys/vm/drop_caches", "3\n") {
        Ok(()) => done.push("page cache dropped".into()),
        Err(e) => done.push(format!("cannot drop the page cache: {e}")),
    }
    done.join("; ")
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

fn shutdown_signals() -> [c_int; 5] {
    [sys::SIGTERM, sys::SIGINT, sys::SIGPWR, sys::SIGUSR2, sys::SIGCHLD]
}

pub fn block_signals() -> Fallible<sys::sigset_t> {
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

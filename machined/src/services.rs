//! Supervised services: containerd from the node's root, and the extension services, read from
//! Talos's spec files as they are (`/usr/local/etc/containers/<name>.yaml`, service_spec.rs), each in
//! its own root and namespaces (service_root.rs). Every service runs in its own cgroup
//! (system/<name>) and starts once each of its `depends` holds, judged against the node's [`Facts`]
//! (`service: cri`, `network`, `configuration`, `time`), the other services (`service: ext-<name>`)
//! and the filesystem (`path`, and an `environmentFile`). It is restarted with backoff (1 s doubling
//! to 30 s) as its `restart` says: `always`, `untilSuccess` (after a failure only), `never`. Its
//! output goes a line at a time to the console behind a `[name] ` prefix when `logToConsole` is set
//! (and for containerd), else to /var/log/<name>.log; the status keeps the last lines either way.
//!
//! machined's only other threads (the boot-time module loader and page-cache prefetch) hold no lock
//! the forked child needs: it makes system calls and allocates, which glibc's fork keeps consistent.

use crate::facts::Facts;
use crate::fallible::Fallible;
use crate::parse::{self, LineBuffer};
use crate::protocol::{CREATE_FILES, SERVICE, SERVICE_RESTARTING, SERVICE_SPECS, WRITABLE_DIRS};
use crate::service_root::{self, Plan};
use crate::service_spec::{self, clean_absolute, Dependency, Restart, ServiceSpec};
use crate::{cgroups, sys};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::raw::c_int;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where each isolated service's stage directory lives (a tmpfs mounted in its own namespace, so
/// the node sees only empty directories), and the node mount that holds it.
const STAGE_DIR: &str = "/run/machined/services";
const STAGE_MOUNT: &str = "/run";
/// Where a service's output goes unless it logs to the console.
const LOG_DIR: &str = "/var/log";
/// A run at least this long resets the backoff: the service was healthy, this exit is news.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How many of a service's last output lines the status shows.
const TAIL_LINES: usize = 5;
/// Why a dependency on udevd is taken as met, said once per service that has one.
const NO_UDEVD: &str = "depends on service udevd, which this node does not run (machined populates /dev itself: \
     devtmpfs, and the /dev/virtio-ports links udev would make); taken as up";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// The node's root and namespaces (containerd: it manages the node's mounts and containers).
    Shared,
    /// Own root and mount/PID/IPC/UTS namespaces.
    Own,
}

#[derive(Debug)]
enum State {
    /// Waiting for its dependencies since the instant.
    Waiting(Instant),
    Running {
        pid: i32,
        since: Instant,
    },
    /// Exited or failed to start; starts again at the instant.
    Backoff(Instant),
    /// Exited for good (restart never, or shutdown).
    Exited,
    /// restart untilSuccess, and it succeeded.
    Done,
    /// Its spec is unusable here; never started.
    Invalid(String),
}

pub struct Service {
    pub spec: ServiceSpec,
    pub isolation: Isolation,
    state: State,
    /// How many times it was started again after exiting.
    pub restarts: u32,
    /// Consecutive exits after short runs, for the backoff.
    failures: u32,
    prefix: String,
    output: Option<(File, LineBuffer)>,
    /// /var/log/<name>.log, unless it logs to the console.
    log_file: Option<File>,
    tail: VecDeque<String>,
    /// What in its spec this node ignores or takes differently, said at boot.
    warnings: Vec<String>,
    /// Why the last start failed.
    last_error: Option<String>,
}

/// One service's state for the status line.
#[derive(Clone)]
pub struct Summary {
    pub name: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    /// waiting, running, restarting, exited, done or invalid.
    pub state: String,
    /// For a waiting service, each dependency that does not hold yet (`network.connectivity`,
    /// `path /x`, `service cri`).
    pub waiting_for: Vec<String>,
    /// Why it is invalid, or why its last start failed.
    pub error: Option<String>,
    pub warnings: Vec<String>,
    /// `console`, or the file its output goes to.
    pub log: String,
    /// Its last lines of output.
    pub log_tail: Vec<String>,
    /// The running process's cgroup, as /proc/<pid>/cgroup says (e.g. /system/containerd).
    pub cgroup: Option<String>,
    /// Namespaces the running process does not share with machined (of mnt, pid, ipc, uts, net).
    pub namespaces: Vec<String>,
}

pub struct Supervisor {
    pub services: Vec<Service>,
    /// machined's own PID namespace, to return to after creating a new one for a child.
    own_pid_ns: File,
    stopping: bool,
}

impl Service {
    fn new(spec: ServiceSpec, isolation: Isolation, state: State) -> Service {
        let prefix = format!("[{}] ", spec.name);
        Service {
            spec,
            isolation,
            state,
            restarts: 0,
            failures: 0,
            prefix,
            output: None,
            log_file: None,
            tail: VecDeque::new(),
            warnings: Vec::new(),
            last_error: None,
        }
    }

    fn log_path(&self) -> Option<String> {
        (!self.spec.log_to_console).then(|| format!("{LOG_DIR}/{}.log", self.spec.name))
    }
}

impl Supervisor {
    pub fn new() -> Fallible<Supervisor> {
        let own_pid_ns = File::open("/proc/self/ns/pid").map_err(|e| format!("open /proc/self/ns/pid: {e}"))?;
        Ok(Supervisor { services: Vec::new(), own_pid_ns, stopping: false })
    }

    pub fn add(&mut self, spec: ServiceSpec, isolation: Isolation) {
        self.services.push(Service::new(spec, isolation, State::Waiting(Instant::now())));
    }

    /// A service whose spec cannot run here; reported, never started.
    pub fn add_invalid(&mut self, spec: ServiceSpec, error: String) {
        crate::console::write(format!("{SERVICE}{} invalid: {error}\n", spec.name).as_bytes());
        self.services.push(Service::new(spec, Isolation::Own, State::Invalid(error)));
    }

    /// Adds discovered extension services, isolated. A dependency on a service this node does not
    /// run makes the service invalid (it would wait forever); one on udevd is taken as met.
    pub fn add_extension_services(&mut self, discovered: Vec<Discovered>) {
        let names: Vec<String> =
            discovered.iter().filter_map(|d| d.as_ref().ok()).map(|(spec, _)| spec.name.clone()).collect();
        for service in discovered {
            let (spec, warnings) = match service {
                Ok(found) => found,
                Err((name, error)) => {
                    crate::console::write(format!("{SERVICE}{name} invalid: {error}\n").as_bytes());
                    let placeholder = placeholder_spec(&name);
                    self.services.push(Service::new(placeholder, Isolation::Own, State::Invalid(error)));
                    continue;
                }
            };
            let mut notes = warnings;
            let mut unknown = Vec::new();
            for dependency in &spec.depends {
                if let Dependency::Service(id) = dependency {
                    match id.as_str() {
                        "cri" | "containerd" => {}
                        "udevd" => notes.push(NO_UDEVD.to_string()),
                        other => match other.strip_prefix("ext-") {
                            Some(ext) if names.iter().any(|n| n == ext) => {}
                            _ => unknown.push(other.to_string()),
                        },
                    }
                }
            }
            for note in &notes {
                crate::console::write(format!("{SERVICE}{} warning: {note}\n", spec.name).as_bytes());
            }
            if !unknown.is_empty() {
                let error = format!(
                    "depends on service {}, which this node does not run (it runs cri, and ext-<name> for each \
                     extension service: {})",
                    unknown.join(", "),
                    names.iter().map(|n| format!("ext-{n}")).collect::<Vec<_>>().join(", ")
                );
                self.add_invalid(spec, error);
            } else {
                self.add(spec, Isolation::Own);
            }
            if let Some(svc) = self.services.last_mut() {
                svc.warnings = notes;
            }
        }
    }

    /// What service `i` still waits for; empty when it may start.
    fn unmet(&self, i: usize, facts: &Facts) -> Vec<String> {
        let spec = &self.services[i].spec;
        let mut unmet = Vec::new();
        for dependency in &spec.depends {
            match dependency {
                Dependency::Service(id) => {
                    let up = match id.as_str() {
                        "cri" | "containerd" => facts.cri,
                        "udevd" => true,
                        other => other.strip_prefix("ext-").is_some_and(|name| {
                            self.services
                                .iter()
                                .any(|s| s.spec.name == name && matches!(s.state, State::Running { .. } | State::Done))
                        }),
                    };
                    if !up {
                        unmet.push(format!("service {id}"));
                    }
                }
                Dependency::Path(path) => {
                    if !Path::new(path).exists() {
                        unmet.push(format!("path {path}"));
                    }
                }
                Dependency::Network(checks) => {
                    for check in checks {
                        if !facts.network_holds(*check) {
                            unmet.push(format!("network.{}", check.name()));
                        }
                    }
                }
                Dependency::Time if !facts.time_synced => unmet.push("time".to_string()),
                Dependency::Configuration if !facts.configuration => unmet.push("configuration".to_string()),
                Dependency::Time | Dependency::Configuration => {}
            }
        }
        // Talos waits for an environmentFile to exist before it reads it.
        if let Some(file) = &spec.container.environment_file {
            if !Path::new(file).exists() {
                unmet.push(format!("path {file} (environmentFile)"));
            }
        }
        unmet
    }

    /// Starts services whose dependencies now hold and restarts those whose backoff is over.
    pub fn tick(&mut self, facts: &Facts) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            let due = match self.services[i].state {
                State::Waiting(_) => self.unmet(i, facts).is_empty(),
                State::Backoff(at) => at <= now,
                _ => false,
            };
            if due && !self.stopping {
                if matches!(self.services[i].state, State::Backoff(_)) {
                    self.services[i].restarts += 1;
                }
                self.start(i);
            }
        }
    }

    /// Whether a service waits for a device path (under /dev), which machined's own links may
    /// provide: then they are worth rescanning.
    pub fn waiting_for_devices(&self) -> bool {
        self.services.iter().any(|s| matches!(s.state, State::Waiting(_)) && waits_for_device(&s.spec))
    }

    /// When the next service in backoff is due to start again.
    pub fn next_restart(&self) -> Option<Instant> {
        self.services
            .iter()
            .filter_map(|s| match s.state {
                State::Backoff(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Whether any service waits for its dependencies at all.
    pub fn waiting(&self) -> bool {
        self.services.iter().any(|s| matches!(s.state, State::Waiting(_)))
    }

    fn start(&mut self, i: usize) {
        self.drain_output(i);
        match self.spawn(i) {
            Ok((pid, output)) => {
                let svc = &mut self.services[i];
                crate::console::write(
                    format!("{SERVICE}{} started pid={pid} restarts={}\n", svc.spec.name, svc.restarts).as_bytes(),
                );
                svc.state = State::Running { pid, since: Instant::now() };
                svc.output = Some((output, LineBuffer::default()));
                svc.last_error = None;
            }
            Err(e) => {
                let svc = &mut self.services[i];
                svc.failures += 1;
                let delay = parse::restart_backoff(svc.failures);
                crate::console::write(
                    format!("{SERVICE}{} failed to start: {e}; retrying in {} s\n", svc.spec.name, delay.as_secs())
                        .as_bytes(),
                );
                svc.last_error = Some(e);
                svc.state = State::Backoff(Instant::now() + delay);
            }
        }
    }

    fn spawn(&mut self, i: usize) -> Fallible<(i32, File)> {
        let svc = &mut self.services[i];
        let name = svc.spec.name.clone();
        let container = &svc.spec.container;
        let procs = format!("{}/cgroup.procs", cgroups::service_cgroup(&name)?);
        let mut environment = match &container.environment_file {
            Some(file) => environment_file(file)?,
            None => Vec::new(),
        };
        environment.extend(container.environment.iter().cloned());
        let program = match service_spec::entrypoint_in_root(&container.entrypoint) {
            Some(path) => path,
            None if environment.iter().any(|(k, _)| k == "PATH") => container.entrypoint.clone(),
            None => {
                return Err(format!(
                    "entrypoint {:?} is a bare name and the service sets no PATH (Talos gives extension services \
                     none): name it by its path, or set PATH in container.environment",
                    container.entrypoint
                ))
            }
        };
        if svc.log_file.is_none() {
            if let Some(path) = svc.log_path() {
                let opened = fs::create_dir_all(LOG_DIR)
                    .and_then(|()| fs::OpenOptions::new().create(true).append(true).open(&path));
                match opened {
                    Ok(file) => svc.log_file = Some(file),
                    Err(e) => crate::console::write(
                        format!("{SERVICE}{name} warning: cannot open {path} ({e}); its output goes to the console\n")
                            .as_bytes(),
                    ),
                }
            }
        }
        let (log_read, log_write) = sys::pipe().map_err(|e| format!("pipe for {name}'s output: {e}"))?;
        let log_write2 = log_write.try_clone().map_err(|e| format!("dup {name}'s output pipe: {e}"))?;
        let mut cmd = Command::new(&program);
        cmd.args(&container.args)
            .env_clear()
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_write))
            .stderr(Stdio::from(log_write2));
        let spawned = match svc.isolation {
            Isolation::Shared => {
                // SAFETY: the closure runs in the forked child and only makes system calls (see the
                // module comment on threads).
                unsafe { cmd.pre_exec(move || service_root::join_cgroup(&procs)) };
                cmd.spawn()
            }
            Isolation::Own => {
                create_bind_sources(&container.mounts)?;
                let plan = Plan {
                    name: name.clone(),
                    root: format!("{}/{name}", crate::protocol::SERVICE_ROOTS),
                    stage: format!("{STAGE_DIR}/{name}"),
                    stage_parent_mount: STAGE_MOUNT.to_string(),
                    mounts: container.mounts.clone(),
                    security: container.security.clone(),
                    procs,
                };
                fs::create_dir_all(&plan.stage).map_err(|e| format!("create {}: {e}", plan.stage))?;
                // SAFETY: as above; everything the closure touches is owned by it.
                unsafe { cmd.pre_exec(move || plan.enter()) };
                // The next child becomes PID 1 of a fresh PID namespace; machined itself stays in
                // its own and returns to it for every later child.
                // SAFETY: plain system call.
                sys::check(unsafe { sys::unshare(sys::CLONE_NEWPID) })
                    .map_err(|e| format!("unshare a PID namespace for {name}: {e}"))?;
                let spawned = cmd.spawn();
                // SAFETY: own_pid_ns is an open /proc/self/ns/pid descriptor.
                if let Err(e) = sys::check(unsafe { sys::setns(self.own_pid_ns.as_raw_fd(), sys::CLONE_NEWPID) }) {
                    crate::console::fatal(&format!("return to machined's PID namespace after starting {name}: {e}"));
                }
                spawned
            }
        };
        drop(cmd); // closes machined's copies of the pipe's write end
        match spawned {
            Ok(child) => Ok((child.id() as i32, log_read)),
            Err(e) => {
                // The child wrote what failed into the pipe before exiting; show it.
                let mut out = Vec::new();
                let mut lines = LineBuffer::default();
                let mut buf = [0u8; 4096];
                let mut log_read = log_read;
                let prefix = &self.services[i].prefix;
                while let Ok(n) = log_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lines.push(&buf[..n], prefix, &mut out);
                }
                lines.flush(prefix, &mut out);
                crate::console::write(&out);
                let why = String::from_utf8_lossy(&out)
                    .lines()
                    .last()
                    .map(|l| format!(" ({})", l.trim()))
                    .unwrap_or_default();
                Err(format!("start {program}: {e}{why}"))
            }
        }
    }

    /// Handles a reaped child if it is one of the services; returns whether it was.
    pub fn on_exit(&mut self, pid: i32, wait_status: c_int) -> bool {
        let stopping = self.stopping;
        let Some(i) = self.services.iter().position(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid))
        else {
            return false;
        };
        self.drain_output(i);
        let svc = &mut self.services[i];
        let ran = match svc.state {
            State::Running { since, .. } => since.elapsed(),
            _ => Duration::ZERO,
        };
        let how = describe_wait_status(wait_status);
        let succeeded = wait_status == 0;
        let after = format!("{SERVICE}{} exited ({how}) after {:.1} s", svc.spec.name, ran.as_secs_f64());
        if stopping || svc.spec.restart == Restart::Never || (svc.spec.restart == Restart::UntilSuccess && succeeded) {
            let done = !stopping && svc.spec.restart == Restart::UntilSuccess;
            crate::console::write(format!("{after}{}\n", if done { "; done" } else { "" }).as_bytes());
            svc.state = if done { State::Done } else { State::Exited };
            return true;
        }
        svc.failures = if ran >= HEALTHY_RUN { 1 } else { svc.failures + 1 };
        let delay = parse::restart_backoff(svc.failures);
        crate::console::write(format!("{after}; {SERVICE_RESTARTING} {} s\n", delay.as_secs()).as_bytes());
        svc.state = State::Backoff(Instant::now() + delay);
        true
    }

    /// The services' output pipes to poll, with the service index.
    pub fn output_fds(&self) -> Vec<(RawFd, usize)> {
        self.services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.output.as_ref().map(|(f, _)| (f.as_raw_fd(), i)))
            .collect()
    }

    /// Moves what service `i` wrote to its log (the console, prefixed, or its file), keeping the tail.
    pub fn drain_output(&mut self, i: usize) {
        let svc = &mut self.services[i];
        let mut closed = false;
        let mut lines_out = Vec::new();
        if let Some((file, lines)) = svc.output.as_mut() {
            let mut buf = [0u8; 16 * 1024];
            // Bounded, so one chatty service cannot starve the rest of the loop.
            for _ in 0..8 {
                match file.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => lines.push(&buf[..n], "", &mut lines_out),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break, // WouldBlock: all read
                }
            }
            if closed {
                lines.flush("", &mut lines_out);
            }
        }
        if closed {
            svc.output = None;
        }
        if lines_out.is_empty() {
            return;
        }
        let mut console = Vec::new();
        for line in String::from_utf8_lossy(&lines_out).lines() {
            if svc.tail.len() == TAIL_LINES {
                svc.tail.pop_front();
            }
            svc.tail.push_back(line.to_string());
            let logged =
                svc.log_file.as_mut().is_some_and(|file| file.write_all(format!("{line}\n").as_bytes()).is_ok());
            if !logged {
                console.extend_from_slice(format!("{}{line}\n", svc.prefix).as_bytes());
            }
        }
        if !console.is_empty() {
            crate::console::write(&console);
        }
    }

    /// Whether every service is up, or waits for nothing that is on its way: running, done, exited,
    /// invalid, or waiting only for what the node does not promise soon (a device path holds it back
    /// for `grace`, containerd until it answers; the network, the config, the clock, an operator's
    /// file do not).
    pub fn settled(&self, grace: Duration, facts: &Facts) -> bool {
        (0..self.services.len()).all(|i| match self.services[i].state {
            State::Running { .. } | State::Exited | State::Done | State::Invalid(_) => true,
            State::Waiting(since) => {
                let unmet = self.unmet(i, facts);
                if unmet.is_empty() {
                    return false; // it starts at the next tick
                }
                let device = unmet.iter().any(|u| u.starts_with("path /dev/"));
                let cri = unmet.iter().any(|u| u == "service cri" || u == "service containerd");
                !(cri || (device && since.elapsed() < grace))
            }
            State::Backoff(_) => false,
        })
    }

    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.services.iter().find(|s| s.spec.name == name).and_then(|s| match s.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        })
    }

    pub fn summaries(&self, facts: &Facts) -> Vec<Summary> {
        (0..self.services.len())
            .map(|i| {
                let s = &self.services[i];
                let (pid, state) = match &s.state {
                    State::Waiting(_) => (None, "waiting"),
                    State::Running { pid, .. } => (Some(*pid), "running"),
                    State::Backoff(_) => (None, "restarting"),
                    State::Exited => (None, "exited"),
                    State::Done => (None, "done"),
                    State::Invalid(_) => (None, "invalid"),
                };
                let waiting_for = if state == "waiting" { self.unmet(i, facts) } else { Vec::new() };
                let error = match &s.state {
                    State::Invalid(e) => Some(e.clone()),
                    _ => s.last_error.clone(),
                };
                let (cgroup, namespaces) = match pid {
                    Some(pid) => (process_cgroup(pid), own_namespaces(pid)),
                    None => (None, Vec::new()),
                };
                Summary {
                    name: s.spec.name.clone(),
                    pid,
                    restarts: s.restarts,
                    state: state.to_string(),
                    waiting_for,
                    error,
                    warnings: s.warnings.clone(),
                    log: s.log_path().unwrap_or_else(|| "console".to_string()),
                    log_tail: s.tail.iter().cloned().collect(),
                    cgroup,
                    namespaces,
                }
            })
            .collect()
    }

    /// Stops every service: SIGTERM, then SIGKILL for what is left after `grace`. `reap` is the
    /// caller's reaper (it also handles children that are not services) and is called while waiting.
    pub fn stop_all<F: FnMut(&mut Supervisor)>(&mut self, grace: Duration, reap: F) {
        self.stopping = true;
        self.stop_processes(grace, reap);
        // The log files keep /var busy, which must be unmounted next.
        for i in 0..self.services.len() {
            self.drain_output(i);
            self.services[i].log_file = None;
        }
    }

    fn stop_processes<F: FnMut(&mut Supervisor)>(&mut self, grace: Duration, mut reap: F) {
        for (sig, wait) in [(sys::SIGTERM, grace), (sys::SIGKILL, Duration::from_secs(2))] {
            let running: Vec<(String, i32)> = self
                .services
                .iter()
                .filter_map(|s| match s.state {
                    State::Running { pid, .. } => Some((s.spec.name.clone(), pid)),
                    _ => None,
                })
                .collect();
            // Nothing starts again: waiting and restarting services are done.
            for s in self.services.iter_mut() {
                if matches!(s.state, State::Waiting(_) | State::Backoff(_)) {
                    s.state = State::Exited;
                }
            }
            if running.is_empty() {
                return;
            }
            for (name, pid) in &running {
                if sig == sys::SIGKILL {
                    crate::console::write(format!("{SERVICE}{name} did not stop; SIGKILL\n").as_bytes());
                }
                // SAFETY: plain system call; the pid is a child machined has not reaped yet.
                unsafe { sys::kill(*pid, sig) };
            }
            let start = Instant::now();
            while start.elapsed() < wait {
                reap(self);
                for i in 0..self.services.len() {
                    self.drain_output(i);
                }
                if !self.services.iter().any(|s| matches!(s.state, State::Running { .. })) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn waits_for_device(spec: &ServiceSpec) -> bool {
    spec.depends.iter().any(|d| matches!(d, Dependency::Path(p) if p.starts_with("/dev/")))
}

/// A spec standing in for a file that could not be read, so the service shows in the status.
fn placeholder_spec(name: &str) -> ServiceSpec {
    ServiceSpec {
        name: name.to_string(),
        depends: Vec::new(),
        container: service_spec::Container {
            entrypoint: String::new(),
            args: Vec::new(),
            mounts: Vec::new(),
            environment: Vec::new(),
            environment_file: None,
            security: service_spec::Security::default(),
        },
        restart: Restart::Never,
        log_to_console: true,
    }
}

/// `KEY=value` lines of an environmentFile (blank lines and `#` comments skipped; `export ` and
/// quotes around the value allowed), read when the service starts.
fn environment_file(path: &str) -> Fallible<Vec<(String, String)>> {
    let text = fs::read_to_string(path).map_err(|e| format!("environmentFile {path}: {e}"))?;
    parse_environment(&text).map_err(|e| format!("environmentFile {path}: {e}"))
}

pub fn parse_environment(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: {line:?} is not KEY=value", index + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: {key:?} is not a variable name", index + 1));
        }
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| value.strip_prefix(*a).and_then(|v| v.strip_suffix(*b)))
            .unwrap_or(value);
        out.push((key.to_string(), unquoted.to_string()));
    }
    Ok(out)
}

/// As Talos does before a start: a bind mount's missing source is made, a directory of mode 0700.
fn create_bind_sources(mounts: &[service_spec::Mount]) -> Fallible<()> {
    for mount in mounts.iter().filter(|m| m.bind) {
        if fs::symlink_metadata(&mount.source).is_err() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&mount.source)
                .map_err(|e| format!("create the missing mount source {}: {e}", mount.source))?;
        }
    }
    Ok(())
}

/// Where a per-node file may be created: under /var, /run or a writable directory of the root.
pub fn creatable(path: &str) -> bool {
    clean_absolute(path)
        && ["/var", "/run"]
            .iter()
            .chain(WRITABLE_DIRS.iter())
            .any(|dir| path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1))
}

/// Writes the per-node files the extensions ask for (`<CREATE_FILES>/<extension>.yaml`, their
/// packages.toml `create-file`), each only when missing, `{random}` replaced by fresh random hex.
/// Problems are reported and do not stop the boot: a service waiting for the file says what it lacks.
pub fn create_node_files() {
    let Ok(entries) = fs::read_dir(CREATE_FILES) else { return };
    let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for list in files {
        let shown = list.display().to_string();
        let created = fs::read_to_string(&list)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).map_err(|e| e.to_string()))
            .and_then(|value| create_listed(&value));
        if let Err(e) = created {
            crate::console::write(format!("machined: {shown}: {e}\n").as_bytes());
        }
    }
}

fn create_listed(list: &serde_yaml_ng::Value) -> Result<(), String> {
    let items = list.as_sequence().ok_or("not a list of {path, content}")?;
    for (i, item) in items.iter().enumerate() {
        let field = |key: &str| item.get(key).and_then(|v| v.as_str()).ok_or(format!("entry {i}: no string `{key}`"));
        let (path, content) = (field("path")?, field("content")?);
        if !creatable(path) {
            return Err(format!("entry {i}: {path:?} is not under /var, /run or {}", WRITABLE_DIRS.join(", ")));
        }
        if Path::new(path).exists() {
            continue;
        }
        let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
        let mut random = [0u8; 16];
        let written = fs::create_dir_all(parent)
            .and_then(|()| sys::random_bytes(&mut random))
            .and_then(|()| fs::write(path, content.replace("{random}", &parse::hex(&random))))
            .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o644)));
        written.map_err(|e| format!("creating {path}: {e}"))?;
    }
    Ok(())
}

/// The cgroup v2 path of a process (`0::<path>` in /proc/<pid>/cgroup).
fn process_cgroup(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| l.strip_prefix("0::")).map(String::from)
}

/// The namespaces a process has apart from machined: its /proc/<pid>/ns links differ from ours.
fn own_namespaces(pid: i32) -> Vec<String> {
    ["mnt", "pid", "ipc", "uts", "net"]
        .iter()
        .filter(|ns| {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/{ns}"));
            let ours = fs::read_link(format!("/proc/self/ns/{ns}"));
            matches!((theirs, ours), (Ok(a), Ok(b)) if a != b)
        })
        .map(|ns| ns.to_string())
        .collect()
}

/// "status 1" or "signal 9" from a waitpid(2) status.
pub fn describe_wait_status(status: c_int) -> String {
    let signal = status & 0x7f;
    if signal == 0 {
        format!("status {}", (status >> 8) & 0xff)
    } else {
        format!("signal {}", parse::signal_name(signal as u32))
    }
}

/// An extension service as read from its file: its spec and warnings, or (name, why it is unusable).
pub type Discovered = Result<(ServiceSpec, Vec<String>), (String, String)>;

/// Reads the extension services' spec files (`*.yaml` in SERVICE_SPECS, Talos's format), sorted by
/// name. A file that does not parse becomes an invalid service (reported, never started) rather than
/// stopping the node; unknown keys are warnings, as in Talos.
pub fn discover() -> Vec<Discovered> {
    let mut files: Vec<String> = match fs::read_dir(SERVICE_SPECS) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect(),
        Err(_) => return Vec::new(), // no extension services
    };
    files.sort();
    let mut found: Vec<Discovered> = Vec::new();
    for file in files {
        let stem = file.trim_end_matches(".yaml").to_string();
        let path = format!("{SERVICE_SPECS}/{file}");
        let parsed = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}")).and_then(|text| {
            service_spec::parse(&text)
                .map_err(|problems| problems.iter().map(|p| p.at(&path)).collect::<Vec<_>>().join("; "))
        });
        let entry = match parsed {
            Ok(p) if found.iter().any(|f| matches!(f, Ok((s, _)) if s.name == p.spec.name)) => {
                Err((stem, format!("{path}: a second service named {} (Talos refuses the duplicate)", p.spec.name)))
            }
            Ok(p) => Ok((p.spec, p.warnings.iter().map(|w| w.at(&path)).collect())),
            Err(e) => Err((stem, e)),
        };
        found.push(entry);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::NetworkFacts;

    #[test]
    fn wait_statuses() {
        assert_eq!(describe_wait_status(0), "status 0");
        assert_eq!(describe_wait_status(1 << 8), "status 1");
        assert_eq!(describe_wait_status(9), "signal SIGKILL");
        assert_eq!(describe_wait_status(15 | 0x80), "signal SIGTERM");
    }

    #[test]
    fn environment_files_parse() {
        let text = "# comment\n\nA=1\nexport B = \"two words\"\nC='x=y'\n";
        assert_eq!(
            parse_environment(text).unwrap(),
            [("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "x=y".into())]
        );
        assert!(parse_environment("A=1\nnonsense\n").unwrap_err().starts_with("line 2"));
        assert!(parse_environment("A-B=1\n").is_err());
    }

    #[test]
    fn creatable_paths_are_the_writable_places() {
        for ok in ["/var/lib/x", "/run/x", "/etc/iscsi/initiatorname.iscsi"] {
            assert!(creatable(ok), "{ok}");
        }
        for bad in ["/etc/x", "/var", "/etc/iscsi", "/var/../etc/x", "var/x", "/etc/iscsix/y"] {
            assert!(!creatable(bad), "{bad}");
        }
    }

    fn supervisor(specs: &[&str]) -> Supervisor {
        let mut s = Supervisor { services: Vec::new(), own_pid_ns: File::open("/dev/null").unwrap(), stopping: false };
        let discovered = specs
            .iter()
            .map(|text| {
                service_spec::parse(text).map(|p| (p.spec, Vec::new())).map_err(|e| ("x".to_string(), format!("{e:?}")))
            })
            .collect();
        s.add_extension_services(discovered);
        s
    }

    const ISCSID: &str = include_str!("../../tests/fixtures/talos-services/storage/iscsi-tools/iscsid.yaml");

    #[test]
    fn waiting_says_what_for_and_facts_release_it() {
        let s = supervisor(&[ISCSID]);
        let none = Facts::default();
        assert_eq!(
            s.unmet(0, &none)[..5],
            ["service cri", "network.addresses", "network.connectivity", "network.hostname", "network.etcfiles"]
        );
        assert!(!s.settled(Duration::ZERO, &none), "containerd is coming: wait for it");
        let cri = Facts { cri: true, ..Facts::default() };
        assert!(s.unmet(0, &cri).iter().all(|u| u.starts_with("network.") || u.starts_with("path ")));
        assert!(s.settled(Duration::ZERO, &cri), "the network is not promised: the node is ready without it");
        let all = Facts {
            cri: true,
            network: NetworkFacts { addresses: true, connectivity: true, hostname: true, etcfiles: true },
            configuration: true,
            time_synced: true,
        };
        assert_eq!(s.unmet(0, &all), ["path /etc/iscsi/initiatorname.iscsi"]);
        let free = supervisor(&["name: free\ncontainer:\n  entrypoint: /f\nrestart: always\n"]);
        assert!(!free.settled(Duration::ZERO, &none), "a service about to start holds the node until it has");
    }

    #[test]
    fn unknown_services_make_a_spec_invalid_and_udevd_warns() {
        let needs =
            |id: &str| format!("name: s\ndepends:\n  - service: {id}\ncontainer:\n  entrypoint: /s\nrestart: always\n");
        let s = supervisor(&[&needs("kubelet")]);
        let summary = &s.summaries(&Facts::default())[0];
        assert_eq!(summary.state, "invalid");
        assert!(summary.error.as_deref().unwrap().contains("depends on service kubelet, which this node does not run"));
        let s = supervisor(&[&needs("udevd")]);
        assert!(s.unmet(0, &Facts::default()).is_empty());
        assert!(s.summaries(&Facts::default())[0].warnings[0].contains("udevd, which this node does not run"));
        let other = "name: other\ncontainer:\n  entrypoint: /o\nrestart: always\n";
        let s = supervisor(&[other, &needs("ext-other")]);
        assert_eq!(s.unmet(1, &Facts::default()), ["service ext-other"]);
        assert_eq!(s.summaries(&Facts::default())[1].state, "waiting");
    }
}

//! Supervised services: containerd from the node's root, and extension services each in their own
//! root and namespaces. Every service runs in its own cgroup (system/<name>), has its output piped
//! to the console a line at a time behind a `[name] ` prefix, waits for its depends-paths, and is
//! restarted with backoff (1 s doubling to 30 s) when it exits, unless it says restart=never.
//!
//! An isolated (extension) service gets new mount, PID, IPC and UTS namespaces. Its root is a
//! read-only overlay of a small tmpfs holding the mount points (so the extension needs none) over
//! the extension's `root=` directory; the `bind=` lines are mounted into it, /proc is a fresh procfs
//! of the service's PID namespace, /tmp a private tmpfs; then it pivot_roots into it and the node's
//! root is detached. The set-up runs in the forked child before exec (std's `pre_exec`). machined's
//! only other threads (the boot-time module loader and page-cache prefetch) hold no lock the child
//! needs: it makes system calls and allocates, which glibc's fork keeps consistent.

use crate::fallible::Fallible;
use crate::parse::{self, LineBuffer, Restart, ServiceSpec};
use crate::protocol::{SERVICE, SERVICE_RESTARTING, SERVICE_SPECS, SERVICE_SUFFIX};
use crate::{cgroups, sys};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::raw::c_int;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where each isolated service's mount staging directory lives (a tmpfs mounted in its own
/// namespace, so the node sees only empty directories).
const STAGE_DIR: &str = "/run/machined/services";
/// A run at least this long resets the backoff: the service was healthy, this exit is news.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// The node's root and namespaces (containerd: it manages the node's mounts and containers).
    Shared,
    /// Own root and mount/PID/IPC/UTS namespaces.
    Own,
}

#[derive(Debug)]
enum State {
    /// Waiting for its depends-paths since the instant.
    Waiting(Instant),
    Running {
        pid: i32,
        since: Instant,
    },
    /// Exited; starts again at the instant.
    Backoff(Instant),
    /// Exited for good (restart=never, or shutdown).
    Exited,
    /// Its service file is broken; never started.
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
    log: Option<(File, LineBuffer)>,
}

/// One service's state for the status line.
#[derive(Clone)]
pub struct Summary {
    pub name: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub state: String,
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

impl Supervisor {
    pub fn new() -> Fallible<Supervisor> {
        let own_pid_ns = File::open("/proc/self/ns/pid").map_err(|e| format!("open /proc/self/ns/pid: {e}"))?;
        Ok(Supervisor { services: Vec::new(), own_pid_ns, stopping: false })
    }

    pub fn add(&mut self, spec: ServiceSpec, isolation: Isolation) {
        let prefix = format!("[{}] ", spec.name);
        for (path, content) in &spec.create_files {
            if let Err(e) = create_node_file(path, content) {
                crate::console::write(format!("{prefix}cannot create {path}: {e}\n").as_bytes());
            }
        }
        self.services.push(Service {
            spec,
            isolation,
            state: State::Waiting(Instant::now()),
            restarts: 0,
            failures: 0,
            prefix,
            log: None,
        });
    }

    /// A service whose file could not be read; reported, never started.
    pub fn add_invalid(&mut self, name: &str, error: String) {
        crate::console::write(format!("{SERVICE}{name} invalid: {error}\n").as_bytes());
        self.services.push(Service {
            spec: ServiceSpec {
                name: name.to_string(),
                root: String::new(),
                entrypoint: String::new(),
                args: Vec::new(),
                depends_paths: Vec::new(),
                restart: Restart::Never,
                binds: Vec::new(),
                create_files: Vec::new(),
            },
            isolation: Isolation::Own,
            state: State::Invalid(error),
            restarts: 0,
            failures: 0,
            prefix: String::new(),
            log: None,
        });
    }

    /// Starts services whose depends-paths now exist and restarts those whose backoff is over.
    pub fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.services.len() {
            let due = match self.services[i].state {
                State::Waiting(_) => self.services[i].spec.depends_paths.iter().all(|p| Path::new(p).exists()),
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
        self.services.iter().any(|s| {
            matches!(s.state, State::Waiting(_)) && s.spec.depends_paths.iter().any(|p| p.starts_with("/dev/"))
        })
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

    /// Whether any service waits for a path at all.
    pub fn waiting(&self) -> bool {
        self.services.iter().any(|s| matches!(s.state, State::Waiting(_)))
    }

    fn start(&mut self, i: usize) {
        self.drain_log(i);
        match self.spawn(i) {
            Ok((pid, log)) => {
                let svc = &mut self.services[i];
                crate::console::write(
                    format!("{SERVICE}{} started pid={pid} restarts={}\n", svc.spec.name, svc.restarts).as_bytes(),
                );
                svc.state = State::Running { pid, since: Instant::now() };
                svc.log = Some((log, LineBuffer::default()));
            }
            Err(e) => {
                let svc = &mut self.services[i];
                svc.failures += 1;
                let delay = parse::restart_backoff(svc.failures);
                crate::console::write(
                    format!("{SERVICE}{} failed to start: {e}; retrying in {} s\n", svc.spec.name, delay.as_secs())
                        .as_bytes(),
                );
                svc.state = State::Backoff(Instant::now() + delay);
            }
        }
    }

    fn spawn(&mut self, i: usize) -> Fallible<(i32, File)> {
        let svc = &self.services[i];
        let name = svc.spec.name.clone();
        let procs = format!("{}/cgroup.procs", cgroups::service_cgroup(&name)?);
        let (log_read, log_write) = sys::pipe().map_err(|e| format!("pipe for {name}'s output: {e}"))?;
        let log_write2 = log_write.try_clone().map_err(|e| format!("dup {name}'s output pipe: {e}"))?;
        let mut cmd = Command::new(&svc.spec.entrypoint);
        cmd.args(&svc.spec.args)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_write))
            .stderr(Stdio::from(log_write2));
        let spawned = match svc.isolation {
            Isolation::Shared => {
                // SAFETY: the closure runs in the forked child and only makes system calls (see the
                // module comment on threads).
                unsafe { cmd.pre_exec(move || join_cgroup(&procs)) };
                cmd.spawn()
            }
            Isolation::Own => {
                create_state_dirs(&svc.spec.binds)?;
                let plan = Isolated {
                    name: name.clone(),
                    root: svc.spec.root.clone(),
                    binds: svc.spec.binds.clone(),
                    stage: format!("{STAGE_DIR}/{name}"),
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
                while let Ok(n) = log_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lines.push(&buf[..n], &self.services[i].prefix, &mut out);
                }
                lines.flush(&self.services[i].prefix, &mut out);
                crate::console::write(&out);
                Err(format!("start {}: {e}", self.services[i].spec.entrypoint))
            }
        }
    }

    /// Handles a reaped child if it is one of the services; returns whether it was.
    pub fn on_exit(&mut self, pid: i32, wait_status: c_int) -> bool {
        let stopping = self.stopping;
        let svc = match self.services.iter_mut().find(|s| matches!(s.state, State::Running { pid: p, .. } if p == pid))
        {
            Some(svc) => svc,
            None => return false,
        };
        let ran = match svc.state {
            State::Running { since, .. } => since.elapsed(),
            _ => Duration::ZERO,
        };
        let how = describe_wait_status(wait_status);
        if stopping || svc.spec.restart == Restart::Never {
            crate::console::write(
                format!("{SERVICE}{} exited ({how}) after {:.1} s\n", svc.spec.name, ran.as_secs_f64()).as_bytes(),
            );
            svc.state = State::Exited;
            return true;
        }
        svc.failures = if ran >= HEALTHY_RUN { 1 } else { svc.failures + 1 };
        let delay = parse::restart_backoff(svc.failures);
        crate::console::write(
            format!(
                "{SERVICE}{} exited ({how}) after {:.1} s; {SERVICE_RESTARTING} {} s\n",
                svc.spec.name,
                ran.as_secs_f64(),
                delay.as_secs()
            )
            .as_bytes(),
        );
        svc.state = State::Backoff(Instant::now() + delay);
        true
    }

    /// The services' output pipes to poll, with the service index.
    pub fn log_fds(&self) -> Vec<(RawFd, usize)> {
        self.services.iter().enumerate().filter_map(|(i, s)| s.log.as_ref().map(|(f, _)| (f.as_raw_fd(), i))).collect()
    }

    /// Copies what service `i` wrote to the console, prefixed per line.
    pub fn drain_log(&mut self, i: usize) {
        let svc = &mut self.services[i];
        let mut closed = false;
        let mut out = Vec::new();
        if let Some((file, lines)) = svc.log.as_mut() {
            let mut buf = [0u8; 16 * 1024];
            // Bounded, so one chatty service cannot starve the rest of the loop.
            for _ in 0..8 {
                match file.read(&mut buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => lines.push(&buf[..n], &svc.prefix, &mut out),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break, // WouldBlock: all read
                }
            }
            if closed {
                lines.flush(&svc.prefix, &mut out);
            }
        }
        if closed {
            svc.log = None;
        }
        if !out.is_empty() {
            crate::console::write(&out);
        }
    }

    /// Whether every service is up: running, or given up waiting for a depends-path after `grace`,
    /// or (for restart=never) run and exited.
    /// A path under /dev is a device the kernel may still be discovering (a virtio port appears a
    /// moment after its driver loads), worth waiting for; any other path is something the operator
    /// provides (e.g. iscsid's initiator name) and does not hold the node back.
    pub fn settled(&self, grace: Duration) -> bool {
        self.services.iter().all(|s| match s.state {
            State::Running { .. } | State::Exited | State::Invalid(_) => true,
            State::Waiting(since) => {
                since.elapsed() >= grace || !s.spec.depends_paths.iter().any(|p| p.starts_with("/dev/"))
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

    pub fn summaries(&self) -> Vec<Summary> {
        self.services
            .iter()
            .map(|s| {
                let (pid, state) = match &s.state {
                    State::Waiting(_) => (None, format!("waiting for {}", s.spec.depends_paths.join(", "))),
                    State::Running { pid, .. } => (Some(*pid), "running".to_string()),
                    State::Backoff(_) => (None, "restarting".to_string()),
                    State::Exited => (None, "exited".to_string()),
                    State::Invalid(e) => (None, format!("invalid: {e}")),
                };
                let (cgroup, namespaces) = match pid {
                    Some(pid) => (process_cgroup(pid), own_namespaces(pid)),
                    None => (None, Vec::new()),
                };
                Summary { name: s.spec.name.clone(), pid, restarts: s.restarts, state, cgroup, namespaces }
            })
            .collect()
    }

    /// Stops every service: SIGTERM, then SIGKILL for what is left after `grace`. `reap` is the
    /// caller's reaper (it also handles children that are not services) and is called while waiting.
    pub fn stop_all<F: FnMut(&mut Supervisor)>(&mut self, grace: Duration, mut reap: F) {
        self.stopping = true;
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
                    self.drain_log(i);
                }
                if !self.services.iter().any(|s| matches!(s.state, State::Running { .. })) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Bind sources under /run and /var are the service's state (e.g. /run/qemu-guest-agent for its
/// /run): created empty when missing, as they would be on a fresh node every boot. Anything else must
/// exist.
/// Writes a per-node file the service needs (when missing), `{random}` replaced by fresh random hex.
fn create_node_file(path: &str, template: &str) -> io::Result<()> {
    if Path::new(path).exists() {
        return Ok(());
    }
    if let Some(parent) = Path::new(path).parent() {
        fs::create_dir_all(parent)?;
    }
    let mut random = [0u8; 16];
    crate::sys::random_bytes(&mut random)?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(path, template.replace("{random}", &hex))
}

fn create_state_dirs(binds: &[parse::Bind]) -> Fallible<()> {
    for bind in binds {
        let state = bind.src.starts_with("/run/") || bind.src.starts_with("/var/");
        if state && fs::symlink_metadata(&bind.src).is_err() {
            fs::create_dir_all(&bind.src).map_err(|e| format!("create bind source {}: {e}", bind.src))?;
            fs::set_permissions(&bind.src, fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("chmod bind source {}: {e}", bind.src))?;
        }
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

/// Moves the calling process into the cgroup whose cgroup.procs is `procs` ("0" means the writer).
fn join_cgroup(procs: &str) -> io::Result<()> {
    step(&format!("join cgroup {procs}"), fs::write(procs, "0"))?;
    // A session of its own: the service gets no controlling terminal and its own process group.
    // SAFETY: plain system call.
    unsafe { sys::setsid() };
    Ok(())
}

/// In the child: reports a failed set-up step on its output (the service's log pipe) and passes the
/// error on, so the parent's spawn fails with it.
fn step<T>(what: &str, result: io::Result<T>) -> io::Result<T> {
    result.map_err(|e| {
        let _ = sys::write_all_fd(2, format!("machined: {what}: {e}\n").as_bytes());
        e
    })
}

/// Everything the child needs to build an isolated service's root.
struct Isolated {
    name: String,
    root: String,
    binds: Vec<parse::Bind>,
    stage: String,
    procs: String,
}

impl Isolated {
    /// Runs in the forked child, before exec.
    fn enter(&self) -> io::Result<()> {
        join_cgroup(&self.procs)?;
        let flags = sys::CLONE_NEWNS | sys::CLONE_NEWIPC | sys::CLONE_NEWUTS;
        // SAFETY: plain system call.
        step("unshare mount, IPC and UTS namespaces", sys::check(unsafe { sys::unshare(flags) }))?;
        // Nothing mounted here may propagate back to the node.
        step("make / private", sys::do_mount(None, "/", None, sys::MS_REC | sys::MS_PRIVATE, None))?;
        let stage = &self.stage;
        step(
            &format!("mount tmpfs on {stage}"),
            sys::do_mount(Some("tmpfs"), stage, Some("tmpfs"), sys::MS_NOSUID | sys::MS_NODEV, Some("mode=0755")),
        )?;
        // The skeleton: mount points for everything mounted below, as an overlay layer above the
        // service's root, so the extension's (read-only) tree need not contain them.
        let skel = format!("{stage}/skel");
        let new_root = format!("{stage}/root");
        step("create the root skeleton", fs::create_dir(&skel).and_then(|()| fs::create_dir(&new_root)))?;
        for dir in ["/tmp", "/proc"] {
            step(&format!("create mount point {dir}"), fs::create_dir_all(format!("{skel}{dir}")))?;
        }
        for bind in &self.binds {
            let point = format!("{skel}{}", bind.dst);
            let is_dir = fs::metadata(&bind.src).map(|m| m.is_dir());
            let is_dir = step(&format!("bind source {}", bind.src), is_dir)?;
            let made = if is_dir {
                fs::create_dir_all(&point)
            } else {
                fs::create_dir_all(Path::new(&point).parent().unwrap_or_else(|| Path::new("/"))).and_then(|()| {
                    fs::OpenOptions::new().write(true).create(true).truncate(false).open(&point).map(drop)
                })
            };
            step(&format!("create mount point {}", bind.dst), made)?;
        }
        // Two lower layers and no upper: overlayfs mounts it read-only by construction.
        let options = format!("lowerdir={skel}:{}", self.root);
        step(
            &format!("mount the service root (overlay {options}) on {new_root}"),
            sys::do_mount(Some("overlay"), &new_root, Some("overlay"), sys::MS_RDONLY, Some(&options)),
        )?;
        let hardened = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
        step(
            "mount a private /tmp",
            sys::do_mount(
                Some("tmpfs"),
                &format!("{new_root}/tmp"),
                Some("tmpfs"),
                sys::MS_NOSUID | sys::MS_NODEV,
                Some("mode=1777"),
            ),
        )?;
        let mut proc_mounted = false;
        for bind in &self.binds {
            let target = format!("{new_root}{}", bind.dst);
            if bind.dst == "/proc" {
                // A procfs of the service's own PID namespace, not a view of the node's processes.
                step("mount /proc", sys::do_mount(Some("proc"), &target, Some("proc"), hardened, None))?;
                proc_mounted = true;
                continue;
            }
            step(
                &format!("bind {} on {}", bind.src, bind.dst),
                sys::do_mount(Some(&bind.src), &target, None, sys::MS_BIND | sys::MS_REC, None),
            )?;
            if !bind.rw {
                step(
                    &format!("make {} read-only", bind.dst),
                    sys::do_mount(None, &target, None, sys::MS_REMOUNT | sys::MS_BIND | sys::MS_RDONLY, None),
                )?;
            }
        }
        if !proc_mounted {
            step(
                "mount /proc",
                sys::do_mount(Some("proc"), &format!("{new_root}/proc"), Some("proc"), hardened, None),
            )?;
        }
        let host = sys::cstr(&self.name);
        // SAFETY: host is a live NUL-terminated string of the given length.
        step("set the host name", sys::check(unsafe { sys::sethostname(host.as_ptr(), self.name.len()) }))?;
        let root = sys::cstr(&new_root);
        let dot = sys::cstr(".");
        let slash = sys::cstr("/");
        // SAFETY: NUL-terminated paths; pivot_root(".", ".") stacks the old root under the new one,
        // and the detach below drops it.
        unsafe {
            step("chdir into the new root", sys::check(sys::chdir(root.as_ptr())))?;
            let ret = sys::syscall(sys::SYS_PIVOT_ROOT, dot.as_ptr(), dot.as_ptr()) as c_int;
            step("pivot_root", sys::check(ret))?;
        }
        step("detach the node's root", sys::do_umount(".", sys::MNT_DETACH))?;
        // SAFETY: NUL-terminated path.
        step("chdir /", sys::check(unsafe { sys::chdir(slash.as_ptr()) }))?;
        Ok(())
    }
}

/// An extension service as read from its file: its spec, or (name, why it is unusable).
pub type Discovered = Result<ServiceSpec, (String, String)>;

/// Reads the extension services' files (`*.machined` in SERVICE_SPECS), sorted by name. A file that does
/// not parse becomes an invalid service (reported, never started) rather than stopping the node.
pub fn discover() -> Vec<Discovered> {
    let mut files: Vec<String> = match fs::read_dir(SERVICE_SPECS) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.strip_suffix(SERVICE_SUFFIX).is_some_and(|stem| stem.ends_with('.')))
            .collect(),
        Err(_) => return Vec::new(), // no extension services
    };
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let stem = file[..file.len() - SERVICE_SUFFIX.len() - 1].to_string();
            let path = format!("{SERVICE_SPECS}/{file}");
            fs::read_to_string(&path)
                .map_err(|e| format!("read {path}: {e}"))
                .and_then(|text| parse::service_spec(&text).map_err(|e| format!("{path}: {e}")))
                .and_then(|spec| {
                    if spec.name == stem {
                        Ok(spec)
                    } else {
                        Err(format!("{path}: name={} does not match the file name", spec.name))
                    }
                })
                .map_err(|e| (stem, e))
        })
        .collect()
}

impl Supervisor {
    /// Adds discovered extension services, isolated.
    pub fn add_extension_services(&mut self, discovered: Vec<Discovered>) {
        for service in discovered {
            match service {
                Ok(spec) => self.add(spec, Isolation::Own),
                Err((name, error)) => self.add_invalid(&name, error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        assert_eq!(describe_wait_status(0), "status 0");
        assert_eq!(describe_wait_status(1 << 8), "status 1");
        assert_eq!(describe_wait_status(9), "signal SIGKILL");
        assert_eq!(describe_wait_status(15 | 0x80), "signal SIGTERM");
    }
}

//! machined: the node's PID 1.
//!
//! Runs from the initramfs (`/init`): mounts /proc, /sys and /dev, loads the boot modules listed in
//! /etc/machined/modules, attaches /rootfs.sqsh read-only to a loop device, mounts it (squashfs) and
//! switches root into it, then reports one `MACHINED-STATUS {json}` line on the console. With
//! `machined.smoke=1` on the kernel command line it powers off right after; otherwise it waits for the
//! ACPI power button or SIGTERM/SIGINT/SIGPWR/SIGUSR2, reaping children meanwhile, then powers off.
//! Any failure prints `MACHINED-FATAL: ...` and powers off: PID 1 never exits and never hangs.
//!
//! Std only and valid for rustc 1.63: the image build compiles this file with Debian's rustc for both
//! architectures (xtask/src/machined_build.rs). libc functions are declared by hand in `sys`.
//!
//! `no_main`: std's runtime start aborts when fds 0-2 are closed and /dev/null cannot be opened, which
//! is exactly an initramfs whose kernel found no /dev/console. Starting from the C `main` lets machined
//! mount devtmpfs and open the console itself instead.

#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod json;
mod parse;
mod sys;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::raw::{c_int, c_long, c_ulong};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

const MODULE_LIST: &str = "/etc/machined/modules";
const ROOT_IMAGE: &str = "/rootfs.sqsh";
const NEW_ROOT: &str = "/newroot";
const OS_RELEASE: &str = "/usr/lib/os-release";
const SMOKE_FLAG: &str = "machined.smoke=1";
/// bench boots machined alone in an initramfs with this flag to measure the floor: firmware, stub and
/// kernel with a trivial init that reports at once and powers off.
const FLOOR_FLAG: &str = "machined.floor=1";
const WRITE_PROBE: &str = "/.machined-write-probe";
const EROFS: i32 = 30;

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
    match boot(init_start) {
        Ok(true) => {
            console_write(b"MACHINED-SHUTDOWN reason=smoke\n");
            power_off()
        }
        Ok(false) => wait_for_shutdown(&sigmask),
        Err(e) => fatal(&e),
    }
}

/// What machined reports once the root is up.
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
    pub milestones_ms: Vec<(&'static str, u64)>,
}

/// The status as one JSON object on one line.
pub fn status_json(s: &Status) -> String {
    let mut milestones = json::Object::new();
    for (name, ms) in &s.milestones_ms {
        milestones = milestones.u64(name, *ms);
    }
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
        .object("milestones_ms", milestones)
        .finish()
}

/// Brings the machine up to the reported state. Returns whether this is a smoke boot.
fn boot(init_start: u64) -> Fallible<bool> {
    let mut milestones = vec![("init_start", init_start)];
    mount_api_filesystems()?;
    setup_console()?;
    // Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting on the spot.
    // SAFETY: plain system call without pointers.
    unsafe { sys::reboot(sys::RB_DISABLE_CAD) };
    let cmdline = read_trimmed("/proc/cmdline")?;
    if parse::cmdline_has(&cmdline, FLOOR_FLAG) {
        console_write(format!("MACHINED-FLOOR ready_ms={}\n", sys::boot_ms()).as_bytes());
        return Ok(true);
    }

    let modules = load_modules()?;
    milestones.push(("modules_loaded", sys::boot_ms()));

    let loop_device = attach_loop(ROOT_IMAGE)?;
    mount_new_root(&loop_device)?;
    switch_root()?;
    milestones.push(("root_mounted", sys::boot_ms()));

    let os_release = fs::read_to_string(OS_RELEASE).ctx(|| format!("read {OS_RELEASE} in the new root"))?;
    let field = |key: &str| {
        parse::os_release_get(&os_release, key).ok_or_else(|| format!("{OS_RELEASE} in the new root has no {key}="))
    };
    let image = field("IMAGE_ID")?;
    let version = field("IMAGE_VERSION")?;
    let kernel = read_trimmed("/proc/sys/kernel/osrelease")?;
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
        loop_device,
        milestones_ms: milestones,
    };
    let line = format!("MACHINED-STATUS {}\n", status_json(&status));
    console_write(line.as_bytes());
    Ok(parse::cmdline_has(&cmdline, SMOKE_FLAG))
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
fn console_write(msg: &[u8]) {
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

/// finit_module(2) for every path in /etc/machined/modules, in order. Returns the module names.
fn load_modules() -> Fallible<Vec<String>> {
    let list = fs::read_to_string(MODULE_LIST).ctx(|| format!("read {MODULE_LIST}"))?;
    let mut names = Vec::new();
    for path in parse::module_list(&list) {
        let file = File::open(&path).ctx(|| format!("load module: open {path}"))?;
        let params = b"\0";
        // SAFETY: fd is open, params is NUL-terminated; the kernel only reads them.
        let ret =
            unsafe { sys::syscall(sys::SYS_FINIT_MODULE, file.as_raw_fd() as c_long, params.as_ptr(), 0 as c_long) };
        if ret != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(sys::EEXIST) {
                return Err(format!("load module {path}: finit_module: {err}"));
            }
        }
        names.push(parse::module_name(&path));
    }
    Ok(names)
}

/// Waits until `path` exists (devtmpfs creates device nodes as the kernel registers devices).
fn wait_for_path(path: &str, timeout: Duration) -> Fallible<()> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > timeout {
            return Err(format!("{path} did not appear within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Attaches `image` read-only to a free loop device; returns the device path.
fn attach_loop(image: &str) -> Fallible<String> {
    let backing = File::open(image).ctx(|| format!("open root image {image}"))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .ctx(|| "open /dev/loop-control (is the loop module listed?)".into())?;
    let mut last_error = String::new();
    for _attempt in 0..20 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = sys::check(unsafe { sys::ioctl(control.as_raw_fd(), sys::LOOP_CTL_GET_FREE) })
            .ctx(|| "LOOP_CTL_GET_FREE on /dev/loop-control".into())?;
        let device = format!("/dev/loop{n}");
        wait_for_path(&device, Duration::from_secs(5))?;
        // Opened read-only: the kernel then marks the loop device read-only as well.
        let dev = File::open(&device).ctx(|| format!("open {device}"))?;
        match configure_loop(&dev, &backing, image) {
            Ok(()) => return Ok(device),
            // Another process took this device between GET_FREE and configure: try the next.
            Err(e) if e.raw_os_error() == Some(sys::EBUSY) => {
                last_error = format!("{device}: {e}");
            }
            Err(e) => return Err(format!("attach {image} to {device}: {e}")),
        }
    }
    Err(format!("attach {image}: no free loop device (last: {last_error})"))
}

/// LOOP_CONFIGURE (Linux 5.8+), falling back to LOOP_SET_FD + LOOP_SET_STATUS64.
fn configure_loop(dev: &File, backing: &File, image: &str) -> io::Result<()> {
    let mut info = sys::loop_info64::zeroed();
    info.lo_flags = sys::LO_FLAGS_READ_ONLY;
    let name = image.as_bytes();
    let len = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    let config = sys::loop_config { fd: backing.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: config is a valid struct loop_config the kernel only reads.
    let ret = unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_CONFIGURE, &config) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(sys::EINVAL) && err.raw_os_error() != Some(sys::ENOTTY) {
        return Err(err);
    }
    // SAFETY: LOOP_SET_FD takes the backing fd by value.
    sys::check(unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_SET_FD, backing.as_raw_fd() as c_ulong) })?;
    // Read-only follows from the read-only opens; LOOP_SET_STATUS64 cannot set that flag.
    let mut info = config.info;
    info.lo_flags = 0;
    // SAFETY: info is a valid struct loop_info64 the kernel only reads.
    let ret = unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_SET_STATUS64, &info) };
    if ret != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_CLR_FD) };
        return Err(err);
    }
    Ok(())
}

/// Mounts the root image on /newroot with tmpfs on run/ and tmp/, and moves /dev, /proc, /sys there.
fn mount_new_root(device: &str) -> Fallible<()> {
    fs::create_dir_all(NEW_ROOT).ctx(|| format!("create {NEW_ROOT}"))?;
    sys::do_mount(Some(device), NEW_ROOT, Some("squashfs"), sys::MS_RDONLY, None)
        .ctx(|| format!("mount {device} ({ROOT_IMAGE}) as squashfs on {NEW_ROOT}"))?;
    let dir_missing = |dir: &str| {
        if Path::new(&format!("{NEW_ROOT}{dir}")).is_dir() {
            String::new()
        } else {
            format!(" (the root image has no directory {dir})")
        }
    };
    for (dir, mode) in [("/run", "mode=0755"), ("/tmp", "mode=1777")] {
        let target = format!("{NEW_ROOT}{dir}");
        sys::do_mount(Some("tmpfs"), &target, Some("tmpfs"), sys::MS_NOSUID | sys::MS_NODEV, Some(mode))
            .ctx(|| format!("mount tmpfs on {target}{}", dir_missing(dir)))?;
    }
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        sys::do_mount(Some(dir), &target, None, sys::MS_MOVE, None)
            .ctx(|| format!("move {dir} to {target}{}", dir_missing(dir)))?;
    }
    Ok(())
}

/// Makes /newroot the root, as switch_root(8) does. The initramfs stays in memory underneath: it
/// holds rootfs.sqsh, which backs the loop device.
fn switch_root() -> Fallible<()> {
    let new_root = sys::cstr(NEW_ROOT);
    let dot = sys::cstr(".");
    let slash = sys::cstr("/");
    // SAFETY: NUL-terminated paths.
    sys::check(unsafe { sys::chdir(new_root.as_ptr()) }).ctx(|| format!("chdir {NEW_ROOT}"))?;
    sys::do_mount(Some(NEW_ROOT), "/", None, sys::MS_MOVE, None).ctx(|| format!("move {NEW_ROOT} onto /"))?;
    // SAFETY: NUL-terminated paths.
    sys::check(unsafe { sys::chroot(dot.as_ptr()) }).ctx(|| "chroot into the new root".into())?;
    // SAFETY: NUL-terminated path.
    sys::check(unsafe { sys::chdir(slash.as_ptr()) }).ctx(|| "chdir / in the new root".into())?;
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

/// The steady state: reap children until the power button or a shutdown signal, then power off.
fn wait_for_shutdown(sigmask: &sys::sigset_t) -> ! {
    // SAFETY: sigmask is an initialised sigset_t.
    let fd: RawFd = match sys::check(unsafe { sys::signalfd(-1, sigmask, sys::SFD_NONBLOCK | sys::SFD_CLOEXEC) }) {
        Ok(fd) => fd,
        Err(e) => fatal(&format!("signalfd: {e}")),
    };
    // SAFETY: fd is a fresh descriptor we own.
    let mut sigfd = unsafe { File::from_raw_fd(fd) };
    let mut inputs: Vec<(String, File)> = Vec::new();
    let mut last_scan: Option<Instant> = None;
    loop {
        if last_scan.map_or(true, |t| t.elapsed() >= Duration::from_secs(1)) {
            scan_inputs(&mut inputs);
            last_scan = Some(Instant::now());
        }
        let mut fds: Vec<sys::pollfd> = std::iter::once(sigfd.as_raw_fd())
            .chain(inputs.iter().map(|(_, f)| f.as_raw_fd()))
            .map(|fd| sys::pollfd { fd, events: sys::POLLIN, revents: 0 })
            .collect();
        // SAFETY: fds is a live array of pollfd of the given length.
        let ready = unsafe { sys::poll(fds.as_mut_ptr(), fds.len() as c_ulong, 1000) };
        reap_children();
        if ready <= 0 {
            continue; // timeout or EINTR
        }
        if fds[0].revents & sys::POLLIN != 0 {
            if let Some(name) = read_signals(&mut sigfd) {
                shutdown(&format!("signal {name}"));
            }
        }
        let mut gone = Vec::new();
        for (i, pfd) in fds[1..].iter().enumerate() {
            if pfd.revents & sys::POLLIN != 0 {
                match read_input(&mut inputs[i].1) {
                    Ok(true) => shutdown("power-button"),
                    Ok(false) => {}
                    Err(_) => gone.push(i),
                }
            } else if pfd.revents & (sys::POLLERR | sys::POLLHUP | sys::POLLNVAL) != 0 {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            inputs.remove(i);
        }
    }
}

/// Reports the reason, stops every process (TERM, then KILL after a grace period), powers off.
fn shutdown(reason: &str) -> ! {
    console_write(format!("MACHINED-SHUTDOWN reason={reason}\n").as_bytes());
    for (sig, grace) in [(sys::SIGTERM, Duration::from_secs(5)), (sys::SIGKILL, Duration::from_secs(1))] {
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
    power_off()
}

/// Prints `MACHINED-FATAL: <msg>` and powers off after a second. Never returns.
fn fatal(msg: &str) -> ! {
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

    #[test]
    fn status_line_has_every_field() {
        let status = Status {
            arch: "arm64",
            image: "node".into(),
            version: "1.0".into(),
            kernel: "6.1.0-50-cloud-arm64".into(),
            root_fstype: Some("squashfs".into()),
            root_read_only: true,
            root_write_errno: Some(30),
            modules: vec!["loop".into(), "squashfs".into()],
            cmdline: "console=ttyAMA0 \"quoted\"".into(),
            loop_device: "/dev/loop0".into(),
            milestones_ms: vec![("init_start", 1), ("modules_loaded", 2), ("root_mounted", 3), ("ready", 4)],
        };
        assert_eq!(
            status_json(&status),
            r#"{"arch":"arm64","image":"node","version":"1.0","kernel":"6.1.0-50-cloud-arm64","root_fstype":"squashfs","root_read_only":true,"root_write_errno":30,"modules":["loop","squashfs"],"cmdline":"console=ttyAMA0 \"quoted\"","loop_device":"/dev/loop0","milestones_ms":{"init_start":1,"modules_loaded":2,"root_mounted":3,"ready":4}}"#
        );
    }

    #[test]
    fn kernel_struct_sizes() {
        assert_eq!(std::mem::size_of::<sys::loop_info64>(), 232);
        assert_eq!(std::mem::size_of::<sys::loop_config>(), 304);
        assert_eq!(std::mem::size_of::<sys::sigset_t>(), 128);
        assert_eq!(std::mem::size_of::<sys::pollfd>(), 8);
    }
}

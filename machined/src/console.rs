//! The console: where machined's protocol lines go (see protocol.rs), and the way out when all else
//! fails (fatal: report and power off; PID 1 never exits and never hangs).

use crate::fallible::{Context, Fallible};
use crate::protocol::FATAL;
use crate::sys;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

/// Points fds 0, 1 and 2 at /dev/console.
pub fn setup() -> Fallible<()> {
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
pub fn write(msg: &[u8]) {
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

/// Prints `MACHINED-FATAL: <msg>` and powers off after a second. Never returns.
pub fn fatal(msg: &str) -> ! {
    let line = format!("{FATAL}: {}\n", msg.replace('\n', " "));
    write(line.as_bytes());
    // SAFETY: sync has no preconditions.
    unsafe { sys::sync() };
    std::thread::sleep(Duration::from_secs(1));
    power_off()
}

/// sync + reboot(RB_POWER_OFF); if even that fails, halt, and as a last resort sleep forever (an
/// exiting PID 1 panics the kernel).
pub fn power_off() -> ! {
    // SAFETY: plain system calls without pointers.
    unsafe {
        sys::sync();
        sys::reboot(sys::RB_POWER_OFF);
        sys::reboot(sys::RB_HALT_SYSTEM);
    }
    let _ = sys::write_all_fd(1, format!("{FATAL}: reboot(RB_POWER_OFF) failed\n").as_bytes());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// sync + reboot(RB_AUTOBOOT); if that fails, power off.
pub fn reboot() -> ! {
    // SAFETY: plain system calls without pointers.
    unsafe {
        sys::sync();
        sys::reboot(sys::RB_AUTOBOOT);
    }
    let _ = sys::write_all_fd(1, format!("{FATAL}: reboot(RB_AUTOBOOT) failed; powering off\n").as_bytes());
    power_off()
}

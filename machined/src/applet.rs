//! machined is one binary with several jobs, picked by the name it is started under (argv[0]'s last
//! component), as busybox does: PID 1 under any other name, and helpers that reach its copy in the
//! root under another name: the kernel's modprobe helper (a link, modprobe.rs) and `shutdown`, which
//! a service binds it as (Talos's qemu-guest-agent.yaml binds /sbin/init as /sbin/shutdown) and which
//! asks machined over its API socket (machine_api.rs), and `ram-marker-holder`, the child PID 1 starts
//! in a test boot to keep the RAM marker in memory (ram_marker.rs). [`dispatch`] runs first in main().

use crate::machine_api::{self, Request};
use crate::modprobe;
use crate::protocol::RAM_MARKER_HOLDER;
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

/// The arguments as strings.
///
/// # Safety
/// `argv` holds `argc` valid NUL-terminated strings (as the C runtime passes them).
pub unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    (0..argc.max(0) as usize)
        .filter_map(|i| {
            // SAFETY: i < argc, per the caller's promise.
            let arg = unsafe { *argv.add(i) };
            // SAFETY: as above, each entry is a NUL-terminated string (or NULL, skipped).
            (!arg.is_null()).then(|| unsafe { CStr::from_ptr(arg) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// Runs the applet `args[0]` names, returning its exit status; None when machined runs as itself.
pub fn dispatch(args: &[String]) -> Option<i32> {
    let program = args.first()?.rsplit('/').next().unwrap_or_default();
    let applet: fn(&[String]) -> Result<(), String> = match program {
        "modprobe" => return Some(modprobe::main(&args[1..])),
        RAM_MARKER_HOLDER => return Some(crate::ram_marker::holder_main()),
        "shutdown" => shutdown,
        _ => return None,
    };
    Some(match applet(&args[1..]) {
        Ok(()) => 0,
        Err(e) => {
            let _ = crate::sys::write_all_fd(2, format!("{program}: {e}\n").as_bytes());
            1
        }
    })
}

/// `shutdown [-h] [-P|-H|-r] [now|+0] [message]`, as qemu-ga invokes it (`-h -P +0 "hypervisor
/// initiated shutdown"`): only an immediate shutdown; the default is to power off.
fn shutdown(args: &[String]) -> Result<(), String> {
    let request = shutdown_request(args)?;
    match machine_api::send(&request)?.as_str() {
        "ok" => Ok(()),
        other => Err(format!("machined answered {other:?}")),
    }
}

pub fn shutdown_request(args: &[String]) -> Result<Request, String> {
    let mut reboot = false;
    let mut words = Vec::new();
    let mut when = None;
    for arg in args {
        match arg.as_str() {
            "-h" | "-P" | "-H" | "--halt" | "--poweroff" => {}
            "-r" | "--reboot" => reboot = true,
            "-c" => return Err("cancelling a shutdown: none is ever pending, each is at once".into()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            time if when.is_none() && words.is_empty() => when = Some(time.to_string()),
            word => words.push(word.to_string()),
        }
    }
    match when.as_deref() {
        None | Some("now") | Some("+0") => {}
        Some(later) => return Err(format!("time {later:?}: this node shuts down only at once (now or +0)")),
    }
    let message = words.join(" ");
    Ok(if reboot { Request::Reboot(message) } else { Request::PowerOff(message) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn shutdown_reads_what_qemu_ga_passes() {
        let as_qemu_ga = args(&["-h", "-P", "+0", "hypervisor initiated shutdown"]);
        assert_eq!(shutdown_request(&as_qemu_ga), Ok(Request::PowerOff("hypervisor initiated shutdown".into())));
        assert_eq!(shutdown_request(&args(&["-r", "now"])), Ok(Request::Reboot(String::new())));
        assert_eq!(shutdown_request(&args(&["-h", "-H", "+0", "bye", "now"])), Ok(Request::PowerOff("bye now".into())));
        assert!(shutdown_request(&args(&["+5"])).unwrap_err().contains("only at once"));
        assert!(shutdown_request(&args(&["-k"])).unwrap_err().contains("unknown option"));
    }

    #[test]
    fn dispatch_picks_the_applet_by_name() {
        assert_eq!(dispatch(&args(&["/init"])), None);
        assert_eq!(dispatch(&args(&["machined"])), None);
        assert_eq!(dispatch(&args(&[])), None);
        // No machined listens here: the applet fails, saying so.
        assert_eq!(dispatch(&args(&["/sbin/shutdown", "+9"])), Some(1));
    }
}

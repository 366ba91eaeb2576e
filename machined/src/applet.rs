//! machined is one binary with several jobs, picked by the name it is started under (argv[0]'s last
//! component), as busybox does: PID 1 under any name, and helpers the root links to its copy.

use crate::modprobe;
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

/// Runs the applet `args[0]` names, returning its exit status; None means "be machined".
pub fn run(args: &[String]) -> Option<c_int> {
    let name = args.first().map(|a| a.rsplit('/').next().unwrap_or(a))?;
    match name {
        "modprobe" => Some(modprobe::main(&args[1..])),
        _ => None,
    }
}

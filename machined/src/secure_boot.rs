//! What the firmware and the kernel say about Secure Boot, for the status line: the firmware's
//! `SecureBoot` and `SetupMode` EFI variables (through efivarfs, mounted read-only if nothing has
//! mounted it; the boards load its module) and the kernel's lockdown mode (through securityfs), which a
//! Debian kernel raises to `integrity` by itself when the firmware booted it with Secure Boot on.
//!
//! Reading never fails the boot: whatever cannot be read is reported as an error, and boot-test judges.

use crate::{parse, sys};
use std::fs;
use std::path::Path;

const EFIVARS: &str = "/sys/firmware/efi/efivars";
const SECURITYFS: &str = "/sys/kernel/security";
const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
/// The UEFI global variable GUID, under which the firmware publishes SecureBoot and SetupMode.
const GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

#[derive(Clone, Debug)]
pub struct SecureBoot {
    /// Whether the firmware enforces Secure Boot (the SecureBoot variable is 1).
    pub enabled: Result<bool, String>,
    /// Whether the firmware has no platform key, so anyone may enrol one (the SetupMode variable).
    pub setup_mode: Result<bool, String>,
    /// The kernel's lockdown mode: none, integrity or confidentiality.
    pub lockdown: Result<String, String>,
}

pub fn read() -> SecureBoot {
    let flags = sys::MS_RDONLY | sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    let (enabled, setup_mode) = match mount_if_needed("efivarfs", EFIVARS, flags) {
        Ok(()) => (variable("SecureBoot"), variable("SetupMode")),
        Err(e) => (Err(e.clone()), Err(e)),
    };
    let lockdown = mount_if_needed("securityfs", SECURITYFS, flags).and_then(|()| {
        let text = fs::read_to_string(LOCKDOWN).map_err(|e| format!("read {LOCKDOWN}: {e}"))?;
        parse_lockdown(&text).map(String::from).ok_or_else(|| format!("{LOCKDOWN} names no mode: {:?}", text.trim()))
    });
    SecureBoot { enabled, setup_mode, lockdown }
}

fn mount_if_needed(fstype: &str, target: &str, flags: std::os::raw::c_ulong) -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|e| format!("read /proc/self/mounts: {e}"))?;
    if parse::mounts_under(&mounts, target).iter().any(|m| m == target) {
        return Ok(());
    }
    if !Path::new(target).is_dir() {
        return Err(format!("{target} does not exist: the kernel has no {fstype} (or no EFI runtime services)"));
    }
    sys::do_mount(Some(fstype), target, Some(fstype), flags, None)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn variable(name: &str) -> Result<bool, String> {
    let path = format!("{EFIVARS}/{name}-{GLOBAL_VARIABLE}");
    let bytes = fs::read(&path).map_err(|e| format!("read {path}: {e}"))?;
    parse_variable(&bytes).map_err(|e| format!("{path}: {e}"))
}

/// An efivarfs file of a one-byte boolean variable: 4 bytes of attributes, then the value, 0 or 1.
pub fn parse_variable(bytes: &[u8]) -> Result<bool, String> {
    match bytes {
        [_, _, _, _, 0] => Ok(false),
        [_, _, _, _, 1] => Ok(true),
        _ => Err(format!("expected 4 attribute bytes and a value of 0 or 1, found {}", parse::hex(bytes))),
    }
}

/// The mode in brackets of /sys/kernel/security/lockdown (`none [integrity] confidentiality`).
pub fn parse_lockdown(text: &str) -> Option<&str> {
    text.split_whitespace().find_map(|word| word.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_four_attribute_bytes_and_a_boolean() {
        assert_eq!(parse_variable(&[6, 0, 0, 0, 1]), Ok(true));
        assert_eq!(parse_variable(&[6, 0, 0, 0, 0]), Ok(false));
        for bad in [&[6, 0, 0, 0][..], &[6, 0, 0, 0, 2], &[6, 0, 0, 0, 1, 0], &[]] {
            assert!(parse_variable(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_lockdown_mode_is_the_bracketed_word() {
        assert_eq!(parse_lockdown("none [integrity] confidentiality\n"), Some("integrity"));
        assert_eq!(parse_lockdown("[none] integrity confidentiality\n"), Some("none"));
        assert_eq!(parse_lockdown("none integrity confidentiality\n"), None);
    }
}

//! Device nodes and the links udev would make: waiting for a node devtmpfs creates, and
//! /dev/virtio-ports/<name> for each named virtio-serial port (the guest agent's is
//! org.qemu.guest_agent.0). No udev runs on the node, so machined makes them.

use crate::fallible::Fallible;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const PORTS_CLASS: &str = "/sys/class/virtio-ports";
const LINK_DIR: &str = "/dev/virtio-ports";

/// Waits until `path` exists (devtmpfs creates device nodes as the kernel registers devices).
pub fn wait_for_path(path: &str, timeout: Duration) -> Fallible<()> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > timeout {
            return Err(format!("{path} did not appear within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Creates the missing links; returns the names linked so far (all of them, not just new ones).
pub fn link_virtio_ports() -> Vec<String> {
    let mut linked = Vec::new();
    let entries = match fs::read_dir(PORTS_CLASS) {
        Ok(entries) => entries,
        Err(_) => return linked, // no virtio-serial device, or virtio_console not loaded
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let port = entry.file_name().to_string_lossy().into_owned();
        let name = match fs::read_to_string(entry.path().join("name")) {
            Ok(n) => n.trim().to_string(),
            Err(_) => continue,
        };
        // A port name becomes a file name: nothing that could climb out of the directory.
        if !crate::parse::is_safe_name(&name) || !Path::new(&format!("/dev/{port}")).exists() {
            continue;
        }
        let link = format!("{LINK_DIR}/{name}");
        if fs::symlink_metadata(&link).is_err() {
            let made =
                fs::create_dir_all(LINK_DIR).and_then(|()| std::os::unix::fs::symlink(format!("../{port}"), &link));
            if let Err(e) = made {
                crate::console::write(format!("machined: cannot link {link} -> ../{port}: {e}\n").as_bytes());
                continue;
            }
        }
        linked.push(name);
    }
    linked.sort();
    linked
}

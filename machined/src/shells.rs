//! The check that the running node has no shell: a walk of the whole root (the overlay of the image
//! and its extensions, and /run and /tmp) for any entry named like a command interpreter. /proc, /sys
//! and /dev are the kernel's, not the image's, and are skipped. machined walks while the scratch disk
//! is being formatted, so /var is still the root's empty mount point (the disk is blank every boot).

use std::fs;

const SKIP: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Paths of every non-directory entry named sh, bash, busybox, … (see parse::SHELL_NAMES), and how
/// many entries were looked at.
pub fn find_shells() -> (Vec<String>, u64) {
    let mut found = Vec::new();
    let mut seen = 0u64;
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) => continue,
        };
        for entry in entries.filter_map(|e| e.ok()) {
            seen += 1;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") };
            // d_type from readdir: no stat per file.
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                if !SKIP.contains(&path.as_str()) {
                    stack.push(path);
                }
            } else if crate::parse::is_shell_name(&name) {
                found.push(path);
            }
        }
    }
    found.sort();
    (found, seen)
}

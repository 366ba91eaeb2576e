//! The run-time check of what the running node holds, as the build checked it: a walk of the whole
//! root (the overlay of the image and its extensions, and /run and /tmp) for any entry named like a
//! command interpreter, any setuid or setgid file, and anything world-writable that is not a sticky
//! directory. /proc, /sys and /dev are the kernel's, not the image's, and are skipped. So is /var:
//! machined walks while the scratch disk is being made and mounted there, so what the walk saw under
//! /var would depend on which came first, and the disk is blank every boot (nothing of the image).

use std::fs;
use std::os::unix::fs::PermissionsExt;

const SKIP: [&str; 4] = ["/proc", "/sys", "/dev", "/var"];

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// What the walk found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    /// Non-directory entries named sh, bash, busybox, … (see parse::SHELL_NAMES).
    pub shells: Vec<String>,
    /// Files with the setuid or setgid bit.
    pub setid: Vec<String>,
    /// World-writable entries that are not sticky directories (links aside: their mode means nothing).
    pub world_writable: Vec<String>,
    /// Entries looked at.
    pub checked: u64,
}

/// Walks the tree under `root` ("/" on the node), skipping the kernel's filesystems and /var.
pub fn scan(root: &str) -> Findings {
    let mut found = Findings::default();
    let base = root.trim_end_matches('/');
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(format!("{base}{dir}/")) {
            Ok(entries) => entries,
            Err(_) => continue,
        };
        for entry in entries.filter_map(|e| e.ok()) {
            found.checked += 1;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = format!("{dir}/{name}");
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(_) => continue,
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                if crate::parse::is_shell_name(&name) {
                    found.shells.push(path);
                }
                continue;
            }
            let mode = meta.permissions().mode();
            let sticky_dir = kind.is_dir() && mode & S_ISVTX != 0;
            if mode & 0o002 != 0 && !sticky_dir {
                found.world_writable.push(path.clone());
            }
            if kind.is_dir() {
                if !SKIP.contains(&path.as_str()) {
                    stack.push(path);
                }
                continue;
            }
            if mode & (S_ISUID | S_ISGID) != 0 {
                found.setid.push(path.clone());
            }
            if crate::parse::is_shell_name(&name) {
                found.shells.push(path);
            }
        }
    }
    found.shells.sort();
    found.setid.sort();
    found.world_writable.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn finds_shells_setid_files_and_world_writable_entries() {
        let dir = std::env::temp_dir().join(format!("machined-contents-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["usr/bin", "tmp", "proc", "data", "var/tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("usr/bin/tool"), "").unwrap();
        fs::write(dir.join("usr/bin/su"), "").unwrap();
        chmod(&dir.join("usr/bin/su"), 0o4755);
        fs::write(dir.join("usr/bin/wall"), "").unwrap();
        chmod(&dir.join("usr/bin/wall"), 0o2755);
        fs::write(dir.join("usr/bin/dash"), "").unwrap();
        std::os::unix::fs::symlink("dash", dir.join("usr/bin/sh")).unwrap();
        chmod(&dir.join("tmp"), 0o1777);
        chmod(&dir.join("data"), 0o777);
        fs::write(dir.join("data/open"), "").unwrap();
        chmod(&dir.join("data/open"), 0o666);
        fs::write(dir.join("proc/bash"), "").unwrap();
        fs::write(dir.join("var/tmp/sh"), "").unwrap();
        let found = scan(dir.to_str().unwrap());
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(found.shells, ["/usr/bin/dash", "/usr/bin/sh"], "the skipped /proc or /var was walked: {found:?}");
        assert_eq!(found.setid, ["/usr/bin/su", "/usr/bin/wall"]);
        assert_eq!(found.world_writable, ["/data", "/data/open"], "a sticky /tmp is fine");
        assert!(found.checked >= 10, "{found:?}");
    }
}

//! The cgroup v2 hierarchy: system services under /sys/fs/cgroup/system/<service>, workloads under
//! /sys/fs/cgroup/kubepods (created empty for the kubelet), so the node's own processes and the
//! applications it runs are accounted and limited apart.

use crate::fallible::{Context, Fallible};
use crate::sys;
use std::fs;

pub const ROOT: &str = "/sys/fs/cgroup";
pub const SYSTEM: &str = "/sys/fs/cgroup/system";
pub const KUBEPODS: &str = "/sys/fs/cgroup/kubepods";

pub struct Hierarchy {
    /// Controllers enabled for the children of the root (and of system/).
    pub controllers: Vec<String>,
}

/// Mounts cgroup2, enables every available controller for the root's children and for system/'s,
/// and creates system/ and kubepods/.
pub fn setup() -> Fallible<Hierarchy> {
    sys::do_mount(
        Some("cgroup2"),
        ROOT,
        Some("cgroup2"),
        sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC,
        Some("nsdelegate,memory_recursiveprot"),
    )
    .ctx(|| format!("mount cgroup2 on {ROOT}"))?;
    let available =
        fs::read_to_string(format!("{ROOT}/cgroup.controllers")).ctx(|| "read cgroup.controllers".into())?;
    let controllers: Vec<String> = available.split_whitespace().map(String::from).collect();
    enable_controllers(ROOT, &controllers)?;
    for dir in [SYSTEM, KUBEPODS] {
        fs::create_dir(dir).ctx(|| format!("create cgroup {dir}"))?;
    }
    enable_controllers(SYSTEM, &controllers)?;
    Ok(Hierarchy { controllers })
}

fn enable_controllers(cgroup: &str, controllers: &[String]) -> Fallible<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    let path = format!("{cgroup}/cgroup.subtree_control");
    fs::write(&path, line.join(" ")).ctx(|| format!("enable controllers {} in {path}", line.join(" ")))
}

/// Creates (or reuses, after a restart) the leaf cgroup of a system service; returns its path.
pub fn service_cgroup(service: &str) -> Fallible<String> {
    let path = format!("{SYSTEM}/{service}");
    match fs::create_dir(&path) {
        Ok(()) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
        Err(e) => Err(format!("create cgroup {path}: {e}")),
    }
}

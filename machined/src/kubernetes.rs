//! What Kubernetes and its CNI add-ons need of the node, prepared as Talos prepares it: the BPF
//! filesystem at /sys/fs/bpf (shared, so pinned maps outlive the CNI's pod), the kernel parameters a
//! kubelet and kube-proxy expect (forwarding, bridge netfilter once br_netfilter is in, the values a
//! kubelet's protectKernelDefaults insists on) and Talos's hardening defaults, then the machine
//! config's own sysctls over them; and the writable paths (the spec's writable-paths: /etc/cni,
//! /opt/cni/bin, ...) as overlays whose upper layer is on the scratch disk, so the rest of the root
//! stays read-only and nothing written survives the boot.

use crate::modprobe;
use crate::protocol::{CNI_CONF_DIR, WRITABLE_LIST};
use crate::{json, sys};
use std::fs;

pub const BPFFS: &str = "/sys/fs/bpf";
/// Where the writable paths' upper and work directories live: on the scratch disk.
const OVERLAY_STATE: &str = "/var/lib/machined/overlays";

/// Talos's kernel parameter defaults (its KernelParamDefaults), with Kubernetes's: the forwarding a
/// pod network needs, and the values a kubelet started with protectKernelDefaults checks for
/// (kernel.panic = 10 replaces the command line's panic=-1 once the node is up, as Talos does).
pub const DEFAULT_SYSCTLS: [(&str, &str); 22] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
    // Router advertisements are still taken on a forwarding node (2), as Talos has it.
    ("net.ipv6.conf.default.accept_ra", "2"),
    ("net.ipv4.tcp_keepalive_time", "600"),
    ("net.ipv4.tcp_keepalive_intvl", "60"),
    ("kernel.pid_max", "262144"),
    ("fs.inotify.max_user_instances", "8192"),
    ("fs.aio-max-nr", "1048576"),
    ("vm.overcommit_memory", "1"),
    ("vm.panic_on_oom", "0"),
    ("kernel.panic", "10"),
    ("kernel.panic_on_oops", "1"),
    ("kernel.keys.root_maxkeys", "1000000"),
    ("kernel.keys.root_maxbytes", "25000000"),
    // Hardening, as Talos's defaults (KSPP's recommendations).
    ("kernel.kptr_restrict", "1"),
    ("kernel.dmesg_restrict", "1"),
    ("kernel.perf_event_paranoid", "3"),
    ("kernel.yama.ptrace_scope", "1"),
    ("kernel.unprivileged_bpf_disabled", "1"),
    ("net.core.bpf_jit_harden", "1"),
    ("user.max_user_namespaces", "11255"),
];
/// Set once br_netfilter is loaded (they do not exist before): bridged pod traffic goes through
/// iptables, which kube-proxy and most CNIs need.
pub const BRIDGE_SYSCTLS: [(&str, &str); 2] =
    [("net.bridge.bridge-nf-call-iptables", "1"), ("net.bridge.bridge-nf-call-ip6tables", "1")];

/// What was done, for the status.
#[derive(Debug)]
pub struct Prepared {
    pub bpffs: Result<(), String>,
    pub br_netfilter: Result<Vec<String>, String>,
    /// (key, value, error) for each sysctl set, in order; the config's come last.
    pub sysctls: Vec<(String, String, Option<String>)>,
}

/// Sets the kernel parameters (defaults, then `extra` from the machine config); `bpffs` is how
/// [`mount_bpffs`] went.
pub fn prepare(release: &str, extra: &[(String, String)], bpffs: Result<(), String>) -> Prepared {
    let br_netfilter = modprobe::request(release, "br_netfilter");
    let mut sysctls = Vec::new();
    let mut set = |key: &str, value: &str| {
        let error = write_sysctl(key, value).err();
        sysctls.push((key.to_string(), value.to_string(), error));
    };
    for (key, value) in DEFAULT_SYSCTLS {
        set(key, value);
    }
    if br_netfilter.is_ok() {
        for (key, value) in BRIDGE_SYSCTLS {
            set(key, value);
        }
    }
    for (key, value) in extra {
        set(key, value);
    }
    Prepared { bpffs, br_netfilter, sysctls }
}

/// Mounts bpffs, shared. The mount asks the kernel's module helper for bpf_preload (its debugging
/// iterators), which the cloud kernels do not build: machined mounts it while the helper is still
/// held (modprobe::hold), so the request fails at once instead of starting the helper for nothing.
pub fn mount_bpffs() -> Result<(), String> {
    let flags = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    sys::do_mount(Some("bpffs"), BPFFS, Some("bpf"), flags, Some("mode=0700"))
        .map_err(|e| format!("mounting bpffs on {BPFFS}: {e}"))?;
    sys::do_mount(None, BPFFS, None, sys::MS_SHARED, None).map_err(|e| format!("making {BPFFS} shared: {e}"))
}

/// The /proc/sys path of a sysctl name, by sysctl.d(5)'s rule: when the first separator is `/`, the
/// name is a path as it is; when it is `.`, dots and slashes swap (so `eth0/100` names the
/// interface `eth0.100`).
pub fn sysctl_path(key: &str) -> String {
    let path: String = match key.find(['.', '/']) {
        Some(i) if key.as_bytes()[i] == b'.' => key
            .chars()
            .map(|c| {
                if c == '.' {
                    '/'
                } else if c == '/' {
                    '.'
                } else {
                    c
                }
            })
            .collect(),
        _ => key.to_string(),
    };
    format!("/proc/sys/{path}")
}

fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = sysctl_path(key);
    fs::write(&path, value).map_err(|e| format!("{path}: {e}"))
}

/// One writable path's overlay, for the status.
#[derive(Debug)]
pub struct Writable {
    pub path: String,
    pub upper: String,
    pub error: Option<String>,
}

/// Mounts an overlay on each path of WRITABLE_LIST, its upper layer under OVERLAY_STATE (on /var,
/// the scratch disk, which must be mounted).
pub fn mount_writable_paths() -> Vec<Writable> {
    let list = fs::read_to_string(WRITABLE_LIST).unwrap_or_default();
    let mut out = Vec::new();
    for path in list.lines().map(str::trim).filter(|l| l.starts_with('/')) {
        let state = format!("{OVERLAY_STATE}/{}", path.trim_start_matches('/').replace('/', "-"));
        let upper = format!("{state}/upper");
        let work = format!("{state}/work");
        let result = fs::create_dir_all(&upper)
            .and_then(|()| fs::create_dir_all(&work))
            .map_err(|e| format!("creating {state}: {e}"))
            .and_then(|()| {
                let options = format!("lowerdir={path},upperdir={upper},workdir={work}");
                sys::do_mount(Some("overlay"), path, Some("overlay"), sys::MS_NOSUID | sys::MS_NODEV, Some(&options))
                    .map_err(|e| format!("mounting an overlay on {path}: {e}"))
            });
        out.push(Writable { path: path.to_string(), upper, error: result.err() });
    }
    // The CNI config directory is expected to exist; an add-on only drops files in.
    if out.iter().any(|w| CNI_CONF_DIR.starts_with(&format!("{}/", w.path)) && w.error.is_none()) {
        let _ = fs::create_dir_all(CNI_CONF_DIR);
    }
    out
}

const PROBE: &str = ".machined-write-probe";

/// Whether a file can be created (and removed again) in `dir`: Err carries the errno.
pub fn probe_writable(dir: &str) -> Result<(), i32> {
    let path = format!("{dir}/{PROBE}");
    match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(_) => {
            let _ = fs::remove_file(&path);
            Ok(())
        }
        Err(e) => Err(e.raw_os_error().unwrap_or(0)),
    }
}

/// Whether `path` lives on the same filesystem as /var (the scratch disk).
fn on_var(path: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(path), fs::metadata("/var")) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// The status's `kubernetes` section, with what the running node shows now: bpffs in the mount
/// table, each writable path writable with its upper layer on the scratch disk, /usr still not.
pub fn json(prepared: &Prepared, writable: &[Writable]) -> json::Object {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let bpffs_mounted = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    });
    let failed: Vec<String> = prepared
        .sysctls
        .iter()
        .filter_map(|(key, value, error)| error.as_ref().map(|e| format!("{key}={value}: {e}")))
        .collect();
    let applied: Vec<String> = prepared
        .sysctls
        .iter()
        .filter(|(_, _, error)| error.is_none())
        .map(|(key, value, _)| format!("{key}={value}"))
        .collect();
    let writable = writable
        .iter()
        .map(|w| {
            json::Object::new()
                .str("path", &w.path)
                .str("upper", &w.upper)
                .bool("writable", probe_writable(&w.path).is_ok())
                .bool("upper_on_scratch", on_var(&w.upper))
                .opt_str("error", w.error.as_deref())
        })
        .collect();
    let usr = probe_writable("/usr");
    let bpffs = json::Object::new().str("path", BPFFS).bool("mounted", bpffs_mounted);
    json::Object::new()
        .object("bpffs", bpffs.opt_str("error", prepared.bpffs.as_ref().err().map(String::as_str)))
        .opt_str("br_netfilter_error", prepared.br_netfilter.as_ref().err().map(String::as_str))
        .str_array("sysctls", &applied)
        .str_array("sysctl_errors", &failed)
        .objects("writable_paths", writable)
        .bool("usr_read_only", usr == Err(EROFS))
        .opt_i64("usr_write_errno", usr.err().map(i64::from))
}

const EROFS: i32 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_paths_as_sysctl_d_does() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward"), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(sysctl_path("net/ipv4/conf/eth0.100/rp_filter"), "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(sysctl_path("net.ipv4.conf.eth0/100.rp_filter"), "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(sysctl_path("kernel.pid_max"), "/proc/sys/kernel/pid_max");
    }
}

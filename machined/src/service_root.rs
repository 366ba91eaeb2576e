//! An extension service's root and namespaces, made in the forked child before exec, as Talos's
//! runtime (containerd's default spec run by runc) makes them:
//!
//! - new mount, IPC and UTS namespaces (the PID namespace comes from the parent, see services.rs);
//!   the network stays the node's, as in Talos;
//! - the node's mounts become a recursive slave (host mounts propagate in, nothing propagates out),
//!   unless `rootfsPropagation` says otherwise;
//! - the root is an overlay of the service's directory under a tmpfs upper layer, so mount points can
//!   be made in it; it is remounted read-only at the end unless `writeableRootfs` (then writes land on
//!   the tmpfs and vanish when the service stops);
//! - containerd's default mounts: /proc, a tmpfs /dev with the standard nodes, /dev/pts, /dev/shm,
//!   /dev/mqueue, /sys (read-only unless `writeableSysfs`), a tmpfs /run; the node's /etc/hosts and
//!   /etc/resolv.conf when it has them;
//! - then the spec's mounts in order, each with its flags and propagation; then `maskedPaths` and
//!   `readonlyPaths` (containerd's lists when absent, none for `[]`);
//! - pivot_root into it, the node's root detached.
//!
//! Every mount target is resolved inside the new root ([`resolve_in`]): a symlink in the service's
//! tree cannot make a mount land on the node.

use crate::service_spec::{self, Flag, Mount, Propagation};
use crate::sys;
use std::fs;
use std::io;
use std::os::raw::{c_int, c_ulong};
use std::path::{Path, PathBuf};

/// A failed step: reported on the child's output (the service's log), and passed on so the parent's
/// spawn fails with it.
pub fn step<T>(what: &str, result: io::Result<T>) -> io::Result<T> {
    result.map_err(|e| {
        let _ = sys::write_all_fd(2, format!("machined: {what}: {e}\n").as_bytes());
        e
    })
}

/// The mount(2) flag of a propagation kind, with MS_REC when recursive.
pub fn propagation_flag((kind, recursive): (Propagation, bool)) -> c_ulong {
    let flag = match kind {
        Propagation::Shared => sys::MS_SHARED,
        Propagation::Slave => sys::MS_SLAVE,
        Propagation::Private => sys::MS_PRIVATE,
        Propagation::Unbindable => sys::MS_UNBINDABLE,
    };
    if recursive {
        flag | sys::MS_REC
    } else {
        flag
    }
}

/// The mount flags a mount's options set (a later word for the same flag wins).
pub fn mount_flags(mount: &Mount) -> c_ulong {
    let mut flags = 0;
    for (flag, set) in &mount.flags {
        let bit = match flag {
            Flag::ReadOnly => sys::MS_RDONLY,
            Flag::NoSuid => sys::MS_NOSUID,
            Flag::NoDev => sys::MS_NODEV,
            Flag::NoExec => sys::MS_NOEXEC,
            Flag::NoAtime => sys::MS_NOATIME,
            Flag::NoDiratime => sys::MS_NODIRATIME,
            Flag::RelAtime => sys::MS_RELATIME,
            Flag::StrictAtime => sys::MS_STRICTATIME,
            Flag::Sync => sys::MS_SYNCHRONOUS,
        };
        if *set {
            flags |= bit;
        } else {
            flags &= !bit;
        }
    }
    flags
}

/// `path` (absolute, as the service sees it) resolved under `root`, following symlinks as if `root`
/// were `/`: absolute targets restart at `root`, `..` never climbs above it. Components that do not
/// exist yet are kept as they are.
pub fn resolve_in(root: &Path, path: &str) -> io::Result<PathBuf> {
    let inside = service_spec::follow_symlinks(path, |p| root.join(p.trim_start_matches('/')))?;
    Ok(root.join(inside.trim_start_matches('/')))
}

/// Makes a mount point at `target` when missing: a directory, or an empty file when `file`.
fn mount_point(target: &Path, file: bool) -> io::Result<()> {
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    if file {
        fs::create_dir_all(target.parent().unwrap_or(Path::new("/")))?;
        fs::OpenOptions::new().write(true).create(true).truncate(false).open(target).map(drop)
    } else {
        fs::create_dir_all(target)
    }
}

/// containerd's default device nodes: (name, major, minor).
const DEVICES: [(&str, u32, u32); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
const DEVICE_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Everything the child needs to build an isolated service's root, owned by the closure.
pub struct Plan {
    pub name: String,
    /// The service's directory on the node (`/usr/local/lib/containers/<name>`).
    pub root: String,
    /// A directory where the child mounts its own tmpfs (upper layer, work dir, new root).
    pub stage: String,
    /// The node mount holding `stage`, made private in the child so nothing mounted there propagates.
    pub stage_parent_mount: String,
    pub mounts: Vec<Mount>,
    pub security: service_spec::Security,
    /// The cgroup.procs file the child joins first.
    pub procs: String,
}

fn mount(
    what: &str,
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let target = target.to_string_lossy();
    step(what, sys::do_mount(source, &target, fstype, flags, data))
}

/// Binds `source` on `target` (`extra`: MS_REC for submounts too), then makes it read-only, which
/// a bind mount only becomes by a remount. `what` names it in errors.
fn bind_read_only(what: &str, source: &str, target: &Path, extra: c_ulong) -> io::Result<()> {
    mount(&format!("bind {what}"), Some(source), target, None, sys::MS_BIND | extra, None)?;
    let read_only = sys::MS_REMOUNT | sys::MS_BIND | sys::MS_RDONLY;
    mount(&format!("make {what} read-only"), None, target, None, read_only, None)
}

impl Plan {
    /// Runs in the forked child, before exec.
    pub fn enter(&self) -> io::Result<()> {
        join_cgroup(&self.procs)?;
        let flags = sys::CLONE_NEWNS | sys::CLONE_NEWIPC | sys::CLONE_NEWUTS;
        // SAFETY: plain system call.
        step("unshare mount, IPC and UTS namespaces", sys::check(unsafe { sys::unshare(flags) }))?;
        let root_propagation = self.security.rootfs_propagation.map(propagation_flag);
        let slash = Path::new("/");
        mount(
            "set the propagation of /",
            None,
            slash,
            None,
            root_propagation.unwrap_or(sys::MS_REC | sys::MS_SLAVE),
            None,
        )?;
        mount(
            "make the stage's mount private",
            None,
            Path::new(&self.stage_parent_mount),
            None,
            sys::MS_PRIVATE,
            None,
        )?;
        let stage = Path::new(&self.stage);
        mount(
            "mount the stage tmpfs",
            Some("tmpfs"),
            stage,
            Some("tmpfs"),
            sys::MS_NOSUID | sys::MS_NODEV,
            Some("mode=0755"),
        )?;
        let (upper, work, new_root) = (stage.join("upper"), stage.join("work"), stage.join("root"));
        for dir in [&upper, &work, &new_root] {
            step("create the stage directories", fs::create_dir(dir))?;
        }
        let options = format!("lowerdir={},upperdir={},workdir={}", self.root, upper.display(), work.display());
        mount(
            &format!("mount the service root (overlay {options})"),
            Some("overlay"),
            &new_root,
            Some("overlay"),
            0,
            Some(&options),
        )?;
        self.default_mounts(&new_root)?;
        for m in &self.mounts {
            self.spec_mount(&new_root, m)?;
        }
        self.masked_and_readonly(&new_root)?;

        let host = sys::cstr(&self.name);
        // SAFETY: host is a live NUL-terminated string of the given length.
        step("set the host name", sys::check(unsafe { sys::sethostname(host.as_ptr(), self.name.len()) }))?;
        let root = sys::cstr(&new_root.to_string_lossy());
        let dot = sys::cstr(".");
        // SAFETY: NUL-terminated paths; pivot_root(".", ".") stacks the old root under the new one.
        unsafe {
            step("chdir into the new root", sys::check(sys::chdir(root.as_ptr())))?;
            let ret = sys::syscall(sys::SYS_PIVOT_ROOT, dot.as_ptr(), dot.as_ptr()) as c_int;
            step("pivot_root", sys::check(ret))?;
        }
        // As runc does: the old root turns slave first, so detaching it cannot unmount anything on the node.
        mount("make the old root a slave", None, Path::new("."), None, sys::MS_REC | sys::MS_SLAVE, None)?;
        step("detach the node's root", sys::do_umount(".", sys::MNT_DETACH))?;
        // SAFETY: NUL-terminated path.
        step("chdir /", sys::check(unsafe { sys::chdir(sys::cstr("/").as_ptr()) }))?;
        if !self.security.writeable_rootfs {
            mount("make the root read-only", None, slash, None, sys::MS_REMOUNT | sys::MS_BIND | sys::MS_RDONLY, None)?;
        }
        if let Some(flag) = root_propagation {
            mount("apply rootfsPropagation", None, slash, None, flag, None)?;
        }
        Ok(())
    }

    /// containerd's default mounts, and the standard device nodes in /dev.
    fn default_mounts(&self, root: &Path) -> io::Result<()> {
        let hardened = sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
        let at = |p: &str| -> io::Result<PathBuf> {
            let target = step(&format!("resolve {p}"), resolve_in(root, p))?;
            step(&format!("create mount point {p}"), mount_point(&target, false))?;
            Ok(target)
        };
        mount("mount /proc", Some("proc"), &at("/proc")?, Some("proc"), hardened, None)?;
        let dev = at("/dev")?;
        mount(
            "mount /dev",
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            sys::MS_NOSUID | sys::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )?;
        for (name, major, minor) in DEVICES {
            let path = sys::cstr(&dev.join(name).to_string_lossy());
            let device = (u64::from(major) << 8) | u64::from(minor);
            // SAFETY: path is NUL-terminated.
            step(
                &format!("create /dev/{name}"),
                sys::check(unsafe { sys::mknod(path.as_ptr(), sys::S_IFCHR | 0o666, device) }),
            )?;
        }
        for (name, target) in DEVICE_LINKS {
            step(&format!("link /dev/{name}"), std::os::unix::fs::symlink(target, dev.join(name)))?;
        }
        mount(
            "mount /dev/pts",
            Some("devpts"),
            &at("/dev/pts")?,
            Some("devpts"),
            sys::MS_NOSUID | sys::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        )?;
        mount("mount /dev/shm", Some("shm"), &at("/dev/shm")?, Some("tmpfs"), hardened, Some("mode=1777,size=65536k"))?;
        mount("mount /dev/mqueue", Some("mqueue"), &at("/dev/mqueue")?, Some("mqueue"), hardened, None)?;
        let sys_flags = if self.security.writeable_sysfs { hardened } else { hardened | sys::MS_RDONLY };
        mount("mount /sys", Some("sysfs"), &at("/sys")?, Some("sysfs"), sys_flags, None)?;
        mount(
            "mount /run",
            Some("tmpfs"),
            &at("/run")?,
            Some("tmpfs"),
            sys::MS_NOSUID | sys::MS_NODEV | sys::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        )?;
        for file in ["/etc/hosts", "/etc/resolv.conf"] {
            if Path::new(file).is_file() {
                let target = step(&format!("resolve {file}"), resolve_in(root, file))?;
                step(&format!("create mount point {file}"), mount_point(&target, true))?;
                bind_read_only(file, file, &target, 0)?;
            }
        }
        Ok(())
    }

    /// One of the spec's mounts: bind (then its flags by a remount) or a filesystem, then its
    /// propagation words in order.
    fn spec_mount(&self, root: &Path, m: &Mount) -> io::Result<()> {
        let what = format!("mount {} on {}", m.source, m.destination);
        let target = step(&what, resolve_in(root, &m.destination))?;
        let file = m.bind && fs::metadata(&m.source).is_ok_and(|meta| !meta.is_dir());
        step(&format!("create mount point {}", m.destination), mount_point(&target, file))?;
        let flags = mount_flags(m);
        if m.bind {
            let rec = if m.recursive { sys::MS_REC } else { 0 };
            mount(&what, Some(&m.source), &target, None, sys::MS_BIND | rec, None)?;
            if flags != 0 {
                mount(
                    &format!("{what}: apply its options"),
                    None,
                    &target,
                    None,
                    sys::MS_REMOUNT | sys::MS_BIND | flags,
                    None,
                )?;
            }
        } else {
            let data = m.data.join(",");
            mount(&what, Some(&m.source), &target, Some(&m.kind), flags, (!data.is_empty()).then_some(data.as_str()))?;
        }
        for propagation in &m.propagation {
            mount(&format!("{what}: propagation"), None, &target, None, propagation_flag(*propagation), None)?;
        }
        Ok(())
    }

    /// maskedPaths (an empty read-only tmpfs over a directory, /dev/null over a file) and
    /// readonlyPaths (bound onto themselves read-only), containerd's lists when the spec names none.
    fn masked_and_readonly(&self, root: &Path) -> io::Result<()> {
        let defaults = |list: &[&str]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let masked =
            self.security.masked_paths.clone().unwrap_or_else(|| defaults(&service_spec::DEFAULT_MASKED_PATHS));
        let readonly =
            self.security.readonly_paths.clone().unwrap_or_else(|| defaults(&service_spec::DEFAULT_READONLY_PATHS));
        let null = root.join("dev/null");
        for path in &masked {
            let target = step(&format!("resolve {path}"), resolve_in(root, path))?;
            match fs::metadata(&target) {
                Ok(meta) if meta.is_dir() => mount(
                    &format!("mask {path}"),
                    Some("tmpfs"),
                    &target,
                    Some("tmpfs"),
                    sys::MS_RDONLY,
                    Some("size=0"),
                )?,
                Ok(_) => {
                    mount(&format!("mask {path}"), Some(&null.to_string_lossy()), &target, None, sys::MS_BIND, None)?
                }
                Err(_) => {} // nothing there to hide
            }
        }
        for path in &readonly {
            let target = step(&format!("resolve {path}"), resolve_in(root, path))?;
            if fs::symlink_metadata(&target).is_err() {
                continue;
            }
            let target_text = target.to_string_lossy().into_owned();
            bind_read_only(path, &target_text, &target, sys::MS_REC)?;
        }
        Ok(())
    }
}

/// The first steps of every service's child: no signal blocked (machined blocks its shutdown
/// signals to read them from a signalfd, and std's spawn passes the mask on, so a service would never
/// see SIGTERM), the cgroup whose cgroup.procs is `procs` ("0" means the writer), and a session of
/// its own (no controlling terminal, its own process group).
pub fn join_cgroup(procs: &str) -> io::Result<()> {
    // SAFETY: an empty, initialised set; the old mask is not wanted.
    let unblocked = unsafe {
        let mut none: sys::sigset_t = std::mem::zeroed();
        sys::sigemptyset(&mut none);
        sys::sigprocmask(sys::SIG_SETMASK, &none, std::ptr::null_mut())
    };
    step("unblock signals", sys::check(unblocked))?;
    step(&format!("join cgroup {procs}"), fs::write(procs, "0"))?;
    // SAFETY: plain system call.
    unsafe { sys::setsid() };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_root() {
        let dir = tempfile_dir();
        let root = dir.join("root");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("usr/up")).unwrap();
        assert_eq!(resolve_in(&root, "/lib/x").unwrap(), root.join("usr/lib/x"));
        assert_eq!(resolve_in(&root, "/escape").unwrap(), root.join("etc/shadow"), "absolute links stay inside");
        assert_eq!(resolve_in(&root, "/usr/up/etc").unwrap(), root.join("etc"), ".. stops at the root");
        assert_eq!(resolve_in(&root, "/usr/local/lib/").unwrap(), root.join("usr/local/lib"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in(&root, "/loop/x").is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn options_become_mount_flags() {
        let text = "name: s\ncontainer:\n  entrypoint: /s\n  mounts:\n    - source: /a\n      destination: /b\n      \
                    options: [rbind, ro, nosuid, rw, rshared, private]\nrestart: always\n";
        let spec = service_spec::parse(text).unwrap().spec;
        let m = &spec.container.mounts[0];
        assert_eq!(mount_flags(m), sys::MS_NOSUID, "rw after ro clears it");
        let flags: Vec<c_ulong> = m.propagation.iter().map(|p| propagation_flag(*p)).collect();
        assert_eq!(flags, [sys::MS_SHARED | sys::MS_REC, sys::MS_PRIVATE]);
    }

    fn tempfile_dir() -> PathBuf {
        let mut random = [0u8; 8];
        sys::random_bytes(&mut random).unwrap();
        let dir = std::env::temp_dir().join(format!("machined-test-{}", crate::parse::hex(&random)));
        fs::create_dir(&dir).unwrap();
        dir
    }
}

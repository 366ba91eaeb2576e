//! The few libc functions and kernel ABI constants machined needs, declared by hand (std only, no
//! libc crate). Numbers are the same on x86_64 and aarch64 unless noted.

#![allow(non_camel_case_types)]

use std::ffi::CString;
use std::io;
use std::os::raw::{c_char, c_int, c_long, c_short, c_uint, c_ulong, c_void};

#[repr(C)]
pub struct timespec {
    pub tv_sec: i64,
    pub tv_nsec: c_long,
}

#[repr(C)]
pub struct pollfd {
    pub fd: c_int,
    pub events: c_short,
    pub revents: c_short,
}

/// glibc's sigset_t: 1024 bits.
#[repr(C)]
pub struct sigset_t {
    _bits: [c_ulong; 1024 / (8 * std::mem::size_of::<c_ulong>())],
}

extern "C" {
    pub fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    pub fn chroot(path: *const c_char) -> c_int;
    pub fn chdir(path: *const c_char) -> c_int;
    pub fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    pub fn reboot(cmd: c_int) -> c_int;
    pub fn sync();
    pub fn syscall(number: c_long, ...) -> c_long;
    pub fn clock_gettime(clock: c_int, tp: *mut timespec) -> c_int;
    pub fn sigemptyset(set: *mut sigset_t) -> c_int;
    pub fn sigaddset(set: *mut sigset_t, sig: c_int) -> c_int;
    pub fn sigprocmask(how: c_int, set: *const sigset_t, old: *mut sigset_t) -> c_int;
    pub fn signalfd(fd: c_int, mask: *const sigset_t, flags: c_int) -> c_int;
    pub fn poll(fds: *mut pollfd, nfds: c_ulong, timeout: c_int) -> c_int;
    pub fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    pub fn kill(pid: c_int, sig: c_int) -> c_int;
    pub fn getpid() -> c_int;
    pub fn open(path: *const c_char, flags: c_int, ...) -> c_int;
    pub fn dup2(old: c_int, new: c_int) -> c_int;
    pub fn close(fd: c_int) -> c_int;
    pub fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
    pub fn unshare(flags: c_int) -> c_int;
    pub fn setns(fd: c_int, nstype: c_int) -> c_int;
    pub fn sethostname(name: *const c_char, len: usize) -> c_int;
    pub fn umount2(target: *const c_char, flags: c_int) -> c_int;
    pub fn pipe2(fds: *mut c_int, flags: c_int) -> c_int;
    pub fn fcntl(fd: c_int, cmd: c_int, ...) -> c_int;
    pub fn getrandom(buf: *mut c_void, len: usize, flags: c_uint) -> isize;
    pub fn setsid() -> c_int;
    pub fn mknod(path: *const c_char, mode: c_uint, dev: u64) -> c_int;
}

pub const MS_RDONLY: c_ulong = 1;
pub const MS_NOSUID: c_ulong = 2;
pub const MS_NODEV: c_ulong = 4;
pub const MS_NOEXEC: c_ulong = 8;
pub const MS_REMOUNT: c_ulong = 32;
pub const MS_BIND: c_ulong = 4096;
pub const MS_MOVE: c_ulong = 8192;
pub const MS_REC: c_ulong = 16384;
pub const MS_SYNCHRONOUS: c_ulong = 16;
pub const MS_NOATIME: c_ulong = 1024;
pub const MS_NODIRATIME: c_ulong = 2048;
pub const MS_UNBINDABLE: c_ulong = 1 << 17;
pub const MS_PRIVATE: c_ulong = 1 << 18;
pub const MS_SLAVE: c_ulong = 1 << 19;
pub const MS_SHARED: c_ulong = 1 << 20;
pub const MS_RELATIME: c_ulong = 1 << 21;
pub const MS_STRICTATIME: c_ulong = 1 << 24;
pub const S_IFCHR: c_uint = 0o020000;

pub const MNT_DETACH: c_int = 2;

pub const CLONE_NEWNS: c_int = 0x0002_0000;
pub const CLONE_NEWUTS: c_int = 0x0400_0000;
pub const CLONE_NEWIPC: c_int = 0x0800_0000;
pub const CLONE_NEWPID: c_int = 0x2000_0000;

pub const F_GETFL: c_int = 3;
pub const F_SETFL: c_int = 4;

pub const O_RDWR: c_int = 2;
pub const O_NOCTTY: c_int = 0o400;
pub const O_NONBLOCK: c_int = 0o4000;
pub const O_CLOEXEC: c_int = 0o2000000;

pub const SIG_BLOCK: c_int = 0;
pub const SIG_SETMASK: c_int = 2;
pub const SFD_NONBLOCK: c_int = O_NONBLOCK;
pub const SFD_CLOEXEC: c_int = O_CLOEXEC;
/// struct signalfd_siginfo is 128 bytes; ssi_signo (u32) comes first.
pub const SIGNALFD_SIGINFO_SIZE: usize = 128;

pub const SIGINT: c_int = 2;
pub const SIGKILL: c_int = 9;
pub const SIGUSR2: c_int = 12;
pub const SIGTERM: c_int = 15;
pub const SIGCHLD: c_int = 17;
pub const SIGPWR: c_int = 30;

pub const WNOHANG: c_int = 1;

pub const POLLIN: c_short = 0x1;
pub const POLLERR: c_short = 0x8;
pub const POLLHUP: c_short = 0x10;
pub const POLLNVAL: c_short = 0x20;

pub const RB_DISABLE_CAD: c_int = 0;
pub const RB_POWER_OFF: c_int = 0x4321_fedc_u32 as c_int;
pub const RB_HALT_SYSTEM: c_int = 0xcdef_0123_u32 as c_int;
pub const RB_AUTOBOOT: c_int = 0x0123_4567;

pub const CLOCK_BOOTTIME: c_int = 7;

pub const LOOP_SET_FD: c_ulong = 0x4C00;
pub const LOOP_CLR_FD: c_ulong = 0x4C01;
pub const LOOP_SET_STATUS64: c_ulong = 0x4C04;
pub const LOOP_CONFIGURE: c_ulong = 0x4C0A;
pub const LOOP_CTL_GET_FREE: c_ulong = 0x4C82;
pub const LO_FLAGS_READ_ONLY: u32 = 1;

#[cfg(target_arch = "x86_64")]
pub const SYS_FINIT_MODULE: c_long = 313;
#[cfg(target_arch = "aarch64")]
pub const SYS_FINIT_MODULE: c_long = 273;
/// pivot_root(2) has no glibc wrapper.
#[cfg(target_arch = "x86_64")]
pub const SYS_PIVOT_ROOT: c_long = 155;
#[cfg(target_arch = "aarch64")]
pub const SYS_PIVOT_ROOT: c_long = 41;

pub const EEXIST: i32 = 17;
pub const EBUSY: i32 = 16;
pub const EINVAL: i32 = 22;
pub const ENOTTY: i32 = 25;
pub const ECHILD: i32 = 10;
pub const EINTR: i32 = 4;

#[repr(C)]
pub struct loop_info64 {
    pub lo_device: u64,
    pub lo_inode: u64,
    pub lo_rdevice: u64,
    pub lo_offset: u64,
    pub lo_sizelimit: u64,
    pub lo_number: u32,
    pub lo_encrypt_type: u32,
    pub lo_encrypt_key_size: u32,
    pub lo_flags: u32,
    pub lo_file_name: [u8; 64],
    pub lo_crypt_name: [u8; 64],
    pub lo_encrypt_key: [u8; 32],
    pub lo_init: [u64; 2],
}

#[repr(C)]
pub struct loop_config {
    pub fd: u32,
    pub block_size: u32,
    pub info: loop_info64,
    pub reserved: [u64; 8],
}

impl loop_info64 {
    pub fn zeroed() -> Self {
        loop_info64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        }
    }
}

/// Replaces `path` by a file holding `text` in one rename, so a reader sees the old or the new text.
pub fn write_atomic(path: &str, text: &str) -> io::Result<()> {
    let temp = format!("{path}.new");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

/// A NUL-terminated copy of `s` (our paths never hold NUL).
pub fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| CString::new("<path with NUL>").expect("no NUL"))
}

/// `Err(last_os_error)` when a libc call returned -1.
pub fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Milliseconds since boot (CLOCK_BOOTTIME, which counts from kernel start and includes suspend).
pub fn boot_ms() -> u64 {
    let mut ts = timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    if unsafe { clock_gettime(CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// mount(2) with Rust strings; `None` passes NULL.
pub fn do_mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr);
    let target = cstr(target);
    let fstype = fstype.map(cstr);
    let data = data.map(cstr);
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a live NUL-terminated string.
    let ret = unsafe { mount(ptr(&source), target.as_ptr(), ptr(&fstype), flags, ptr(&data) as *const c_void) };
    check(ret).map(drop)
}

/// Writes all of `buf` to `fd`, with a single write(2) unless the kernel takes only part of it.
pub fn write_all_fd(fd: c_int, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a live byte slice.
        let n = unsafe { write(fd, buf.as_ptr() as *const c_void, buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Fills `buf` from the kernel's CSPRNG (getrandom(2), blocking until it is seeded).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: rest is a live, writable byte slice of the given length.
        let n = unsafe { getrandom(rest.as_mut_ptr() as *mut c_void, rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(EINTR) {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Overwrites `buf` with zeros in a way the optimiser cannot drop (for key material).
pub fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: b is a valid, aligned, writable byte.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// umount2(2) with a Rust path.
pub fn do_umount(target: &str, flags: c_int) -> io::Result<()> {
    let target = cstr(target);
    // SAFETY: target is NUL-terminated.
    check(unsafe { umount2(target.as_ptr(), flags) }).map(drop)
}

/// Unmounts `target`, or detaches it when it is busy (the kernel frees it when its last user goes).
/// Returns whether it had to be detached; the error is the detach's, or the unmount's when it failed
/// for another reason.
pub fn unmount_or_detach(target: &str) -> io::Result<bool> {
    match do_umount(target, 0) {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(EBUSY) => do_umount(target, MNT_DETACH).map(|()| true),
        Err(e) => Err(e),
    }
}

/// A pipe whose both ends are close-on-exec, as (read end, write end); the read end is non-blocking.
pub fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::unix::io::FromRawFd;
    let mut fds = [0 as c_int; 2];
    // SAFETY: fds has room for the two descriptors.
    check(unsafe { pipe2(fds.as_mut_ptr(), O_CLOEXEC) })?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (read, write) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    set_nonblocking(fds[0])?;
    Ok((read, write))
}

pub fn set_nonblocking(fd: c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return plain ints.
    let flags = check(unsafe { fcntl(fd, F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }).map(drop)
}

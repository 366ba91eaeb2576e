//! device-mapper through its ioctl interface on /dev/mapper/control (no libdevmapper, no udev, no
//! cryptsetup): just enough to create, load, resume and remove one dm-crypt device whose key lives
//! only in the kernel.
//!
//! Every request is a `struct dm_ioctl` (312 bytes) followed by its payload, built in a byte buffer
//! at the offsets of include/uapi/linux/dm-ioctl.h, which are the same on x86_64 and aarch64.

use crate::fallible::Fallible;
use crate::sys;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::raw::c_ulong;
use std::os::unix::io::AsRawFd;
use std::time::Duration;

const CONTROL: &str = "/dev/mapper/control";
const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
/// The interface version machined speaks; the kernel accepts any 4.x request with minor <= its own.
const DM_VERSION: [u32; 3] = [4, 0, 0];
/// Room for a table line; the kernel copies `data_size` bytes in and may write results back.
const BUFFER_SIZE: usize = 16 * 1024;

/// The kernel wipes its copy of the request when this is set (cryptsetup sets it for keys).
const DM_SECURE_DATA_FLAG: u32 = 1 << 15;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// _IOWR(0xfd, nr, struct dm_ioctl)
const fn dm_iowr(nr: c_ulong) -> c_ulong {
    (3 << 30) | ((DM_IOCTL_SIZE as c_ulong) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: c_ulong = dm_iowr(3);
const DM_DEV_REMOVE: c_ulong = dm_iowr(4);
const DM_DEV_SUSPEND: c_ulong = dm_iowr(6);
const DM_TABLE_LOAD: c_ulong = dm_iowr(9);

/// A device-mapper device machined created.
#[derive(Clone, Debug)]
pub struct Mapped {
    pub name: String,
    /// `/dev/dm-<minor>` (devtmpfs makes it; /dev/mapper/<name> would be udev's job).
    pub path: String,
}

/// A request buffer that is wiped when dropped, since a table load carries the key.
struct Request {
    buf: Vec<u8>,
}

impl Drop for Request {
    fn drop(&mut self) {
        sys::wipe(&mut self.buf);
    }
}

impl Request {
    fn new(name: &str, flags: u32) -> Fallible<Request> {
        if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
            return Err(format!("device-mapper name {name:?} is empty, too long or holds '/'"));
        }
        let mut r = Request { buf: vec![0u8; BUFFER_SIZE] };
        for (i, v) in DM_VERSION.iter().enumerate() {
            r.put_u32(i * 4, *v);
        }
        r.put_u32(12, BUFFER_SIZE as u32); // data_size
        r.put_u32(16, DM_IOCTL_SIZE as u32); // data_start
        r.put_u32(28, flags);
        r.buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.buf[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn dev(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[40..48]);
        u64::from_ne_bytes(b)
    }

    fn send(&mut self, control: &File, request: c_ulong) -> io::Result<()> {
        // SAFETY: buf is BUFFER_SIZE bytes, as data_size tells the kernel; it reads and writes within.
        sys::check(unsafe { sys::ioctl(control.as_raw_fd(), request, self.buf.as_mut_ptr()) }).map(drop)
    }
}

fn open_control() -> Fallible<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|e| format!("open {CONTROL}: {e} (is the dm_mod module in the board's boot-modules?)"))
}

/// Creates `name` as a dm-crypt mapping of `backing` (`sectors` 512-byte sectors) with AES-XTS under a
/// fresh 512-bit key from getrandom(2). The key exists only in this function's buffers, which are
/// wiped before it returns, and in the kernel; it is never written anywhere, so the data on `backing`
/// is unreadable once the mapping is removed or the machine powers off.
pub fn create_ephemeral_crypt(name: &str, backing: &str, sectors: u64) -> Fallible<Mapped> {
    let control = open_control()?;
    let mut create = Request::new(name, 0)?;
    create.send(&control, DM_DEV_CREATE).map_err(|e| format!("device-mapper: create {name}: {e}"))?;
    let (_major, minor) = crate::parse::decode_dev(create.dev());
    let mapped = Mapped { name: name.to_string(), path: format!("/dev/dm-{minor}") };
    let activated = load_crypt_table(&control, name, backing, sectors).and_then(|()| {
        // Resuming (DEV_SUSPEND without DM_SUSPEND_FLAG) makes the loaded table live.
        let mut resume = Request::new(name, 0)?;
        resume.send(&control, DM_DEV_SUSPEND).map_err(|e| format!("device-mapper: resume {name}: {e}"))
    });
    if let Err(e) = activated {
        let _ = remove(name);
        return Err(e);
    }
    crate::devices::wait_for_path(&mapped.path, Duration::from_secs(5))?;
    Ok(mapped)
}

fn load_crypt_table(control: &File, name: &str, backing: &str, sectors: u64) -> Fallible<()> {
    let mut key = [0u8; 64];
    let filled = sys::random_bytes(&mut key).map_err(|e| format!("getrandom for the {name} key: {e}"));
    let result = filled.and_then(|()| {
        let mut load = Request::new(name, DM_SECURE_DATA_FLAG)?;
        load.put_u32(20, 1); // target_count
        let spec = DM_IOCTL_SIZE;
        load.put_u64(spec, 0); // sector_start
        load.put_u64(spec + 8, sectors); // length
        load.buf[spec + 24..spec + 24 + 5].copy_from_slice(b"crypt");
        // Parameters: <cipher> <key hex> <iv offset> <device> <offset>, written straight into the
        // request so the key's hex form exists nowhere else.
        let mut at = spec + DM_TARGET_SPEC_SIZE;
        let mut put = |bytes: &[u8]| {
            load.buf[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(b"aes-xts-plain64 ");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in key.iter() {
            put(&[HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
        put(format!(" 0 {backing} 0").as_bytes());
        load.send(control, DM_TABLE_LOAD).map_err(|e| {
            format!("device-mapper: load crypt table for {name} on {backing}: {e} (are dm_crypt, xts and ecb loaded?)")
        })
    });
    sys::wipe(&mut key);
    result
}

/// Removes the mapping: the kernel drops the table and, with it, the key.
pub fn remove(name: &str) -> Fallible<()> {
    let control = open_control()?;
    let mut last = None;
    for _attempt in 0..20 {
        let mut req = Request::new(name, 0)?;
        match req.send(&control, DM_DEV_REMOVE) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(sys::EBUSY) => {
                last = Some(e);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(format!("device-mapper: remove {name}: {e}")),
        }
    }
    // Still open: have the kernel remove it on last close rather than leave it behind.
    let mut req = Request::new(name, DM_DEFERRED_REMOVE)?;
    let _ = req.send(&control, DM_DEV_REMOVE);
    Err(format!("device-mapper: remove {name}: {} (deferred removal requested)", last.expect("at least one attempt")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values of DM_DEV_CREATE etc. as compiled from <linux/dm-ioctl.h> on x86_64 and aarch64.
        assert_eq!(DM_DEV_CREATE, 0xc138_fd03);
        assert_eq!(DM_DEV_REMOVE, 0xc138_fd04);
        assert_eq!(DM_DEV_SUSPEND, 0xc138_fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138_fd09);
    }

    #[test]
    fn request_header_layout() {
        let r = Request::new("scratch", DM_SECURE_DATA_FLAG).unwrap();
        assert_eq!(&r.buf[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(u32::from_ne_bytes(r.buf[12..16].try_into().unwrap()), BUFFER_SIZE as u32);
        assert_eq!(u32::from_ne_bytes(r.buf[16..20].try_into().unwrap()), 312);
        assert_eq!(u32::from_ne_bytes(r.buf[28..32].try_into().unwrap()), 1 << 15);
        assert_eq!(&r.buf[48..56], b"scratch\0");
        assert!(Request::new("a/b", 0).is_err());
        assert!(Request::new(&"x".repeat(128), 0).is_err());
    }
}

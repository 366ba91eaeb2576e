//! The node's root: /rootfs.sqsh from the initramfs, read-only, with the system extensions' squashfs
//! layers (from the second, appended initramfs cpio) over it as a read-only overlayfs, then switched
//! into. The initramfs stays in memory underneath: it holds the images that back the loop devices.

use crate::devices::wait_for_path;
use crate::fallible::{Context, Fallible};
use crate::parse::{self, ExtensionLayer};
use crate::protocol::{EXTENSION_LIST, ROOT_IMAGE};
use crate::sys;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::raw::c_ulong;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// One line per layer, `<name> <version> <image>`, in mount order: each layer lies over the ones
/// before it, the first directly over the root image. Absent when the image has no extensions.
const NEW_ROOT: &str = "/newroot";
/// Where the layers are mounted in the initramfs, out of sight once the root is switched.
const LAYERS: &str = "/layers";

pub struct Root {
    pub loop_device: String,
    pub extensions: Vec<Extension>,
    /// Each layer's root directory, the root image's first, held open so that the contents scan
    /// can walk the layers (through /proc/self/fd) once they are out of sight. Empty without
    /// extensions: the root image is the root itself.
    pub layers: Vec<File>,
}

impl Root {
    /// Where the contents scan finds the layers from the switched root.
    pub fn layer_paths(&self) -> Vec<String> {
        match self.layers.is_empty() {
            true => vec!["/".to_string()],
            false => self.layers.iter().map(|f| format!("/proc/self/fd/{}", f.as_raw_fd())).collect(),
        }
    }
}

pub struct Extension {
    pub name: String,
    pub version: String,
}

/// Mounts the root (and the extension layers) on /newroot, with tmpfs on /run and /tmp and the API
/// filesystems moved over, and switches into it.
pub fn assemble() -> Fallible<Root> {
    let layers = match fs::read_to_string(EXTENSION_LIST) {
        Ok(text) => parse::extension_list(&text).map_err(|e| format!("{EXTENSION_LIST}: {e}"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("read {EXTENSION_LIST}: {e}")),
    };
    fs::create_dir_all(NEW_ROOT).ctx(|| format!("create {NEW_ROOT}"))?;
    let loop_device = attach_loop(ROOT_IMAGE)?;
    let mut extensions = Vec::new();
    let mut layer_dirs = Vec::new();
    if layers.is_empty() {
        mount_squashfs(&loop_device, ROOT_IMAGE, NEW_ROOT)?;
    } else {
        let base = format!("{LAYERS}/rootfs");
        mount_squashfs(&loop_device, ROOT_IMAGE, &base)?;
        let mut lowers = vec![base];
        for ExtensionLayer { name, version, image } in layers {
            if !Path::new(&image).is_file() {
                return Err(format!("{EXTENSION_LIST} lists extension {name} at {image}, which the initramfs lacks"));
            }
            let device = attach_loop(&image)?;
            let dir = format!("{LAYERS}/{name}");
            mount_squashfs(&device, &image, &dir).map_err(|e| format!("extension {name} {version}: {e}"))?;
            lowers.push(dir);
            extensions.push(Extension { name, version });
        }
        // overlayfs lists the topmost lower first. Without an upper layer the mount is read-only.
        for dir in &lowers {
            layer_dirs.push(File::open(dir).ctx(|| format!("open the layer {dir}"))?);
        }
        lowers.reverse();
        let options = format!("lowerdir={}", lowers.join(":"));
        sys::do_mount(Some("overlay"), NEW_ROOT, Some("overlay"), sys::MS_RDONLY, Some(&options))
            .ctx(|| format!("mount the root as overlayfs ({options}) on {NEW_ROOT} (is the overlay module loaded?)"))?;
    }
    prepare_new_root()?;
    switch_root()?;
    Ok(Root { loop_device, extensions, layers: layer_dirs })
}

fn mount_squashfs(device: &str, image: &str, target: &str) -> Fallible<()> {
    fs::create_dir_all(target).ctx(|| format!("create {target}"))?;
    sys::do_mount(Some(device), target, Some("squashfs"), sys::MS_RDONLY, None)
        .ctx(|| format!("mount {device} ({image}) as squashfs on {target}"))
}

/// Attaches `image` read-only to a free loop device; returns the device path.
fn attach_loop(image: &str) -> Fallible<String> {
    let backing = File::open(image).ctx(|| format!("open {image}"))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .ctx(|| "open /dev/loop-control (is the loop module listed?)".into())?;
    let mut last_error = String::new();
    for _attempt in 0..20 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = sys::check(unsafe { sys::ioctl(control.as_raw_fd(), sys::LOOP_CTL_GET_FREE) })
            .ctx(|| "LOOP_CTL_GET_FREE on /dev/loop-control".into())?;
        let device = format!("/dev/loop{n}");
        wait_for_path(&device, Duration::from_secs(5))?;
        // Opened read-only: the kernel then marks the loop device read-only as well.
        let dev = File::open(&device).ctx(|| format!("open {device}"))?;
        match configure_loop(&dev, &backing, image) {
            Ok(()) => return Ok(device),
            // Another process took this device between GET_FREE and configure: try the next.
            Err(e) if e.raw_os_error() == Some(sys::EBUSY) => {
                last_error = format!("{device}: {e}");
            }
            Err(e) => return Err(format!("attach {image} to {device}: {e}")),
        }
    }
    Err(format!("attach {image}: no free loop device (last: {last_error})"))
}

/// LOOP_CONFIGURE (Linux 5.8+), falling back to LOOP_SET_FD + LOOP_SET_STATUS64.
fn configure_loop(dev: &File, backing: &File, image: &str) -> io::Result<()> {
    let mut info = sys::loop_info64::zeroed();
    info.lo_flags = sys::LO_FLAGS_READ_ONLY;
    let name = image.as_bytes();
    let len = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    let config = sys::loop_config { fd: backing.as_raw_fd() as u32, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: config is a valid struct loop_config the kernel only reads.
    let ret = unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_CONFIGURE, &config) };
    if ret == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(sys::EINVAL) && err.raw_os_error() != Some(sys::ENOTTY) {
        return Err(err);
    }
    // SAFETY: LOOP_SET_FD takes the backing fd by value.
    sys::check(unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_SET_FD, backing.as_raw_fd() as c_ulong) })?;
    // Read-only follows from the read-only opens; LOOP_SET_STATUS64 cannot set that flag.
    let mut info = config.info;
    info.lo_flags = 0;
    // SAFETY: info is a valid struct loop_info64 the kernel only reads.
    let ret = unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_SET_STATUS64, &info) };
    if ret != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: LOOP_CLR_FD takes no argument.
        unsafe { sys::ioctl(dev.as_raw_fd(), sys::LOOP_CLR_FD) };
        return Err(err);
    }
    Ok(())
}

/// tmpfs on run/ and tmp/ of the new root, and /dev, /proc, /sys moved there.
fn prepare_new_root() -> Fallible<()> {
    let dir_missing = |dir: &str| {
        if Path::new(&format!("{NEW_ROOT}{dir}")).is_dir() {
            String::new()
        } else {
            format!(" (the root image has no directory {dir})")
        }
    };
    for (dir, mode) in [("/run", "mode=0755"), ("/tmp", "mode=1777")] {
        let target = format!("{NEW_ROOT}{dir}");
        sys::do_mount(Some("tmpfs"), &target, Some("tmpfs"), sys::MS_NOSUID | sys::MS_NODEV, Some(mode))
            .ctx(|| format!("mount tmpfs on {target}{}", dir_missing(dir)))?;
    }
    for dir in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{dir}");
        sys::do_mount(Some(dir), &target, None, sys::MS_MOVE, None)
            .ctx(|| format!("move {dir} to {target}{}", dir_missing(dir)))?;
    }
    Ok(())
}

/// Makes /newroot the root, as switch_root(8) does.
fn switch_root() -> Fallible<()> {
    let new_root = sys::cstr(NEW_ROOT);
    let dot = sys::cstr(".");
    let slash = sys::cstr("/");
    // SAFETY: NUL-terminated paths.
    sys::check(unsafe { sys::chdir(new_root.as_ptr()) }).ctx(|| format!("chdir {NEW_ROOT}"))?;
    sys::do_mount(Some(NEW_ROOT), "/", None, sys::MS_MOVE, None).ctx(|| format!("move {NEW_ROOT} onto /"))?;
    // SAFETY: NUL-terminated paths.
    sys::check(unsafe { sys::chroot(dot.as_ptr()) }).ctx(|| "chroot into the new root".into())?;
    // SAFETY: NUL-terminated path.
    sys::check(unsafe { sys::chdir(slash.as_ptr()) }).ctx(|| "chdir / in the new root".into())?;
    Ok(())
}

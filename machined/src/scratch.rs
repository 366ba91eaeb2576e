//! The scratch disk: the node's only writable storage, mounted on /var. It is found by the board's rule
//! (its serial, passed as `machined.scratch-serial=` on the kernel command line), never a disk that
//! holds a partition table (the boot disk has our GPT and ESP), and encrypted with dm-crypt under a key
//! that exists only in RAM for this boot. Since that key is new every boot, the disk is always blank
//! and is formatted every boot; nothing written in one boot can be read in the next, or by anyone
//! holding the disk. Without a scratch disk, /var is a tmpfs.

use crate::fallible::{Context, Fallible};
use crate::protocol::{MARKER_PREFIX, SCRATCH_SERIAL_ARG};
use crate::{dm, parse, sys};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MAPPED_NAME: &str = "scratch";
const MKE2FS: &str = "/usr/sbin/mke2fs";
const VAR: &str = "/var";
pub const MARKER_FILE: &str = "/var/lib/machined/marker";
/// virtio disks are registered while their module loads; this covers a slower bus.
const DISK_WAIT: Duration = Duration::from_millis(500);

/// Where /var ended up.
pub enum Outcome {
    Encrypted(Mounted),
    /// /var is a tmpfs: no scratch disk (`missing`), or it could not be used (`reason` says why).
    Tmpfs {
        missing: bool,
        reason: String,
    },
}

pub struct Mounted {
    pub device: String,
    pub mapped: dm::Mapped,
    pub fstype: &'static str,
    pub marker: String,
}

/// A scratch disk being formatted (mke2fs runs while machined does other work).
pub struct Formatting {
    device: String,
    mapped: dm::Mapped,
    mkfs: Child,
}

/// Finds the scratch disk, maps it through dm-crypt and starts mke2fs on the mapping.
pub fn begin(cmdline: &str, milestones: &mut Vec<(&'static str, u64)>) -> Result<Formatting, Outcome> {
    let serial = match parse::cmdline_value(cmdline, SCRATCH_SERIAL_ARG) {
        Some(s) if !s.is_empty() => s,
        _ => {
            return Err(Outcome::Tmpfs {
                missing: true,
                reason: format!("the kernel command line names no scratch disk ({SCRATCH_SERIAL_ARG}=)"),
            })
        }
    };
    let failed = |reason: String| Outcome::Tmpfs { missing: false, reason };
    let start = Instant::now();
    let name = loop {
        match find_disk(&serial) {
            Ok(Some(name)) => break name,
            Ok(None) if start.elapsed() < DISK_WAIT => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return Err(Outcome::Tmpfs { missing: true, reason: format!("no disk has serial {serial:?}") }),
            Err(e) => return Err(failed(e)),
        }
    };
    let device = format!("/dev/{name}");
    refuse_if_in_use(&name, &device).map_err(failed)?;
    let sectors: u64 = read_sys(&format!("/sys/block/{name}/size"))
        .and_then(|s| s.parse().map_err(|e| format!("/sys/block/{name}/size: {e}")))
        .map_err(failed)?;
    if sectors < 64 * 1024 * 2 {
        return Err(failed(format!("{device} has only {} KiB; a scratch disk needs at least 64 MiB", sectors / 2)));
    }
    let mapped = dm::create_ephemeral_crypt(MAPPED_NAME, &device, sectors).map_err(failed)?;
    milestones.push(("scratch_mapped", sys::boot_ms()));
    // Lazy init: the device is random data under the fresh key, so there is nothing to discard and no
    // old inode table to clear (ext4 tracks which groups are initialised). No journal: the filesystem
    // lives for one boot under a key that dies with it, so there is never anything to replay, and
    // the journal's commits would only be more writes through dm-crypt. 4 KiB blocks, the page
    // size, whatever the disk's size: mke2fs.conf gives disks under 512 MB 1 KiB blocks, every one of
    // whose writes the kernel must first read back through dm-crypt to fill its page (a 256 MiB disk:
    // 307 such writes, 48 page-sized ones with -b 4096).
    let mkfs = Command::new(MKE2FS)
        .args(["-t", "ext4", "-b", "4096", "-q", "-F", "-L", "var"])
        .args(["-E", "nodiscard,lazy_itable_init=1", "-O", "^has_journal"])
        .arg(&mapped.path)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    match mkfs {
        Ok(mkfs) => Ok(Formatting { device, mapped, mkfs }),
        Err(e) => {
            let _ = dm::remove(MAPPED_NAME);
            Err(failed(format!("start {MKE2FS}: {e}")))
        }
    }
}

/// Waits for mke2fs, mounts the result on /var and writes this boot's marker.
pub fn finish(formatting: Formatting, milestones: &mut Vec<(&'static str, u64)>) -> Outcome {
    let Formatting { device, mapped, mkfs } = formatting;
    let failed = |reason: String| {
        let _ = dm::remove(MAPPED_NAME);
        Outcome::Tmpfs { missing: false, reason }
    };
    let out = match mkfs.wait_with_output() {
        Ok(out) => out,
        Err(e) => return failed(format!("wait for {MKE2FS}: {e}")),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return failed(format!("{MKE2FS} {} failed ({}): {}", mapped.path, out.status, stderr.trim()));
    }
    milestones.push(("scratch_formatted", sys::boot_ms()));
    // noinit_itable: the kernel would otherwise zero every inode table mke2fs left uninitialised, in
    // a background thread, through dm-crypt, while the services start: 1/64 of the disk in writes at
    // mke2fs's defaults (16 GB on a 1 TB disk). Nothing reads an unused inode: the group descriptors say which are in use, and no
    // fsck ever looks at a filesystem that lives for one boot.
    let options = Some("noinit_itable");
    if let Err(e) = sys::do_mount(Some(&mapped.path), VAR, Some("ext4"), sys::MS_NOSUID | sys::MS_NODEV, options) {
        return failed(format!("mount {} (ext4 on {device}) on {VAR}: {e}", mapped.path));
    }
    let marker = match populate_var().and_then(|()| write_marker()) {
        Ok(marker) => marker,
        Err(e) => {
            let _ = sys::do_umount(VAR, sys::MNT_DETACH);
            return failed(e);
        }
    };
    Outcome::Encrypted(Mounted { device, mapped, fstype: "ext4", marker })
}

/// /var as a tmpfs, with the same layout.
pub fn mount_tmpfs() -> Fallible<()> {
    sys::do_mount(Some("tmpfs"), VAR, Some("tmpfs"), sys::MS_NOSUID | sys::MS_NODEV, Some("mode=0755"))
        .ctx(|| format!("mount tmpfs on {VAR}"))?;
    populate_var()
}

/// The directories and links programs expect under /var.
fn populate_var() -> Fallible<()> {
    for dir in ["/var/lib/machined", "/var/log", "/var/tmp"] {
        fs::create_dir_all(dir).ctx(|| format!("create {dir}"))?;
    }
    fs::set_permissions("/var/tmp", fs::Permissions::from_mode(0o1777)).ctx(|| "chmod /var/tmp".into())?;
    for (link, target) in [("/var/run", "/run"), ("/var/lock", "/run/lock")] {
        std::os::unix::fs::symlink(target, link).ctx(|| format!("symlink {link} -> {target}"))?;
    }
    fs::create_dir_all("/run/lock").ctx(|| "create /run/lock".into())
}

/// Writes `NODEIMG-MARKER-<random>` to the marker file and forces it to the disk, so that boot-test
/// can look for it in the disk image after power-off (it must find only ciphertext).
fn write_marker() -> Fallible<String> {
    let mut random = [0u8; 16];
    sys::random_bytes(&mut random).ctx(|| "getrandom for the marker".into())?;
    let marker = format!("{MARKER_PREFIX}{}", parse::hex(&random));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(MARKER_FILE)
        .ctx(|| format!("create {MARKER_FILE}"))?;
    file.write_all(format!("{marker}\n").as_bytes()).ctx(|| format!("write {MARKER_FILE}"))?;
    file.sync_all().ctx(|| format!("fsync {MARKER_FILE}"))?;
    File::open("/var/lib/machined").and_then(|d| d.sync_all()).ctx(|| "fsync /var/lib/machined".into())?;
    Ok(marker)
}

fn read_sys(path: &str) -> Fallible<String> {
    fs::read_to_string(path).map(|s| s.trim().to_string()).ctx(|| format!("read {path}"))
}

/// The block device (name under /sys/block) whose serial is `serial`; an error if several are.
fn find_disk(serial: &str) -> Fallible<Option<String>> {
    let mut names: Vec<String> = fs::read_dir("/sys/block")
        .ctx(|| "list /sys/block".into())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !["loop", "ram", "dm-", "zram", "sr", "nbd", "md"].iter().any(|p| n.starts_with(p)))
        .collect();
    names.sort();
    let matching: Vec<String> = names
        .into_iter()
        .filter(|n| {
            // virtio-blk has /sys/block/<disk>/serial; SCSI and NVMe disks keep it on the device.
            [format!("/sys/block/{n}/serial"), format!("/sys/block/{n}/device/serial")]
                .iter()
                .any(|p| fs::read_to_string(p).map(|s| s.trim() == serial).unwrap_or(false))
        })
        .collect();
    match matching.len() {
        0 => Ok(None),
        1 => Ok(matching.into_iter().next()),
        _ => Err(format!("several disks have serial {serial:?} ({}); refusing to guess", matching.join(", "))),
    }
}

/// Refuses a disk that is read-only or holds a partition table: the boot disk carries our GPT and
/// ESP, and formatting a partitioned disk would destroy something that is not scratch.
fn refuse_if_in_use(name: &str, device: &str) -> Fallible<()> {
    if read_sys(&format!("/sys/block/{name}/ro"))? == "1" {
        return Err(format!("{device} is read-only"));
    }
    let partitions: Vec<String> = fs::read_dir(format!("/sys/block/{name}"))
        .ctx(|| format!("list /sys/block/{name}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(name) && Path::new(&format!("/sys/block/{name}/{n}/partition")).exists())
        .collect();
    if !partitions.is_empty() {
        return Err(format!(
            "{device} has partitions ({}): refusing to use a partitioned disk (the boot disk?) as scratch",
            partitions.join(", ")
        ));
    }
    let mut head = vec![0u8; 8192];
    let mut file = File::open(device).ctx(|| format!("open {device}"))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(format!("read the start of {device}: {e}")),
        }
    }
    if parse::has_gpt_header(&head[..filled]) {
        return Err(format!("{device} holds a GPT partition table (the boot disk?); refusing to format it"));
    }
    Ok(())
}

/// At shutdown: unmounts /var (and anything below it) and removes the mapping, which drops the key.
/// Returns what was done, for the console.
pub fn teardown(mounted: &Mounted) -> Fallible<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ctx(|| "read /proc/self/mounts".into())?;
    let mut detached = Vec::new();
    // Overlays elsewhere with their upper layer on /var first (the writable paths), then /var itself.
    let targets = parse::overlays_backed_by(&mounts, VAR).into_iter().chain(parse::mounts_under(&mounts, VAR));
    for target in targets {
        if sys::unmount_or_detach(&target).ctx(|| format!("unmount {target}"))? {
            detached.push(target);
        }
    }
    dm::remove(&mounted.mapped.name)?;
    Ok(if detached.is_empty() {
        format!("unmounted {VAR}, removed {} ({}); key discarded", mounted.mapped.path, mounted.mapped.name)
    } else {
        format!("detached busy {}, removed {}; key discarded", detached.join(", "), mounted.mapped.path)
    })
}

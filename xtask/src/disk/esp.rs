//! The EFI System Partition: a FAT32 image made in-process with the `fatfs` crate, so the bytes depend
//! only on the inputs. Every timestamp comes from the caller's epoch (through a fixed time provider),
//! the volume ID is the caller's, files go in sorted by path, and cluster size follows from the size alone.

use anyhow::{bail, ensure, Context, Result};
use fatfs::{Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: u64 = 512;
/// FAT32 needs at least this many clusters; fewer and every reader takes the volume for FAT16.
const MIN_FAT32_CLUSTERS: u64 = 65_525;

/// Builds a FAT32 ESP of exactly `size_bytes` at `out` (replaced if it exists). `files` are
/// '/'-separated paths such as "EFI/BOOT/BOOTX64.EFI"; parent directories are created. The image is
/// sparse: only the filesystem's metadata and the files' data are written.
pub fn build_esp(
    out: &Path,
    size_bytes: u64,
    files: &[(&str, &[u8])],
    epoch: i64,
    volume_id: u32,
    label: &str,
) -> Result<()> {
    let mut image = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    image.set_len(size_bytes).with_context(|| format!("sizing {}", out.display()))?;
    format_esp(&mut image, size_bytes, files, epoch, volume_id, label)
        .with_context(|| format!("building the ESP image {}", out.display()))
}

/// Like [`build_esp`], onto any zero-filled seekable storage of at least `size_bytes`, starting at
/// its current offset 0 (for example a slice of a disk image).
pub fn format_esp<D: Read + Write + Seek>(
    mut disk: D,
    size_bytes: u64,
    files: &[(&str, &[u8])],
    epoch: i64,
    volume_id: u32,
    label: &str,
) -> Result<()> {
    ensure!(size_bytes.is_multiple_of(SECTOR), "ESP size {size_bytes} is not a multiple of {SECTOR}-byte sectors");
    let total_sectors = u32::try_from(size_bytes / SECTOR).context("ESP larger than FAT32's 2 TiB limit")?;
    let cluster_size = cluster_size_for(size_bytes)?;
    let label = volume_label(label)?;
    let files = sorted_files(files)?;

    disk.seek(SeekFrom::Start(0))?;
    let options = FormatVolumeOptions::new()
        .fat_type(FatType::Fat32)
        .bytes_per_cluster(cluster_size)
        .total_sectors(total_sectors)
        .volume_id(volume_id)
        .volume_label(label);
    fatfs::format_volume(&mut disk, options).with_context(|| format!("formatting a {size_bytes}-byte FAT32 volume"))?;
    disk.seek(SeekFrom::Start(0))?;

    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(dos_date_time(epoch))));
    let fs = FileSystem::new(&mut disk, FsOptions::new().time_provider(time))
        .context("opening the freshly formatted FAT32 volume")?;
    ensure!(fs.fat_type() == FatType::Fat32, "fatfs made {:?}, not FAT32", fs.fat_type());
    check_fits(&fs, &files, cluster_size, size_bytes)?;

    let root = fs.root_dir();
    let mut made_dirs = BTreeSet::new();
    for (path, data) in &files {
        let components: Vec<&str> = path.split('/').collect();
        for depth in 1..components.len() {
            let dir = components[..depth].join("/");
            if made_dirs.insert(dir.to_ascii_uppercase()) {
                root.create_dir(&dir).with_context(|| format!("creating directory {dir}"))?;
            }
        }
        let mut file = root.create_file(path).with_context(|| format!("creating {path}"))?;
        file.write_all(data).with_context(|| format!("writing {path} ({} bytes)", data.len()))?;
        file.flush().with_context(|| format!("writing {path}"))?;
    }
    drop(root);
    fs.unmount().context("finishing the FAT32 volume")?;
    fix_dot_entries(&mut disk).context("repairing fatfs' '.' and '..' directory entries")?;
    disk.flush()?;
    Ok(())
}

/// fatfs 0.3.6 (the last release) writes every new directory as [LFN("."), ".", LFN(".."), ".."] and
/// points ".." of first-level directories at the root's cluster instead of 0 (its issues #117 and PR
/// #99/#100, fixed only on its unreleased master). fsck.vfat and strict firmware reject both, so walk the
/// tree and rewrite each directory to start with plain "." and "..", the latter 0 under the root.
fn fix_dot_entries<D: Read + Write + Seek>(disk: &mut D) -> Result<()> {
    let mut boot = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut boot)?;
    let geometry = Geometry {
        bytes_per_sector: u64::from(u16::from_le_bytes([boot[11], boot[12]])),
        sectors_per_cluster: u64::from(boot[13]),
        reserved_sectors: u64::from(u16::from_le_bytes([boot[14], boot[15]])),
        fats: u64::from(boot[16]),
        sectors_per_fat: u64::from(u32::from_le_bytes([boot[36], boot[37], boot[38], boot[39]])),
    };
    let root_cluster = u32::from_le_bytes([boot[44], boot[45], boot[46], boot[47]]);

    // (directory cluster, whether its parent is the root); the root itself has no dot entries.
    let mut pending: Vec<(u32, bool)> = Vec::new();
    let visit = |entries: &[u8], parent_is_root: bool, pending: &mut Vec<(u32, bool)>| {
        for entry in entries.chunks_exact(DIR_ENTRY) {
            if entry[0] == 0 {
                break;
            }
            let is_dir = entry[11] & ATTR_DIRECTORY != 0 && entry[11] != ATTR_LFN;
            if entry[0] != 0xE5 && is_dir && &entry[..11] != DOT && &entry[..11] != DOTDOT {
                pending.push((entry_cluster(entry), parent_is_root));
            }
        }
    };
    let (_, root_entries) = read_chain(disk, &geometry, root_cluster)?;
    visit(&root_entries, true, &mut pending);
    let mut visited = 0usize;
    while let Some((cluster, parent_is_root)) = pending.pop() {
        visited += 1;
        ensure!(visited < 1 << 20, "directory tree loops");
        let (clusters, mut entries) = read_chain(disk, &geometry, cluster)?;
        if is_lfn(&entries, 0) && name_is(&entries, 1, DOT) && is_lfn(&entries, 2) && name_is(&entries, 3, DOTDOT) {
            // Drop entries 0 and 2, shifting the rest down; the freed tail reads as end-of-directory.
            entries.copy_within(DIR_ENTRY..2 * DIR_ENTRY, 0);
            entries.copy_within(3 * DIR_ENTRY..4 * DIR_ENTRY, DIR_ENTRY);
            entries.copy_within(4 * DIR_ENTRY.., 2 * DIR_ENTRY);
            let len = entries.len();
            entries[len - 2 * DIR_ENTRY..].fill(0);
        }
        ensure!(
            name_is(&entries, 0, DOT) && name_is(&entries, 1, DOTDOT),
            "directory at cluster {cluster} does not start with . and .."
        );
        ensure!(entry_cluster(&entries[..DIR_ENTRY]) == cluster, "'.' of cluster {cluster} points elsewhere");
        if parent_is_root {
            entries[DIR_ENTRY + 20..DIR_ENTRY + 22].fill(0);
            entries[DIR_ENTRY + 26..DIR_ENTRY + 28].fill(0);
        }
        let cluster_bytes = geometry.cluster_bytes() as usize;
        for (index, &c) in clusters.iter().enumerate() {
            disk.seek(SeekFrom::Start(geometry.cluster_offset(c)?))?;
            disk.write_all(&entries[index * cluster_bytes..(index + 1) * cluster_bytes])?;
        }
        visit(&entries[2 * DIR_ENTRY..], false, &mut pending);
    }
    Ok(())
}

const DIR_ENTRY: usize = 32;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LFN: u8 = 0x0F;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

struct Geometry {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    reserved_sectors: u64,
    fats: u64,
    sectors_per_fat: u64,
}

impl Geometry {
    fn cluster_bytes(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }
    fn cluster_offset(&self, cluster: u32) -> Result<u64> {
        ensure!(cluster >= 2, "invalid cluster number {cluster}");
        let data_start = (self.reserved_sectors + self.fats * self.sectors_per_fat) * self.bytes_per_sector;
        Ok(data_start + u64::from(cluster - 2) * self.cluster_bytes())
    }
}

fn is_lfn(entries: &[u8], index: usize) -> bool {
    entries.get(index * DIR_ENTRY + 11) == Some(&ATTR_LFN)
}

fn name_is(entries: &[u8], index: usize, name: &[u8; 11]) -> bool {
    entries.get(index * DIR_ENTRY..index * DIR_ENTRY + 11) == Some(&name[..])
}

fn entry_cluster(entry: &[u8]) -> u32 {
    u32::from(u16::from_le_bytes([entry[20], entry[21]])) << 16 | u32::from(u16::from_le_bytes([entry[26], entry[27]]))
}

/// A directory's clusters (following the first FAT) and their concatenated contents.
fn read_chain<D: Read + Seek>(disk: &mut D, geometry: &Geometry, first: u32) -> Result<(Vec<u32>, Vec<u8>)> {
    let fat_start = geometry.reserved_sectors * geometry.bytes_per_sector;
    let mut clusters = Vec::new();
    let mut data = Vec::new();
    let mut cluster = first;
    loop {
        ensure!(clusters.len() < 1 << 16, "directory cluster chain from {first} is implausibly long");
        clusters.push(cluster);
        let mut buffer = vec![0u8; geometry.cluster_bytes() as usize];
        disk.seek(SeekFrom::Start(geometry.cluster_offset(cluster)?))?;
        disk.read_exact(&mut buffer)?;
        data.extend_from_slice(&buffer);
        let mut next = [0u8; 4];
        disk.seek(SeekFrom::Start(fat_start + 4 * u64::from(cluster)))?;
        disk.read_exact(&mut next)?;
        cluster = u32::from_le_bytes(next) & 0x0FFF_FFFF;
        if cluster >= 0x0FFF_FFF8 {
            return Ok((clusters, data));
        }
    }
}

/// The largest cluster size (4 KiB down to 512 B) that still leaves FAT32's minimum cluster count, so
/// big ESPs get 4 KiB clusters and small ones still qualify as FAT32.
fn cluster_size_for(size_bytes: u64) -> Result<u32> {
    for cluster in [4096u64, 2048, 1024, 512] {
        // Reserved sectors (32) and two FATs of 4 bytes per cluster come off the top.
        let upper_clusters = size_bytes / cluster;
        let fats = 2 * (upper_clusters + 2) * 4;
        let data = size_bytes.saturating_sub(32 * SECTOR + fats);
        // A small margin keeps us clear of fatfs' own rounding.
        if data / cluster >= MIN_FAT32_CLUSTERS + 64 {
            return Ok(cluster as u32);
        }
    }
    bail!(
        "an ESP of {size_bytes} bytes is too small for FAT32, which needs at least {MIN_FAT32_CLUSTERS} clusters \
         (about 33 MiB with 512-byte clusters)"
    )
}

/// Sorts by path (so the image does not depend on argument order) and refuses paths FAT would
/// treat as the same or could not hold.
fn sorted_files<'a>(files: &[(&'a str, &'a [u8])]) -> Result<Vec<(&'a str, &'a [u8])>> {
    let mut sorted = files.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut seen_files = BTreeSet::new();
    let mut seen_dirs = BTreeSet::new();
    for (path, _) in &sorted {
        if path.is_empty() || path.starts_with('/') || path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("invalid ESP path {path:?}: expected a relative path like EFI/BOOT/BOOTX64.EFI");
        }
        if let Some(bad) = path.chars().find(|c| c.is_control() || "\"*:<>?\\|".contains(*c)) {
            bail!("invalid ESP path {path:?}: FAT does not allow {bad:?}");
        }
        // FAT compares names case-insensitively.
        let folded = path.to_ascii_uppercase();
        let components: Vec<&str> = folded.split('/').collect();
        for depth in 1..components.len() {
            seen_dirs.insert(components[..depth].join("/"));
        }
        ensure!(seen_files.insert(folded.clone()), "ESP path {path:?} is given twice (FAT ignores case)");
    }
    if let Some(both) = seen_files.intersection(&seen_dirs).next() {
        bail!("ESP path {both:?} is both a file and a directory");
    }
    Ok(sorted)
}

/// Checks the free space up front, so a too-small ESP is reported in sizes rather than as a write error.
fn check_fits<D: Read + Write + Seek>(
    fs: &FileSystem<D>,
    files: &[(&str, &[u8])],
    cluster_size: u32,
    size_bytes: u64,
) -> Result<()> {
    let cluster = u64::from(cluster_size);
    let dirs: BTreeSet<String> = files
        .iter()
        .flat_map(|(path, _)| {
            let parts: Vec<&str> = path.split('/').collect();
            (1..parts.len()).map(move |d| parts[..d].join("/").to_ascii_uppercase())
        })
        .collect();
    // One cluster per directory is enough for the few entries an ESP holds.
    let needed_clusters: u64 =
        files.iter().map(|(_, data)| (data.len() as u64).div_ceil(cluster)).sum::<u64>() + dirs.len() as u64;
    let free_clusters = u64::from(fs.stats().context("reading the FAT32 free space")?.free_clusters());
    if needed_clusters > free_clusters {
        let data_bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
        bail!(
            "the files ({data_bytes} bytes, {needed_clusters} clusters of {cluster_size}) do not fit the {size_bytes}-byte \
             ESP ({free_clusters} clusters free); make the ESP larger"
        );
    }
    Ok(())
}

/// The 11-byte boot-sector label: upper-case ASCII, space padded; empty means "NO NAME".
fn volume_label(label: &str) -> Result<[u8; 11]> {
    let label = if label.is_empty() { "NO NAME" } else { label };
    ensure!(label.len() <= 11, "FAT volume label {label:?} is longer than 11 characters");
    if let Some(bad) =
        label.chars().find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || " !#$%&'()-@^_`{}~".contains(*c)))
    {
        bail!("FAT volume label {label:?} has {bad:?}; use upper-case letters, digits, space or -_");
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

/// The time fatfs stamps on everything it creates or touches.
#[derive(Debug)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// `epoch` (seconds since 1970, UTC) as a DOS date and time, clamped to what FAT can store
/// (1980-01-01 to 2107-12-31): SOURCE_DATE_EPOCH=0 is common and must not fail the build.
fn dos_date_time(epoch: i64) -> DateTime {
    const FAT_MIN: i64 = 315_532_800; // 1980-01-01T00:00:00Z
    const FAT_MAX: i64 = 4_354_819_199; // 2107-12-31T23:59:59Z
    let t = epoch.clamp(FAT_MIN, FAT_MAX);
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let (year, month, day) = crate::util::epoch::civil_from_days(days);
    DateTime {
        date: Date { year: year as u16, month: month as u16, day: day as u16 },
        time: Time { hour: (secs / 3600) as u16, min: (secs / 60 % 60) as u16, sec: (secs % 60) as u16, millis: 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::cmd::cmd;

    const EPOCH: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn payload(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect()
    }

    #[test]
    fn dates_convert_and_clamp() {
        let t = dos_date_time(EPOCH);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = dos_date_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day, t.time.hour), (1980, 1, 1, 0));
        let t = dos_date_time(951_782_400); // 2000-02-29
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
        let t = dos_date_time(i64::MAX);
        assert_eq!((t.date.year, t.date.month, t.date.day), (2107, 12, 31));
    }

    #[test]
    fn picks_fat32_cluster_sizes() {
        assert!(cluster_size_for(32 << 20).is_err());
        assert_eq!(cluster_size_for(40 << 20).unwrap(), 512);
        assert_eq!(cluster_size_for(100 << 20).unwrap(), 1024);
        assert_eq!(cluster_size_for(512 << 20).unwrap(), 4096);
    }

    #[test]
    fn refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("esp.img");
        let big = vec![1u8; 41 << 20];
        let ok: &[u8] = b"x";
        assert!(build_esp(&out, 40 << 20, &[("EFI/BOOT/BIG.EFI", &big)], EPOCH, 1, "ESP").is_err());
        assert!(build_esp(&out, 16 << 20, &[("A", ok)], EPOCH, 1, "ESP").is_err());
        assert!(build_esp(&out, 40 << 20, &[("/A", ok)], EPOCH, 1, "ESP").is_err());
        assert!(build_esp(&out, 40 << 20, &[("A/B", ok), ("a/b", ok)], EPOCH, 1, "ESP").is_err());
        assert!(build_esp(&out, 40 << 20, &[("A", ok), ("A/B", ok)], EPOCH, 1, "ESP").is_err());
        assert!(build_esp(&out, 40 << 20, &[("A", ok)], EPOCH, 1, "lower").is_err());
        assert!(build_esp(&out, 40 << 20, &[("A", ok)], EPOCH, 1, "TWELVE CHARS").is_err());
        let err = build_esp(&out, 40 << 20, &[("EFI/BOOT/BIG.EFI", &big)], EPOCH, 1, "ESP").unwrap_err();
        assert!(format!("{err:#}").contains("do not fit"), "{err:#}");
    }

    #[test]
    fn fsck_and_mtools_read_it_back_and_builds_are_identical() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let boot = payload(3 << 20, 7);
        let small = payload(1000, 3);
        let files: [(&str, &[u8]); 3] = [
            ("EFI/BOOT/BOOTX64.EFI", &boot),
            ("loader/entries/a-long-file-name.conf", &small),
            ("EFI/Linux/x.txt", b""),
        ];
        let first = dir.path().join("a.img");
        let second = dir.path().join("b.img");
        build_esp(&first, 64 << 20, &files, EPOCH, 0x1234_abcd, "EFI").unwrap();
        let mut reversed = files;
        reversed.reverse();
        build_esp(&second, 64 << 20, &reversed, EPOCH, 0x1234_abcd, "EFI").unwrap();
        let image = std::fs::read(&first).unwrap();
        assert_eq!(image.len(), 64 << 20);
        assert_eq!(image, std::fs::read(&second).unwrap(), "builds differ");
        assert_eq!(&image[82..90], b"FAT32   ");
        assert_eq!(&image[67..71], &0x1234_abcdu32.to_le_bytes());

        // A different epoch changes the bytes (timestamps are really set from it).
        let third = dir.path().join("c.img");
        build_esp(&third, 64 << 20, &files, EPOCH + 86_400, 0x1234_abcd, "EFI").unwrap();
        assert_ne!(image, std::fs::read(&third).unwrap());

        let out = cmd("fsck.vfat").arg("-n").arg(&first).read().unwrap();
        assert!(!out.contains("differ") && !out.contains("Fix"), "{out}");
        let image_arg = first.to_str().unwrap();
        let listing = cmd("mdir").args(["-/", "-b", "-i", image_arg, "::"]).read().unwrap();
        assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
        assert!(listing.contains("::/loader/entries/a-long-file-name.conf"), "{listing}");
        let long = cmd("mdir").args(["-i", image_arg, "::/EFI/BOOT"]).read().unwrap();
        assert!(long.contains("2023-11-14") && long.contains("22:13"), "{long}");
        for (path, data) in files {
            let copy = dir.path().join("copy");
            cmd("mcopy").args(["-n", "-o", "-i", image_arg, &format!("::/{path}")]).arg(&copy).run().unwrap();
            assert_eq!(std::fs::read(&copy).unwrap(), data, "{path}");
        }
    }
}

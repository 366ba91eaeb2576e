//! Files in the root directory of a FAT12/16/32 volume, read by machined itself (Microsoft's FAT
//! specification, with long file names): the NoCloud volume's `user-data` and `meta-data`, and the
//! volume label it is found by. Mounting it instead loads four modules on demand under TCG (fat,
//! vfat and two code pages, each a start of the modprobe helper), about 0.4 s of the boot that
//! competes with formatting the scratch disk.
//!
//! The volume comes from whoever attached it, and this is PID 1 (a panic powers the node off), so
//! every offset is checked arithmetic, every chain is bounded by the volume's cluster count, and a
//! damaged volume is an error naming what is wrong.

use std::io::{Read, Seek, SeekFrom};

const DIR_ENTRY: usize = 32;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
const LAST_LONG_ENTRY: u8 = 0x40;
const DELETED: u8 = 0xE5;
/// A root directory longer than this is not a NoCloud volume (it holds two or three files).
const MAX_ROOT_ENTRIES: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

/// The geometry a boot sector describes.
#[derive(Debug)]
struct Volume {
    fat_type: FatType,
    bytes_per_cluster: u64,
    /// Byte offset of the first FAT.
    fat_start: u64,
    fat_bytes: u64,
    /// FAT12/16: the fixed root directory region (offset, entries).
    fixed_root: (u64, usize),
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
    data_start: u64,
    /// Clusters 2 ..= max_cluster hold data.
    max_cluster: u32,
}

/// A file found in the root directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    first_cluster: u32,
    size: u32,
}

/// Reads each of `names` (case-insensitively, as FAT names compare) from the root directory of the
/// FAT volume on `dev`: None for a name it does not hold. A file over `max_bytes` is an error.
pub fn read_root_files<D: Read + Seek>(
    dev: &mut D,
    names: &[&str],
    max_bytes: u64,
) -> Result<Vec<Option<Vec<u8>>>, String> {
    let mut boot = [0u8; 512];
    read_at(dev, 0, &mut boot).map_err(|e| format!("reading the boot sector: {e}"))?;
    let volume = Volume::parse(&boot)?;
    let entries = volume.root_entries(dev, MAX_ROOT_ENTRIES)?;
    names
        .iter()
        .map(|name| match entries.iter().find(|e| e.name.eq_ignore_ascii_case(name)) {
            None => Ok(None),
            Some(entry) if u64::from(entry.size) > max_bytes => Err(format!("{name} is over {max_bytes} bytes")),
            Some(entry) => volume.read_file(dev, entry).map(Some).map_err(|e| format!("reading {name}: {e}")),
        })
        .collect()
}

/// The volume label in a FAT boot sector's extended BIOS parameter block (FAT12/16 at 43, FAT32 at
/// 71, each behind the 0x29 signature), without its space padding.
pub fn label(boot: &[u8; 512]) -> Option<String> {
    if !has_signature(boot) {
        return None;
    }
    let fat32 = boot[22] == 0 && boot[23] == 0; // sectors per FAT (16-bit) is 0 only on FAT32
    let (signature, label) = if fat32 { (66, 71) } else { (38, 43) };
    if boot[signature] != 0x29 {
        return None;
    }
    Some(String::from_utf8_lossy(&boot[label..label + 11]).trim_end().to_string())
}

fn has_signature(boot: &[u8; 512]) -> bool {
    boot[510..512] == [0x55, 0xAA]
}

impl Volume {
    fn parse(boot: &[u8; 512]) -> Result<Volume, String> {
        if !has_signature(boot) {
            return Err("no boot sector signature (55 AA at byte 510)".into());
        }
        let u16_at = |i: usize| u64::from(u16::from_le_bytes([boot[i], boot[i + 1]]));
        let u32_at = |i: usize| u64::from(u32::from_le_bytes([boot[i], boot[i + 1], boot[i + 2], boot[i + 3]]));
        let bytes_per_sector = u16_at(11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(format!("bytes per sector is {bytes_per_sector}, not 512, 1024, 2048 or 4096"));
        }
        let sectors_per_cluster = u64::from(boot[13]);
        if !sectors_per_cluster.is_power_of_two() {
            return Err(format!("sectors per cluster is {sectors_per_cluster}, not a power of two"));
        }
        let reserved = u16_at(14);
        let fats = u64::from(boot[16]);
        if reserved == 0 || fats == 0 {
            return Err(format!("{reserved} reserved sectors and {fats} FATs: both must be at least 1"));
        }
        let root_entries = u16_at(17);
        let total = match u16_at(19) {
            0 => u32_at(32),
            n => n,
        };
        let fat_sectors = match u16_at(22) {
            0 => u32_at(36),
            n => n,
        };
        if fat_sectors == 0 {
            return Err("the FAT size is 0 sectors".into());
        }
        let root_sectors = (root_entries * DIR_ENTRY as u64).div_ceil(bytes_per_sector);
        let first_data_sector = reserved + fats * fat_sectors + root_sectors;
        let data_sectors = total.checked_sub(first_data_sector).ok_or_else(|| {
            format!("the volume's {total} sectors end before its data area (sector {first_data_sector})")
        })?;
        let clusters = data_sectors / sectors_per_cluster;
        // The specification's rule: the cluster count alone decides the FAT type.
        let fat_type = match clusters {
            0..=4084 => FatType::Fat12,
            4085..=65524 => FatType::Fat16,
            _ => FatType::Fat32,
        };
        if fat_type == FatType::Fat32 && root_entries != 0 {
            return Err(format!("a FAT32 volume ({clusters} clusters) with {root_entries} fixed root entries"));
        }
        let max_cluster =
            u32::try_from(clusters + 1).map_err(|_| format!("{clusters} clusters is more than FAT allows"))?;
        Ok(Volume {
            fat_type,
            bytes_per_cluster: bytes_per_sector * sectors_per_cluster,
            fat_start: reserved * bytes_per_sector,
            fat_bytes: fat_sectors * bytes_per_sector,
            fixed_root: ((reserved + fats * fat_sectors) * bytes_per_sector, root_entries as usize),
            root_cluster: (u32_at(44) & 0x0FFF_FFFF) as u32,
            data_start: first_data_sector * bytes_per_sector,
            max_cluster,
        })
    }

    /// The files (not directories or the label) of the root directory; a FAT32 root directory that
    /// goes on past `max_entries` is an error, not cut short (a file past the cut would be missing).
    fn root_entries<D: Read + Seek>(&self, dev: &mut D, max_entries: usize) -> Result<Vec<Entry>, String> {
        let raw = if self.fat_type == FatType::Fat32 {
            let limit = (max_entries * DIR_ENTRY) as u64;
            // One cluster past the limit, to tell a directory that ends there from one that goes on.
            let chain = self
                .chain(dev, self.root_cluster, limit + self.bytes_per_cluster, false)
                .map_err(|e| format!("the root directory: {e}"))?;
            let mut raw = Vec::new();
            for cluster in chain {
                if raw.len() as u64 >= limit {
                    return Err(format!("the root directory goes on past {max_entries} entries"));
                }
                let mut buf = vec![0u8; self.bytes_per_cluster as usize];
                read_at(dev, self.cluster_offset(cluster), &mut buf).map_err(|e| format!("the root directory: {e}"))?;
                let end = buf.chunks(DIR_ENTRY).any(|e| e[0] == 0);
                raw.extend_from_slice(&buf);
                if end {
                    break;
                }
            }
            raw
        } else {
            let (offset, entries) = self.fixed_root;
            let mut raw = vec![0u8; entries * DIR_ENTRY];
            read_at(dev, offset, &mut raw).map_err(|e| format!("the root directory: {e}"))?;
            raw
        };
        Ok(parse_directory(&raw))
    }

    /// The clusters of the chain from `first` that hold its first `bytes`; with `exact`, a chain
    /// that ends before them is an error (a file), else it may (a directory ends where it ends).
    fn chain<D: Read + Seek>(&self, dev: &mut D, first: u32, bytes: u64, exact: bool) -> Result<Vec<u32>, String> {
        let needed = bytes.div_ceil(self.bytes_per_cluster);
        let mut chain = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cluster = first;
        while (chain.len() as u64) < needed {
            if cluster < 2 || cluster > self.max_cluster {
                return Err(format!("cluster {cluster} is outside the volume's clusters 2..={}", self.max_cluster));
            }
            if !seen.insert(cluster) {
                return Err(format!("the cluster chain from {first} loops back to cluster {cluster}"));
            }
            chain.push(cluster);
            match self.next(dev, cluster)? {
                Some(next) => cluster = next,
                None => break,
            }
        }
        if exact && (chain.len() as u64) < needed {
            return Err(format!("the cluster chain from {first} ends before {bytes} bytes"));
        }
        Ok(chain)
    }

    /// The FAT entry of `cluster`: the next cluster, or None at the chain's end.
    fn next<D: Read + Seek>(&self, dev: &mut D, cluster: u32) -> Result<Option<u32>, String> {
        let n = u64::from(cluster);
        let (offset, width) = match self.fat_type {
            FatType::Fat12 => (n + n / 2, 2),
            FatType::Fat16 => (n * 2, 2),
            FatType::Fat32 => (n * 4, 4),
        };
        if offset + width > self.fat_bytes {
            return Err(format!("cluster {cluster}'s FAT entry lies past the FAT"));
        }
        let mut buf = [0u8; 4];
        read_at(dev, self.fat_start + offset, &mut buf[..width as usize]).map_err(|e| format!("the FAT: {e}"))?;
        let raw = u32::from_le_bytes(buf);
        let (value, end) = match self.fat_type {
            FatType::Fat12 => (if cluster % 2 == 0 { raw & 0xFFF } else { raw >> 4 }, 0xFF8),
            FatType::Fat16 => (raw, 0xFFF8),
            FatType::Fat32 => (raw & 0x0FFF_FFFF, 0x0FFF_FFF8),
        };
        if value >= end {
            Ok(None)
        } else {
            Ok(Some(value))
        }
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start + u64::from(cluster - 2) * self.bytes_per_cluster
    }

    fn read_file<D: Read + Seek>(&self, dev: &mut D, entry: &Entry) -> Result<Vec<u8>, String> {
        let size = u64::from(entry.size);
        let mut out = Vec::with_capacity(entry.size as usize);
        if size == 0 {
            return Ok(out);
        }
        // Before FAT32 the high half of the first cluster is not part of it.
        let first = if self.fat_type == FatType::Fat32 { entry.first_cluster } else { entry.first_cluster & 0xFFFF };
        for cluster in self.chain(dev, first, size, true)? {
            let want = (size - out.len() as u64).min(self.bytes_per_cluster) as usize;
            let start = out.len();
            out.resize(start + want, 0);
            read_at(dev, self.cluster_offset(cluster), &mut out[start..])?;
        }
        Ok(out)
    }
}

/// The files of a directory's raw entries: long names where their checksum matches the short entry
/// they precede, else the short name.
fn parse_directory(raw: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    // Long-name pieces by sequence number (1-based), and the checksum they carry.
    let mut long: Vec<Option<Vec<u16>>> = Vec::new();
    let mut long_checksum = None;
    for e in raw.chunks_exact(DIR_ENTRY) {
        match e[0] {
            0 => break,
            DELETED => {
                long.clear();
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LONG_NAME {
            let seq = usize::from(e[0] & 0x1F);
            if e[0] & LAST_LONG_ENTRY != 0 {
                long = vec![None; seq];
                long_checksum = Some(e[13]);
            }
            if seq == 0 || seq > long.len() || long_checksum != Some(e[13]) {
                long.clear();
                continue;
            }
            let units = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30].map(|i| u16::from_le_bytes([e[i], e[i + 1]]));
            long[seq - 1] = Some(units.to_vec());
            continue;
        }
        let pieces = std::mem::take(&mut long);
        if attr & (ATTR_VOLUME_ID | ATTR_DIRECTORY) != 0 {
            continue;
        }
        let short: &[u8; 11] = e[0..11].try_into().expect("an entry is 32 bytes");
        let name = long_name(&pieces, long_checksum == Some(short_checksum(short)))
            .unwrap_or_else(|| short_name(short, e[12]));
        entries.push(Entry {
            name,
            first_cluster: (u32::from(u16::from_le_bytes([e[20], e[21]])) << 16)
                | u32::from(u16::from_le_bytes([e[26], e[27]])),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
        });
    }
    entries
}

/// The long name from its pieces, when every piece is there and the checksum matched.
fn long_name(pieces: &[Option<Vec<u16>>], checksum_matches: bool) -> Option<String> {
    if pieces.is_empty() || !checksum_matches {
        return None;
    }
    let mut units = Vec::new();
    for piece in pieces {
        units.extend(piece.as_ref()?);
    }
    let len = units.iter().position(|u| *u == 0).unwrap_or(units.len());
    String::from_utf16(&units[..len]).ok()
}

/// `NAME.EXT` from an 8.3 entry, lower-cased where Windows NT's flags (byte 12) say so.
fn short_name(short: &[u8; 11], case_flags: u8) -> String {
    let part = |bytes: &[u8], lower: bool| {
        let text = String::from_utf8_lossy(bytes).trim_end().to_string();
        if lower {
            text.to_ascii_lowercase()
        } else {
            text
        }
    };
    let base = part(&short[..8], case_flags & 0x08 != 0);
    let ext = part(&short[8..], case_flags & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// The checksum a long name's entries carry of the short name they belong to.
fn short_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, buf: &mut [u8]) -> Result<(), String> {
    dev.seek(SeekFrom::Start(offset)).map_err(|e| format!("seeking to byte {offset}: {e}"))?;
    dev.read_exact(buf).map_err(|e| format!("reading {} bytes at byte {offset}: {e}", buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// A volume formatted and filled by the fatfs crate (the one the builder makes CIDATA volumes
    /// and the ESP with).
    fn volume(fat_type: fatfs::FatType, bytes: usize, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut image = Cursor::new(vec![0u8; bytes]);
        let options = fatfs::FormatVolumeOptions::new().fat_type(fat_type).volume_label(*b"CIDATA     ");
        fatfs::format_volume(&mut image, options).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new()).unwrap();
            for (name, data) in files {
                fs.root_dir().create_file(name).unwrap().write_all(data).unwrap();
            }
        }
        image.into_inner()
    }

    fn read(image: &[u8], names: &[&str]) -> Result<Vec<Option<Vec<u8>>>, String> {
        read_root_files(&mut Cursor::new(image), names, 1 << 20)
    }

    #[test]
    fn reads_long_named_files_from_fat12_fat16_and_fat32() {
        let user_data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for (fat_type, bytes) in
            [(fatfs::FatType::Fat12, 2 << 20), (fatfs::FatType::Fat16, 16 << 20), (fatfs::FatType::Fat32, 34 << 20)]
        {
            let image = volume(fat_type, bytes, &[("user-data", &user_data), ("meta-data", b"local-hostname: w1\n")]);
            let files = read(&image, &["user-data", "META-DATA", "vendor-data"]).unwrap();
            assert_eq!(files[0].as_deref(), Some(&user_data[..]), "{fat_type:?}");
            assert_eq!(files[1].as_deref(), Some(&b"local-hostname: w1\n"[..]), "{fat_type:?}");
            assert_eq!(files[2], None, "{fat_type:?}");
        }
    }

    #[test]
    fn a_fat32_root_directory_over_several_clusters_is_followed() {
        let names: Vec<String> = (0..200).map(|i| format!("a-long-file-name-number-{i}")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        files.push(("user-data", b"machine: {}\n"));
        let image = volume(fatfs::FatType::Fat32, 34 << 20, &files);
        assert_eq!(read(&image, &["user-data"]).unwrap()[0].as_deref(), Some(&b"machine: {}\n"[..]));

        // The same directory, its limit lowered below its length: an error, not a shorter list.
        let mut boot = [0u8; 512];
        boot.copy_from_slice(&image[..512]);
        let volume = Volume::parse(&boot).unwrap();
        let mut dev = Cursor::new(&image);
        let err = volume.root_entries(&mut dev, 64).unwrap_err();
        assert_eq!(err, "the root directory goes on past 64 entries");
        // A limit the directory fits in reads it whole.
        let entries = volume.root_entries(&mut dev, 4096).unwrap();
        assert_eq!(entries.len(), 201);
    }

    #[test]
    fn damaged_volumes_are_errors_not_panics_or_loops() {
        let image = volume(fatfs::FatType::Fat16, 16 << 20, &[("user-data", &[7u8; 5000])]);
        let mut no_signature = image.clone();
        no_signature[510] = 0;
        assert!(read(&no_signature, &["user-data"]).unwrap_err().contains("signature"));
        let mut zero_cluster = image.clone();
        zero_cluster[13] = 3;
        assert!(read(&zero_cluster, &["user-data"]).unwrap_err().contains("sectors per cluster is 3"));
        // Truncated: the boot sector promises more than there is.
        assert!(read(&image[..600], &["user-data"]).unwrap_err().contains("root directory"));

        let entry =
            parse_directory(&image[root_offset(&image)..][..4096]).into_iter().find(|e| e.name == "user-data").unwrap();
        let fat = u64::from(u16::from_le_bytes([image[14], image[15]])) as usize * 512;
        // The file's first cluster points back at itself: a loop.
        let mut looped = image.clone();
        let at = fat + entry.first_cluster as usize * 2;
        looped[at..at + 2].copy_from_slice(&(entry.first_cluster as u16).to_le_bytes());
        assert!(read(&looped, &["user-data"]).unwrap_err().contains("loops back"));
        // Ends early: the second cluster is marked the last one.
        let mut short = image.clone();
        short[at..at + 2].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert!(read(&short, &["user-data"]).unwrap_err().contains("ends before 5000 bytes"));
        // Points outside the volume.
        let mut outside = image.clone();
        outside[at..at + 2].copy_from_slice(&0xFFF0u16.to_le_bytes());
        assert!(read(&outside, &["user-data"]).unwrap_err().contains("outside the volume"));

        assert!(read_root_files(&mut Cursor::new(&image), &["user-data"], 100).unwrap_err().contains("over 100 bytes"));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_of_the_metadata_is_handled() {
        let image = volume(fatfs::FatType::Fat12, 1 << 20, &[("user-data", &[1u8; 3000]), ("meta-data", b"x")]);
        for len in (0..image.len()).step_by(509) {
            let _ = read(&image[..len], &["user-data", "meta-data"]);
        }
        let metadata = root_offset(&image) + 512;
        for i in 0..metadata {
            for value in [0u8, 0xFF, image[i] ^ 0x80] {
                let mut damaged = image.clone();
                damaged[i] = value;
                let _ = read(&damaged, &["user-data", "meta-data"]);
            }
        }
    }

    #[test]
    fn labels_are_read_from_fat12_16_and_fat32_boot_sectors() {
        let mut fat16 = [0u8; 512];
        fat16[22] = 1;
        fat16[38] = 0x29;
        fat16[43..54].copy_from_slice(b"CIDATA     ");
        fat16[510] = 0x55;
        fat16[511] = 0xAA;
        assert_eq!(label(&fat16).as_deref(), Some("CIDATA"));
        let mut fat32 = [0u8; 512];
        fat32[66] = 0x29;
        fat32[71..82].copy_from_slice(b"cidata     ");
        fat32[510..].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(label(&fat32).as_deref(), Some("cidata"));
        fat32[510] = 0;
        assert_eq!(label(&fat32), None, "no boot signature, no FAT");
    }

    #[test]
    fn short_names_and_a_stale_long_name() {
        let mut raw = vec![0u8; 3 * DIR_ENTRY];
        // A long-name piece whose checksum belongs to another short name.
        raw[0] = LAST_LONG_ENTRY | 1;
        raw[11] = ATTR_LONG_NAME;
        raw[13] = short_checksum(b"OTHER   TXT").wrapping_add(1);
        raw[1] = b'z';
        raw[32..43].copy_from_slice(b"USER-D~1   ");
        raw[32 + 12] = 0x08;
        raw[64..75].copy_from_slice(b"README  TXT");
        let names: Vec<String> = parse_directory(&raw).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["user-d~1", "README.TXT"]);
    }

    fn root_offset(image: &[u8]) -> usize {
        let u16_at = |i: usize| usize::from(u16::from_le_bytes([image[i], image[i + 1]]));
        (u16_at(14) + usize::from(image[16]) * u16_at(22)) * u16_at(11)
    }
}

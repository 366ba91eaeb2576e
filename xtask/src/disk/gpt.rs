//! GUID Partition Table disk images: protective MBR, primary header and 128 entries at the front,
//! partitions aligned to 1 MiB, backup entries and header at the end, 512-byte sectors. Partition
//! contents are copied in with all-zero blocks skipped, so the image stays sparse where it is empty.

use crate::util::fs::read_full;
use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries, which suits every flash and RAID geometry in use.
pub const ALIGNMENT_SECTORS: u64 = (1 << 20) / SECTOR;
const ENTRY_COUNT: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const ENTRY_ARRAY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
const HEADER_SIZE: u32 = 92;
/// UTF-16 code units in a partition name field.
const NAME_UNITS: usize = 36;

/// EFI System Partition.
pub const ESP_TYPE: Guid = Guid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
/// Discoverable Partitions Specification: root partition for x86-64.
#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
pub const ROOT_X86_64_TYPE: Guid = Guid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);

/// A GUID, held in the byte order of its text form ("c12a7328-..." is c1 2a 73 28 ...). GPT stores the
/// first three fields little-endian; [`Guid::to_gpt_bytes`] does that conversion.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guid([u8; 16]);

impl Guid {
    pub const fn from_u128(value: u128) -> Guid {
        Guid(value.to_be_bytes())
    }

    /// Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (either case).
    pub fn parse(text: &str) -> Result<Guid> {
        let bad = || format!("invalid GUID {text:?}: expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] || !text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            bail!(bad());
        }
        let hex: String = groups.concat();
        let value = u128::from_str_radix(&hex, 16).with_context(bad)?;
        Ok(Guid::from_u128(value))
    }

    /// A stable GUID for `seed`: the first 16 bytes of SHA-256(seed), stamped as an RFC 9562 version 8
    /// ("custom") UUID so it is well-formed yet plainly not random.
    pub fn derived(seed: &[u8]) -> Guid {
        let digest = Sha256::digest(seed);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Guid(bytes)
    }

    /// On-disk (mixed-endian) encoding used in GPT headers and entries.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let b = self.0;
        [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
    }

    #[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
    pub fn from_gpt_bytes(b: [u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(b).to_gpt_bytes())
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl FromStr for Guid {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Guid> {
        Guid::parse(s)
    }
}

/// How big a partition is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionSize {
    /// At least this many bytes (rounded up to whole sectors).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
    Bytes(u64),
    /// Everything up to the backup table, rounded down to whole MiB; only for the last partition.
    Rest,
}

/// What goes into a partition; the rest of it reads as zeros.
#[derive(Clone, Copy, Debug)]
pub enum PartitionContents<'a> {
    Empty,
    File(&'a Path),
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
    Bytes(&'a [u8]),
}

#[derive(Clone, Debug)]
pub struct PartitionSpec<'a> {
    /// Stored as UTF-16LE, at most 36 code units.
    pub name: &'a str,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub size: PartitionSize,
    /// GPT attribute bits (0 for none).
    pub attributes: u64,
    pub contents: PartitionContents<'a>,
}

/// Where a partition ended up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLayout {
    /// 1-based, as in /dev/vda1.
    pub number: u32,
    pub name: String,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive, as GPT stores it.
    pub last_lba: u64,
}

impl PartitionLayout {
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// Computes where each partition goes on a disk of `disk_size_bytes`, without writing anything.
pub fn plan_layout(disk_size_bytes: u64, partitions: &[PartitionSpec]) -> Result<Vec<PartitionLayout>> {
    ensure!(
        disk_size_bytes.is_multiple_of(SECTOR),
        "disk size {disk_size_bytes} is not a multiple of the {SECTOR}-byte sector"
    );
    ensure!(partitions.len() <= ENTRY_COUNT as usize, "at most {ENTRY_COUNT} partitions fit the table");
    let total_sectors = disk_size_bytes / SECTOR;
    // Protective MBR, two headers, two entry arrays, and one aligned MiB for the first partition.
    let minimum = 2 * ALIGNMENT_SECTORS;
    ensure!(total_sectors >= minimum, "disk of {disk_size_bytes} bytes is too small for a GPT with partitions");
    let last_usable = total_sectors - 2 - ENTRY_ARRAY_SECTORS;

    let mut layout = Vec::with_capacity(partitions.len());
    let mut next_free = 2 + ENTRY_ARRAY_SECTORS;
    for (index, spec) in partitions.iter().enumerate() {
        let number = index as u32 + 1;
        let what = || format!("partition {number} ({:?})", spec.name);
        encode_name(spec.name).with_context(what)?;
        let first_lba = next_free.div_ceil(ALIGNMENT_SECTORS) * ALIGNMENT_SECTORS;
        let last_lba = match spec.size {
            PartitionSize::Bytes(0) => bail!("{}: size is zero", what()),
            PartitionSize::Bytes(bytes) => first_lba
                .checked_add(bytes.div_ceil(SECTOR) - 1)
                .with_context(|| format!("{}: size overflows", what()))?,
            PartitionSize::Rest => {
                ensure!(index + 1 == partitions.len(), "{}: only the last partition can take the rest", what());
                ((last_usable + 1) / ALIGNMENT_SECTORS * ALIGNMENT_SECTORS).saturating_sub(1)
            }
        };
        if first_lba > last_usable || last_lba > last_usable || last_lba < first_lba {
            bail!(
                "{} does not fit: it would span sectors {first_lba}..={last_lba}, the disk's usable sectors end at \
                 {last_usable} ({disk_size_bytes} bytes in all)",
                what()
            );
        }
        let content_len = match spec.contents {
            PartitionContents::Empty => 0,
            PartitionContents::Bytes(bytes) => bytes.len() as u64,
            PartitionContents::File(path) => {
                std::fs::metadata(path).with_context(|| format!("{}: could not stat {}", what(), path.display()))?.len()
            }
        };
        let size = (last_lba - first_lba + 1) * SECTOR;
        ensure!(content_len <= size, "{}: contents of {content_len} bytes exceed its {size} bytes", what());
        layout.push(PartitionLayout {
            number,
            name: spec.name.to_string(),
            type_guid: spec.type_guid,
            unique_guid: spec.unique_guid,
            first_lba,
            last_lba,
        });
        next_free = last_lba + 1;
    }
    Ok(layout)
}

/// Writes a complete GPT disk image to `path` (replacing it) and returns the partition layout.
pub fn write_gpt_disk(
    path: &Path,
    disk_size_bytes: u64,
    disk_guid: Guid,
    partitions: &[PartitionSpec],
) -> Result<Vec<PartitionLayout>> {
    let layout = plan_layout(disk_size_bytes, partitions)?;
    let total_sectors = disk_size_bytes / SECTOR;
    let last_lba = total_sectors - 1;
    let last_usable = total_sectors - 2 - ENTRY_ARRAY_SECTORS;

    let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (part, spec) in layout.iter().zip(partitions) {
        let entry = &mut entries[(part.number as usize - 1) * ENTRY_SIZE as usize..][..ENTRY_SIZE as usize];
        entry[0..16].copy_from_slice(&part.type_guid.to_gpt_bytes());
        entry[16..32].copy_from_slice(&part.unique_guid.to_gpt_bytes());
        entry[32..40].copy_from_slice(&part.first_lba.to_le_bytes());
        entry[40..48].copy_from_slice(&part.last_lba.to_le_bytes());
        entry[48..56].copy_from_slice(&spec.attributes.to_le_bytes());
        entry[56..128].copy_from_slice(&encode_name(spec.name)?);
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |my_lba: u64, alternate_lba: u64, entries_lba: u64| {
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_ARRAY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_gpt_bytes());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let backup_entries_lba = last_lba - ENTRY_ARRAY_SECTORS;

    let mut disk = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let result = (|| -> Result<()> {
        disk.set_len(disk_size_bytes)?;
        write_at(&mut disk, 0, &protective_mbr(total_sectors))?;
        write_at(&mut disk, SECTOR, &header(1, last_lba, 2))?;
        write_at(&mut disk, 2 * SECTOR, &entries)?;
        for (part, spec) in layout.iter().zip(partitions) {
            copy_contents(&mut disk, part, spec.contents)
                .with_context(|| format!("writing the contents of partition {}", part.number))?;
        }
        write_at(&mut disk, backup_entries_lba * SECTOR, &entries)?;
        write_at(&mut disk, last_lba * SECTOR, &header(last_lba, 1, backup_entries_lba))?;
        Ok(())
    })();
    result.with_context(|| format!("writing the disk image {}", path.display()))?;
    Ok(layout)
}

fn protective_mbr(total_sectors: u64) -> [u8; SECTOR as usize] {
    let mut mbr = [0u8; SECTOR as usize];
    let entry = &mut mbr[446..462];
    // Start CHS 0/0/2, type 0xEE, end CHS all-ones: what UEFI specifies for a protective MBR.
    entry[0..8].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&1u32.to_le_bytes());
    let covered = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    entry[12..16].copy_from_slice(&covered.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

fn encode_name(name: &str) -> Result<[u8; NAME_UNITS * 2]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    ensure!(units.len() <= NAME_UNITS, "partition name {name:?} is longer than {NAME_UNITS} UTF-16 units");
    ensure!(!units.contains(&0), "partition name {name:?} contains NUL");
    let mut out = [0u8; NAME_UNITS * 2];
    for (i, unit) in units.iter().enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&unit.to_le_bytes());
    }
    Ok(out)
}

fn write_at(disk: &mut File, offset: u64, bytes: &[u8]) -> Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    disk.write_all(bytes)?;
    Ok(())
}

/// Copies contents into a freshly zero-extended image, seeking over all-zero blocks to keep it sparse.
fn copy_contents(disk: &mut File, part: &PartitionLayout, contents: PartitionContents) -> Result<()> {
    let mut source: Box<dyn Read> = match contents {
        PartitionContents::Empty => return Ok(()),
        PartitionContents::Bytes(bytes) => Box::new(bytes),
        PartitionContents::File(path) => {
            Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
        }
    };
    const BLOCK: usize = 1 << 20;
    let mut buffer = vec![0u8; BLOCK];
    let zeros = vec![0u8; BLOCK];
    let mut offset = part.offset_bytes();
    let end = offset + part.size_bytes();
    loop {
        let filled = read_full(&mut source, &mut buffer).context("reading partition contents")?;
        if filled == 0 {
            return Ok(());
        }
        // The size was checked when planning; a file that grew since must not spill into the next partition.
        ensure!(offset + filled as u64 <= end, "contents grew beyond the partition while being copied");
        let block = &buffer[..filled];
        // Slice comparison is a memcmp, fast even in an unoptimised build.
        if block != &zeros[..filled] {
            write_at(disk, offset, block)?;
        }
        offset += filled as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::cmd::cmd;

    #[test]
    fn guid_text_and_disk_encodings() {
        let esp = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(esp, ESP_TYPE);
        assert_eq!(esp.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            esp.to_gpt_bytes(),
            [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]
        );
        assert_eq!(Guid::from_gpt_bytes(esp.to_gpt_bytes()), esp);
        for bad in [
            "",
            "c12a7328f81f11d2ba4b00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "+12a7328-f81f-11d2-ba4b-00a0c93ec93b",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn derived_guids_are_stable_version_8() {
        let a = Guid::derived(b"node disk");
        assert_eq!(a, Guid::derived(b"node disk"));
        assert_ne!(a, Guid::derived(b"node disk 2"));
        let text = a.to_string();
        assert_eq!(&text[14..15], "8", "{text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        assert_eq!(Guid::parse(&text).unwrap(), a);
    }

    #[test]
    fn layout_aligns_and_refuses_what_does_not_fit() {
        let part = |size| PartitionSpec {
            name: "p",
            type_guid: ESP_TYPE,
            unique_guid: Guid::derived(b"p"),
            size,
            attributes: 0,
            contents: PartitionContents::Empty,
        };
        let layout = plan_layout(64 << 20, &[part(PartitionSize::Bytes(1000)), part(PartitionSize::Rest)]).unwrap();
        assert_eq!(layout[0].first_lba, 2048);
        assert_eq!(layout[0].size_bytes(), 1024);
        assert_eq!(layout[1].first_lba, 4096);
        assert_eq!((layout[1].last_lba + 1) % ALIGNMENT_SECTORS, 0);
        assert!(plan_layout(64 << 20, &[part(PartitionSize::Bytes(64 << 20))]).is_err());
        assert!(plan_layout(64 << 20, &[part(PartitionSize::Rest), part(PartitionSize::Bytes(1))]).is_err());
        assert!(plan_layout(1000, &[]).is_err());
        let long =
            PartitionSpec { name: "a name that is much too long for the gpt entry", ..part(PartitionSize::Rest) };
        assert!(plan_layout(64 << 20, &[long]).is_err());
        let data = vec![1u8; 2 << 20];
        let over = PartitionSpec { contents: PartitionContents::Bytes(&data), ..part(PartitionSize::Bytes(1 << 20)) };
        assert!(plan_layout(64 << 20, &[over]).is_err());
    }

    #[test]
    fn sgdisk_accepts_the_disk() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let esp_data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8 + 1).collect();
        let root_file = dir.path().join("root.img");
        std::fs::write(&root_file, b"ROOTDATA").unwrap();
        let disk = dir.path().join("disk.raw");
        let esp_guid = Guid::derived(b"esp");
        let root_guid = Guid::derived(b"root");
        let specs = [
            PartitionSpec {
                name: "EFI System",
                type_guid: ESP_TYPE,
                unique_guid: esp_guid,
                size: PartitionSize::Bytes(8 << 20),
                attributes: 0,
                contents: PartitionContents::Bytes(&esp_data),
            },
            PartitionSpec {
                name: "root-ä",
                type_guid: ROOT_X86_64_TYPE,
                unique_guid: root_guid,
                size: PartitionSize::Rest,
                attributes: 0,
                contents: PartitionContents::File(&root_file),
            },
        ];
        let layout = write_gpt_disk(&disk, 32 << 20, Guid::derived(b"disk"), &specs).unwrap();
        let image = std::fs::read(&disk).unwrap();
        assert_eq!(image.len(), 32 << 20);
        let esp_at = layout[0].offset_bytes() as usize;
        assert_eq!(&image[esp_at..esp_at + esp_data.len()], &esp_data[..]);
        let root_at = layout[1].offset_bytes() as usize;
        assert_eq!(&image[root_at..root_at + 8], b"ROOTDATA");

        let first = std::fs::read(&disk).unwrap();
        write_gpt_disk(&disk, 32 << 20, Guid::derived(b"disk"), &specs).unwrap();
        assert_eq!(std::fs::read(&disk).unwrap(), first, "two writes give the same bytes");

        let verify = cmd("sgdisk").arg("-v").arg(&disk).read().unwrap();
        assert!(verify.contains("No problems found"), "{verify}");
        let print = cmd("sgdisk").arg("-p").arg(&disk).read().unwrap();
        assert!(print.contains("EFI System") && print.contains("root-ä"), "{print}");
        assert!(print.contains(&Guid::derived(b"disk").to_string().to_uppercase()), "{print}");
        let info = cmd("sgdisk").arg("-i").arg("1").arg(&disk).read().unwrap();
        assert!(info.contains(&esp_guid.to_string().to_uppercase()), "{info}");
        assert!(info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), "{info}");
        assert!(info.contains(&format!("First sector: {} ", layout[0].first_lba)), "{info}");
        let info = cmd("sgdisk").arg("-i").arg("2").arg(&disk).read().unwrap();
        assert!(info.contains(&root_guid.to_string().to_uppercase()), "{info}");
        assert!(info.contains(&format!("Last sector: {} ", layout[1].last_lba)), "{info}");
    }
}

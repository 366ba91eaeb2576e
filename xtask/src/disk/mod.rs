//! The boot disk: a GPT disk whose one partition is a FAT32 EFI System Partition holding the UKI at
//! the removable-media boot path (EFI/BOOT/BOOT{X64,AA64}.EFI), so any UEFI firmware boots it without
//! boot entries; and the same disk as qcow2. GUIDs and the volume id are derived from the image's
//! name, version, arch and board, so two builds write the same bytes.

pub mod esp;
pub mod gpt;
pub mod vars;

use crate::spec::Board;
use crate::util::cmd::cmd;
use crate::util::host::{req, Requirement};
use anyhow::{Context, Result};
use gpt::{Guid, PartitionContents, PartitionSize, PartitionSpec};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

/// qcow2 creation options, spelled out so another qemu-img version's defaults cannot change the file.
pub const QCOW2_OPTIONS: &str = "compat=1.1,cluster_size=65536,refcount_bits=16,lazy_refcounts=off,\
                                 extended_l2=off,compression_type=zlib,preallocation=off";

pub fn requirements() -> Vec<Requirement> {
    vec![req("qemu-img", "qemu-utils", "writing qcow2 disks")]
}

/// What a disk is of: its GUIDs and volume id are derived from the image's name and version.
#[derive(Clone, Copy, Debug)]
pub struct DiskName<'a> {
    pub image: &'a str,
    pub version: &'a str,
}

/// Writes the raw disk `raw` holding `uki`; the ESP is made in `work` first.
pub fn write_raw(name: DiskName, board: &Board, epoch: i64, uki: &[u8], raw: &Path, work: &Path) -> Result<()> {
    let arch = board.arch();
    let seed = format!("{}/{}/{}/{}", name.image, name.version, arch, board.name);
    let esp_guid = Guid::derived(format!("{seed}/esp").as_bytes());
    let disk_guid = Guid::derived(format!("{seed}/disk").as_bytes());
    let disk_size = board.file.disk.size_mib * 1024 * 1024;
    let esp_spec = |contents| PartitionSpec {
        name: "EFI System Partition",
        type_guid: gpt::ESP_TYPE,
        unique_guid: esp_guid,
        size: PartitionSize::Rest,
        attributes: 0,
        contents,
    };
    let layout = gpt::plan_layout(disk_size, &[esp_spec(PartitionContents::Empty)])
        .with_context(|| format!("{}: field `disk.size-mib`", board.path.display()))?;
    let esp_size = layout[0].size_bytes();
    let esp_image = work.join("esp.img");
    let boot_path = format!("EFI/BOOT/{}", arch.efi_boot_file());
    let volume_id = u32::from_le_bytes(Sha256::digest(seed.as_bytes())[..4].try_into()?);
    esp::build_esp(&esp_image, esp_size, &[(&boot_path, uki)], epoch, volume_id, "EFI").with_context(|| {
        format!(
            "the UKI ({} MB) must fit the ESP; see {} field `disk.size-mib`",
            uki.len() / 1_000_000,
            board.path.display()
        )
    })?;
    gpt::write_gpt_disk(raw, disk_size, disk_guid, &[esp_spec(PartitionContents::File(&esp_image))])?;
    fs::remove_file(&esp_image).with_context(|| format!("removing {}", esp_image.display()))
}

/// zstd level of raw.zst. The disk is mostly the UKI's already-compressed squashfs layers, so more
/// effort buys next to nothing (measured on the amd64 disk: level 3 0.4 s, 103.2 MB; level 12 3.6 s,
/// 102.9 MB; level 19 44 s, 102.3 MB) and would cost every build its time.
const RAW_ZST_LEVEL: i32 = 3;

/// raw.zst's window: 128 MiB, with long-distance matching. The squashfs layers compress each file
/// alike, so the libraries every extension carries (glibc and others) are the same bytes tens of MB
/// apart, which a default window (8 MiB at level 3) cannot see. 2^27 is also the most `zstd -d`,
/// `unzstd` and zstd's libraries accept without being told to use more memory.
const RAW_ZST_WINDOW_LOG: u32 = 27;

/// Compresses the raw disk to `raw_zst` with zstd (one frame, single-threaded, so the bytes depend
/// only on the input, the level and the zstd library version), with its size and a checksum in the
/// frame so `zstd -d` and `unzstd` check what they unpack.
pub fn write_raw_zst(raw: &Path, raw_zst: &Path) -> Result<()> {
    let input = fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let size = input.metadata().with_context(|| format!("reading the metadata of {}", raw.display()))?.len();
    let output = fs::File::create(raw_zst).with_context(|| format!("creating {}", raw_zst.display()))?;
    let mut encoder = zstd::stream::Encoder::new(std::io::BufWriter::new(output), RAW_ZST_LEVEL)
        .context("starting the zstd encoder")?;
    encoder.include_checksum(true).context("asking zstd for a checksum")?;
    encoder.window_log(RAW_ZST_WINDOW_LOG).context("setting zstd's window")?;
    encoder.long_distance_matching(true).context("asking zstd for long-distance matching")?;
    encoder.set_pledged_src_size(Some(size)).context("telling zstd the disk's size")?;
    std::io::copy(&mut std::io::BufReader::new(input), &mut encoder)
        .with_context(|| format!("compressing {} into {}", raw.display(), raw_zst.display()))?;
    let mut writer = encoder.finish().with_context(|| format!("finishing {}", raw_zst.display()))?;
    std::io::Write::flush(&mut writer).with_context(|| format!("writing {}", raw_zst.display()))?;
    crate::util::fs::set_readable(raw_zst)
}

/// Converts the raw disk to qcow2. In-order writes (no -W) keep the output deterministic; the options
/// are spelled out so a qemu-img with other defaults still writes the same file.
pub fn write_qcow2(raw: &Path, qcow2: &Path) -> Result<()> {
    cmd("qemu-img").args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", QCOW2_OPTIONS]).arg(raw).arg(qcow2).run()
}

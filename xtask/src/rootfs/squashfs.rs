//! Squashfs layers, made by mksquashfs: backhand (pure Rust) compresses single-threaded and is several
//! times slower on trees of this size (its issue #279: 83 s against mksquashfs's 15.7 s), while
//! mksquashfs is reproducible with fixed times and root ownership forced, which is all the image needs.

use crate::util::cmd::cmd;
use crate::util::host::{req, Requirement};
use anyhow::{Context, Result};
use std::path::Path;

/// zstd level 9 with 1 MiB blocks: every boot reads the layers whole (firmware, stub, kernel), so each
/// MB left out is time saved on every node, but a warm build must stay within bench's 15 s. Measured
/// on the amd64 root (117 MB of files): level 3 with 128 KiB blocks 55.5 MB in 0.5 s, level 9 with
/// 1 MiB 51.5 MB in 2.6 s, level 15 50.6 MB in 7.7 s, level 19 47.5 MB in 23 s (warm builds of
/// 47-67 s). Decompression speed does not depend on the level.
///
/// The inode and directory tables stay uncompressed (`-noI`): 73 KB more on the amd64 root, but every
/// lookup on the node reads them through the kernel's cache of eight metadata blocks, and each miss on
/// a compressed table is a block to decompress. The contents scan's cold walk of the layers took 595 ms
/// of CPU under TCG with them compressed, 362-431 ms without.
const ZSTD_LEVEL: &str = "9";
const BLOCK_SIZE: &str = "1048576";

pub fn requirements() -> Vec<Requirement> {
    vec![req("mksquashfs", "squashfs-tools", "making squashfs layers")]
}

/// Packs `tree` into the squashfs file `out`, every entry owned by root with mtime `epoch`.
pub fn make(tree: &Path, out: &Path, epoch: i64) -> Result<()> {
    let epoch = epoch.to_string();
    cmd("mksquashfs")
        .arg(tree)
        .arg(out)
        .args([
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "zstd",
            "-Xcompression-level",
            ZSTD_LEVEL,
            "-b",
            BLOCK_SIZE,
            "-noI",
        ])
        .args(["-all-root", "-no-xattrs", "-mkfs-time", &epoch, "-all-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH beside -mkfs-time/-all-time ("can't be used at the same
        // time"), and 4.6 changed what the variable does; the explicit flags say the same, on every version.
        .env_remove("SOURCE_DATE_EPOCH")
        .run()
        .with_context(|| format!("making squashfs {} from {}", out.display(), tree.display()))
}

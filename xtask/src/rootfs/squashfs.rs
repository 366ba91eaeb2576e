//! Squashfs layers, made by mksquashfs: backhand (pure Rust) compresses single-threaded and is several
//! times slower on trees of this size (its issue #279: 83 s against mksquashfs's 15.7 s), while
//! mksquashfs is reproducible with fixed times and root ownership forced, which is all the image needs.

use crate::util::cmd::cmd;
use crate::util::host::{req, Requirement};
use anyhow::{Context, Result};
use std::path::Path;

/// zstd at its highest level with 1 MiB blocks: every boot reads the layers whole (firmware, stub,
/// kernel and loop device), so each MB left out is time saved on every node, while the build pays once
/// per change (the stage cache keeps the result). Measured on the amd64 root (123 MB of files):
/// level 3 with 128 KiB blocks 55.5 MB in 0.5 s, level 15 with 256 KiB 49.4 MB in 11 s, level 19 with
/// 1 MiB 47.5 MB in 23 s; decompression speed does not depend on the level.
const ZSTD_LEVEL: &str = "19";
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
        ])
        .args(["-all-root", "-no-xattrs", "-mkfs-time", &epoch, "-all-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH beside -mkfs-time/-all-time ("can't be used at the same
        // time"), and 4.6 changed what the variable does; the explicit flags say the same, on every version.
        .env_remove("SOURCE_DATE_EPOCH")
        .run()
        .with_context(|| format!("making squashfs {} from {}", out.display(), tree.display()))
}

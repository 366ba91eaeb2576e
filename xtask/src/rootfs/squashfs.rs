//! Squashfs layers, made by mksquashfs: backhand (pure Rust) compresses single-threaded and is several
//! times slower on trees of this size (its issue #279: 83 s against mksquashfs's 15.7 s), while
//! mksquashfs is reproducible with fixed times and root ownership forced, which is all the image needs.

use crate::util::cmd::cmd;
use crate::util::host::{req, Requirement};
use anyhow::{Context, Result};
use std::path::Path;

/// zstd level: content, not level, decides the size (the node's packages: 80 MB at level 3 in 0.7 s,
/// 73 MB at level 19 in 40 s), while level decides the build time.
const ZSTD_LEVEL: &str = "3";

pub fn requirements() -> Vec<Requirement> {
    vec![req("mksquashfs", "squashfs-tools", "making squashfs layers")]
}

/// Packs `tree` into the squashfs file `out`, every entry owned by root with mtime `epoch`.
pub fn make(tree: &Path, out: &Path, epoch: i64) -> Result<()> {
    let epoch = epoch.to_string();
    cmd("mksquashfs")
        .arg(tree)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress", "-comp", "zstd", "-Xcompression-level", ZSTD_LEVEL])
        .args(["-all-root", "-no-xattrs", "-mkfs-time", &epoch, "-all-time", &epoch])
        // mksquashfs refuses SOURCE_DATE_EPOCH beside -mkfs-time/-all-time ("can't be used at the same
        // time"), and 4.6 changed what the variable does; the explicit flags say the same, on every version.
        .env_remove("SOURCE_DATE_EPOCH")
        .run()
        .with_context(|| format!("making squashfs {} from {}", out.display(), tree.display()))
}

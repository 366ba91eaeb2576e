//! Squashfs layers, made by mksquashfs: backhand compresses single-threaded and is several times slower
//! on trees of this size (shared/FACTS.md), while mksquashfs is reproducible with fixed times and
//! root ownership forced, which is all the image needs.

use crate::cmd::cmd;
use anyhow::{Context, Result};
use std::path::Path;

/// zstd level: content, not level, decides the size (FACTS.md measured 80 MB at 3 vs 73 MB at 19),
/// while level decides the build time.
const ZSTD_LEVEL: &str = "3";

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

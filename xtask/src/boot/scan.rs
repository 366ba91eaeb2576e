//! Looking for secrets where they must not be: a disk or memory image read once, in chunks, for a
//! set of byte strings (a marker and its fixed prefix), noting where each first occurs and how much
//! of the image is not zero (a positive sign the image holds anything at all).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The scratch disk boot-test attaches (sparse; the node formats it).
pub const SCRATCH_SIZE: u64 = 256 * 1024 * 1024;

/// What a scan found.
#[derive(Clone, Debug, Serialize)]
pub struct Findings {
    pub image: PathBuf,
    pub size_bytes: u64,
    /// Bytes that are not zero.
    pub nonzero_bytes: u64,
    /// For each needle, the offset of its first occurrence.
    pub first_hits: Vec<Option<u64>>,
}

/// Reads `image` once and looks for every needle (each non-empty), across chunk boundaries too.
pub fn scan(image: &Path, needles: &[&[u8]]) -> Result<Findings> {
    if needles.iter().any(|n| n.is_empty()) {
        bail!("cannot look for an empty byte string");
    }
    let mut file = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size_bytes = file.metadata().with_context(|| format!("reading {}", image.display()))?.len();
    let overlap = needles.iter().map(|n| n.len()).max().unwrap_or(1) - 1;
    let mut first_hits = vec![None; needles.len()];
    let mut nonzero_bytes = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    // Bytes kept from the previous chunk so a needle across the boundary is seen; `base` is the
    // image offset of buf[0].
    let mut carried = 0;
    let mut base = 0u64;
    loop {
        let n = file.read(&mut buf[carried..]).with_context(|| format!("reading {}", image.display()))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..carried + n];
        nonzero_bytes += chunk[carried..].iter().filter(|b| **b != 0).count() as u64;
        for (needle, hit) in needles.iter().zip(first_hits.iter_mut()) {
            if hit.is_none() {
                *hit = find(chunk, needle).map(|at| base + at as u64);
            }
        }
        let keep = overlap.min(chunk.len());
        let tail_start = chunk.len() - keep;
        buf.copy_within(tail_start..tail_start + keep, 0);
        base += tail_start as u64;
        carried = keep;
    }
    Ok(Findings { image: image.to_path_buf(), size_bytes, nonzero_bytes, first_hits })
}

/// The offset of the first `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = haystack[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if haystack[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A new sparse, all-zero disk image of `size` bytes at `path`, replacing any old one.
pub fn blank_disk(path: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size).with_context(|| format!("sizing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_needle_anywhere() {
        assert_eq!(find(b"xxNODEIMG-MARKER-1", b"NODEIMG-MARKER-1"), Some(2));
        assert_eq!(find(b"NNODEIMG-MARKER-", b"NODEIMG-MARKER-"), Some(1));
        assert_eq!(find(b"NODEIMG-MARKER", b"NODEIMG-MARKER-"), None);
        assert_eq!(find(b"", b"N"), None);
    }

    #[test]
    fn finds_needles_across_chunk_boundaries_with_their_offsets_and_counts_writes() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("scratch.raw");
        let marker = b"NODEIMG-MARKER-00112233445566778899aabbccddeeff";
        let mut data = vec![0u8; (8 << 20) + 4096];
        let at = (4 << 20) - 10; // straddles the first 4 MiB read
        data[at..at + marker.len()].copy_from_slice(marker);
        let late = (8 << 20) + 100; // in the third read
        data[late..late + 6].copy_from_slice(b"second");
        std::fs::write(&image, &data).unwrap();
        let found = scan(&image, &[marker, b"NODEIMG-MARKER-", b"second", b"absent"]).unwrap();
        assert_eq!(found.first_hits, [Some(at as u64), Some(at as u64), Some(late as u64), None]);
        assert_eq!(found.nonzero_bytes, (marker.len() + 6) as u64);
        assert_eq!(found.size_bytes, data.len() as u64);

        blank_disk(&image, 8192).unwrap();
        let found = scan(&image, &[marker]).unwrap();
        assert_eq!((found.nonzero_bytes, found.first_hits[0]), (0, None));
        assert!(scan(&image, &[b""]).is_err());
    }
}

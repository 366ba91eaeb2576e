//! Comparing two build output directories artifact by artifact, byte for byte: what
//! `compare-builds A B` and `build-image --check-reproducible` report. Inner layers first, since a
//! difference in the root squashfs shows in the initramfs, the UKI and the disks too.

use super::manifest::Manifest;
use crate::spec::names::MANIFEST_FILE;
use crate::util::digest::hex;
use crate::util::fs::read_full;
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One file compared.
#[derive(Clone, Debug, Serialize)]
pub struct Compared {
    pub file: String,
    pub identical: bool,
    /// Size and sha256 in the first build (absent if it does not have the file).
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// Where two builds first part.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub file: String,
    /// Offset of the first differing byte (or the length of the shorter file when one is a prefix of
    /// the other); absent when the file is missing from one build.
    pub offset: Option<u64>,
    pub first_size: Option<u64>,
    pub second_size: Option<u64>,
    pub first_sha256: Option<String>,
    pub second_sha256: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub identical: bool,
    pub first: PathBuf,
    pub second: PathBuf,
    /// Every artifact, innermost layer first (squashfs, initramfs, UKI, disks, the rest), manifest.json last.
    pub files: Vec<Compared>,
    pub first_difference: Option<Difference>,
    /// Every file that differs, in the same order.
    pub different: Vec<String>,
}

/// Compares two build-image output directories: every artifact either manifest lists, then
/// manifest.json. Errors only when a directory cannot be read as an output directory at all.
pub fn compare_dirs(first: &Path, second: &Path) -> Result<Comparison> {
    let a = Manifest::load(first).with_context(|| format!("{} is not a build output directory", first.display()))?;
    let b = Manifest::load(second).with_context(|| format!("{} is not a build output directory", second.display()))?;
    let mut names: Vec<String> = a.artifacts.iter().map(|x| x.file.clone()).collect();
    for artifact in &b.artifacts {
        if !names.contains(&artifact.file) {
            names.push(artifact.file.clone());
        }
    }
    // Inner layers first: a difference in the root squashfs shows in the initramfs, the UKI and the
    // disks too, and the innermost is where it starts.
    names.sort_by_key(|name| layer_rank(name));
    names.push(MANIFEST_FILE.to_string());
    let listed = |m: &Manifest, name: &str| name == MANIFEST_FILE || m.artifacts.iter().any(|x| x.file == name);

    let mut files = Vec::new();
    let mut differences = Vec::new();
    for name in names {
        let (in_a, in_b) = (listed(&a, &name), listed(&b, &name));
        if !(in_a && in_b) {
            let (which, other) = if in_a { ("first", "second") } else { ("second", "first") };
            let path = if in_a { first.join(&name) } else { second.join(&name) };
            let digest = crate::util::digest::sha256_file(&path).ok();
            let size = std::fs::metadata(&path).ok().map(|m| m.len());
            files.push(Compared {
                file: name.clone(),
                identical: false,
                size: if in_a { size } else { None },
                sha256: if in_a { digest.clone() } else { None },
            });
            differences.push(Difference {
                file: name.clone(),
                offset: None,
                first_size: if in_a { size } else { None },
                second_size: if in_b { size } else { None },
                first_sha256: if in_a { digest.clone() } else { None },
                second_sha256: if in_b { digest } else { None },
                message: format!(
                    "only the {which} build's manifest.json lists it, the {other} build has no such artifact"
                ),
            });
            continue;
        }
        let result = compare_files(&first.join(&name), &second.join(&name))?;
        files.push(Compared {
            file: name.clone(),
            identical: result.offset.is_none(),
            size: Some(result.sizes.0),
            sha256: Some(result.sha256.0.clone()),
        });
        if let Some(offset) = result.offset {
            let message = if result.sizes.0 != result.sizes.1 && offset == result.sizes.0.min(result.sizes.1) {
                format!(
                    "sizes differ ({} and {} bytes) and the shorter is a prefix of the longer",
                    result.sizes.0, result.sizes.1
                )
            } else {
                format!("first differing byte at offset {offset} (0x{offset:x})")
            };
            differences.push(Difference {
                file: name.clone(),
                offset: Some(offset),
                first_size: Some(result.sizes.0),
                second_size: Some(result.sizes.1),
                first_sha256: Some(result.sha256.0),
                second_sha256: Some(result.sha256.1),
                message,
            });
        }
    }
    Ok(Comparison {
        identical: differences.is_empty(),
        first: first.to_path_buf(),
        second: second.to_path_buf(),
        files,
        different: differences.iter().map(|d| d.file.clone()).collect(),
        first_difference: differences.into_iter().next(),
    })
}

/// Where an artifact sits in the image, innermost first; the order within a rank is the manifest's.
fn layer_rank(name: &str) -> u8 {
    match name.rsplit('.').next() {
        Some("sqsh") => 0,
        Some("initramfs") => 1,
        Some("efi") => 2,
        Some("raw") => 3,
        Some("qcow2") | Some("zst") => 4,
        _ => 5,
    }
}

struct FileComparison {
    sizes: (u64, u64),
    sha256: (String, String),
    /// First differing byte, if the files differ.
    offset: Option<u64>,
}

/// Reads both files once, side by side: their digests and the offset of the first difference.
fn compare_files(a: &Path, b: &Path) -> Result<FileComparison> {
    let open = |p: &Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ha, mut hb) = (Sha256::new(), Sha256::new());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let (mut size_a, mut size_b) = (0u64, 0u64);
    let mut offset = None;
    loop {
        let na = read_full(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let nb = read_full(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if offset.is_none() {
            let common = na.min(nb);
            if let Some(i) = ba[..common].iter().zip(&bb[..common]).position(|(x, y)| x != y) {
                offset = Some(size_a + i as u64);
            } else if na != nb {
                offset = Some(size_a + common as u64);
            }
        }
        ha.update(&ba[..na]);
        hb.update(&bb[..nb]);
        size_a += na as u64;
        size_b += nb as u64;
        if na == 0 && nb == 0 {
            break;
        }
    }
    Ok(FileComparison { sizes: (size_a, size_b), sha256: (hex(&ha.finalize()), hex(&hb.finalize())), offset })
}

impl Comparison {
    /// One line per file, then where the builds first part, for a person to read.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let comparison = self;
        let mut out = String::new();
        let width = comparison.files.iter().map(|f| f.file.len()).max().unwrap_or(0);
        for f in &comparison.files {
            let _ = writeln!(
                out,
                "  {}  {:<width$} {:>12} bytes  sha256 {}",
                if f.identical { "identical" } else { "DIFFERENT" },
                f.file,
                f.size.map_or("-".to_string(), |s| s.to_string()),
                f.sha256.as_deref().unwrap_or("-")
            );
        }
        if let Some(d) = &comparison.first_difference {
            let _ = writeln!(out, "first difference: {}: {}", d.file, d.message);
            if let (Some(a), Some(b)) = (&d.first_sha256, &d.second_sha256) {
                let _ = writeln!(
                    out,
                    "  first  {} ({} bytes, sha256 {a})",
                    comparison.first.join(&d.file).display(),
                    d.first_size.unwrap_or(0)
                );
                let _ = writeln!(
                    out,
                    "  second {} ({} bytes, sha256 {b})",
                    comparison.second.join(&d.file).display(),
                    d.second_size.unwrap_or(0)
                );
            }
        }
        out
    }

    /// The error a failed comparison ends in: the first difference, and every other file that differs.
    pub fn failure(&self) -> anyhow::Error {
        let comparison = self;
        match &comparison.first_difference {
            Some(d) => anyhow::anyhow!(
                "builds differ: {} ({}){}",
                d.file,
                d.message,
                if comparison.different.len() > 1 {
                    format!("; also different: {}", comparison.different[1..].join(", "))
                } else {
                    String::new()
                }
            ),
            None => anyhow::anyhow!("builds differ"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_comparison_finds_the_first_differing_byte_across_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, &data).unwrap();
        let mut changed = data.clone();
        changed[2_500_001] ^= 1;
        changed[2_900_000] ^= 1;
        std::fs::write(&b, &changed).unwrap();
        let result = compare_files(&a, &b).unwrap();
        assert_eq!(result.offset, Some(2_500_001));
        assert_eq!(result.sizes, (3_000_000, 3_000_000));
        assert_ne!(result.sha256.0, result.sha256.1);
        std::fs::write(&b, &data[..1_048_577]).unwrap();
        assert_eq!(compare_files(&a, &b).unwrap().offset, Some(1_048_577));
        std::fs::write(&b, &data).unwrap();
        let same = compare_files(&a, &b).unwrap();
        assert_eq!(same.offset, None);
        assert_eq!(same.sha256.0, same.sha256.1);
    }
}

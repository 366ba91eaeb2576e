//! glibc's `/etc/ld.so.cache` (the format `ldconfig` writes, "glibc-ld.so.cache1.1"), for a service
//! root whose libraries the dynamic loader would not find in its default directories: Talos's
//! iscsid.yaml binds the node's /lib and /usr/lib over its root and expects its own libraries under
//! /usr/local/lib, where only the cache points a glibc loader. Written here rather than by the host's
//! ldconfig, which marks each entry for its own architecture and cannot describe the other one's.
//!
//! Layout (glibc `elf/dl-cache.h`, little-endian): a 48-byte header (magic and version, entry
//! count, string-table size, endianness flags, extension offset 0 = none), 24-byte entries (flags,
//! key and value as offsets from the start of the file, OS version, hwcaps), then the strings. The
//! loader binary-searches the entries, so they are sorted as ldconfig sorts them: descending by
//! glibc's `_dl_cache_libcmp`, which compares runs of digits as numbers.

use crate::spec::Arch;
use std::cmp::Ordering;

const MAGIC: &[u8; 20] = b"glibc-ld.so.cache1.1";
const HEADER_SIZE: usize = 48;
const ENTRY_SIZE: usize = 24;
/// `cache_file_new_flags_endian_little`.
const LITTLE_ENDIAN: u8 = 2;
/// FLAG_ELF_LIBC6, with the arch's FLAG_X8664_LIB64 or FLAG_AARCH64_LIB64: what the loader expects.
fn entry_flags(arch: Arch) -> i32 {
    match arch {
        Arch::Amd64 => 0x0303,
        Arch::Arm64 => 0x0a03,
    }
}

/// glibc's `_dl_cache_libcmp`: byte order, except that runs of digits compare by value.
pub fn libcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if a[i].is_ascii_digit() {
            if j >= b.len() || !b[j].is_ascii_digit() {
                return Ordering::Greater;
            }
            let number = |s: &[u8], at: &mut usize| {
                let mut v: u64 = 0;
                while *at < s.len() && s[*at].is_ascii_digit() {
                    v = v.saturating_mul(10).saturating_add(u64::from(s[*at] - b'0'));
                    *at += 1;
                }
                v
            };
            let (x, y) = (number(a, &mut i), number(b, &mut j));
            if x != y {
                return x.cmp(&y);
            }
        } else if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        } else if j >= b.len() || a[i] != b[j] {
            return a[i].cmp(b.get(j).unwrap_or(&0));
        } else {
            i += 1;
            j += 1;
        }
    }
    if j < b.len() {
        Ordering::Less
    } else {
        Ordering::Equal
    }
}

/// The cache naming each (soname, absolute path) in `libraries` for `arch`'s loader.
pub fn write(arch: Arch, libraries: &[(String, String)]) -> Vec<u8> {
    let mut entries: Vec<&(String, String)> = libraries.iter().collect();
    entries.sort_by(|x, y| libcmp(&y.0, &x.0).then_with(|| y.1.cmp(&x.1)));
    entries.dedup_by(|x, y| x.0 == y.0);
    let strings_at = HEADER_SIZE + ENTRY_SIZE * entries.len();
    let mut strings = Vec::new();
    let mut table = Vec::new();
    for (soname, path) in &entries {
        let key = strings_at + strings.len();
        strings.extend_from_slice(soname.as_bytes());
        strings.push(0);
        let value = strings_at + strings.len();
        strings.extend_from_slice(path.as_bytes());
        strings.push(0);
        table.extend_from_slice(&entry_flags(arch).to_le_bytes());
        table.extend_from_slice(&(key as u32).to_le_bytes());
        table.extend_from_slice(&(value as u32).to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes()); // osversion, unused
        table.extend_from_slice(&0u64.to_le_bytes()); // hwcap: none
    }
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&[LITTLE_ENDIAN, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_le_bytes()); // extension_offset: no extensions
    out.extend_from_slice(&[0u8; 12]);
    out.extend(table);
    out.extend(strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_glibc_compares_them() {
        assert_eq!(libcmp("libc.so.6", "libc.so.6"), Ordering::Equal);
        assert_eq!(libcmp("libfoo.so.10", "libfoo.so.9"), Ordering::Greater, "numbers by value");
        assert_eq!(libcmp("libfoo.so.1", "libfoo.so.1.2"), Ordering::Less);
        assert_eq!(libcmp("lib2", "liba"), Ordering::Greater, "a digit sorts after a letter");
        assert_eq!(libcmp("libb", "liba"), Ordering::Greater);
    }

    /// Debian's own ldconfig (the host's, which reads any arch's cache) lists what was written.
    #[test]
    fn ldconfig_reads_the_cache_for_both_arches() {
        let dir = tempfile::tempdir().unwrap();
        let libraries: Vec<(String, String)> = ["libisns.so.0", "libkmod.so.2", "libcrypto.so.3", "libz.so.1"]
            .iter()
            .map(|s| (s.to_string(), format!("/usr/local/lib/containers/iscsid/usr/lib/{s}")))
            .collect();
        for (arch, tag) in [(Arch::Amd64, "libc6,x86-64"), (Arch::Arm64, "libc6,AArch64")] {
            let cache = dir.path().join(format!("ld.so.cache-{arch}"));
            std::fs::write(&cache, write(arch, &libraries)).unwrap();
            let out =
                std::process::Command::new("/usr/sbin/ldconfig").arg("-p").arg("-C").arg(&cache).output().unwrap();
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "ldconfig -p: {}", String::from_utf8_lossy(&out.stderr));
            assert!(listing.starts_with("4 libs found in cache"), "{listing}");
            for (soname, path) in &libraries {
                assert!(listing.contains(&format!("\t{soname} ({tag}) => {path}\n")), "{soname} missing:\n{listing}");
            }
        }
    }
}

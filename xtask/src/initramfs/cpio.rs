//! A writer (and a small reader, for checks) for the newc ("070701") cpio format the Linux initramfs
//! unpacker reads. Output depends only on the calls made: owner root, one fixed mtime, inode numbers from
//! a counter. The caller decides the order (parents before children; sorted for reproducibility).

use anyhow::{bail, ensure, Context, Result};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: u64 = 110;
const TRAILER: &str = "TRAILER!!!";

#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
const S_IFLNK: u32 = 0o120000;

/// Streams a newc archive into `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    /// Bytes written so far, for the 4-byte alignment padding.
    written: u64,
    next_inode: u32,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Every entry gets `mtime` (normally SOURCE_DATE_EPOCH); it must fit the format's 32 bits.
    pub fn new(out: W, mtime: i64) -> Result<Self> {
        let mtime = u32::try_from(mtime)
            .with_context(|| format!("cpio mtime {mtime} is outside 0..=4294967295 (newc stores 32 bits)"))?;
        Ok(CpioWriter { out, written: 0, next_inode: 1, mtime })
    }

    /// A directory; `mode` is the permission bits (e.g. 0o755).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.entry(path, S_IFDIR | permissions(path, mode)?, 2, 0)?;
        self.pad()
    }

    /// A regular file held in memory.
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.add_file_from_reader(path, mode, data.len() as u64, data)
    }

    /// A regular file copied from the host without reading it into memory (rootfs.sqsh can be 100 MB).
    pub fn add_file_from_path(&mut self, path: &str, mode: u32, source: &Path) -> Result<()> {
        let file = File::open(source).with_context(|| format!("opening {}", source.display()))?;
        let size = file.metadata().with_context(|| format!("reading the metadata of {}", source.display()))?.len();
        self.add_file_from_reader(path, mode, size, file)
            .with_context(|| format!("adding {} to the cpio archive as {path}", source.display()))
    }

    /// A regular file of exactly `size` bytes read from `data`; a reader that ends early or has more
    /// is an error, since the header already promised `size`.
    pub fn add_file_from_reader(&mut self, path: &str, mode: u32, size: u64, mut data: impl Read) -> Result<()> {
        let size32 = u32::try_from(size)
            .with_context(|| format!("{path}: {size} bytes is too large for a newc cpio entry (max 4 GiB - 1)"))?;
        self.entry(path, S_IFREG | permissions(path, mode)?, 1, size32)?;
        let copied = io::copy(&mut (&mut data).take(size), &mut self.out)
            .with_context(|| format!("{path}: could not copy data"))?;
        ensure!(copied == size, "{path}: expected {size} bytes of data, the source gave only {copied}");
        // A source that grew since it was measured would silently lose its tail.
        let more = data.read(&mut [0u8; 1]).with_context(|| format!("{path}: could not read data"))?;
        ensure!(more == 0, "{path}: the source has more than the expected {size} bytes");
        self.written += size;
        self.pad()
    }

    /// A symbolic link; its data is the target (mode 0777, as Linux reports links).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        ensure!(!target.is_empty() && !target.contains('\0'), "{path}: invalid symlink target {target:?}");
        let size = u32::try_from(target.len()).context("symlink target too long")?;
        self.entry(path, S_IFLNK | 0o777, 1, size)?;
        self.write(target.as_bytes())?;
        self.pad()
    }

    /// Writes the trailer and hands back the inner writer (e.g. to finish a compressor).
    pub fn finish(mut self) -> Result<W> {
        self.header(TRAILER, 0, 0, 1, 0, 0)?;
        self.out.flush().context("flushing the cpio archive")?;
        Ok(self.out)
    }

    /// Header and name of a new entry, leaving the writer at the start of its data.
    fn entry(&mut self, path: &str, mode: u32, nlink: u32, size: u32) -> Result<()> {
        validate_path(path)?;
        let inode = self.next_inode;
        self.next_inode = inode.checked_add(1).context("too many cpio entries")?;
        self.header(path, inode, mode, nlink, self.mtime, size)
    }

    fn header(&mut self, name: &str, inode: u32, mode: u32, nlink: u32, mtime: u32, size: u32) -> Result<()> {
        let name_size = u32::try_from(name.len() + 1).context("cpio path too long")?;
        let fields = [inode, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, name_size, 0];
        let mut header = Vec::with_capacity(HEADER_LEN as usize + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write(&header)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing the cpio archive")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads to the next multiple of 4, as newc requires after the name and after the data.
    fn pad(&mut self) -> Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0u8; 3][..padding])
    }
}

fn permissions(path: &str, mode: u32) -> Result<u32> {
    if mode & !0o7777 != 0 {
        bail!("{path}: mode {mode:o} has bits beyond the permission bits (the writer sets the file type)");
    }
    Ok(mode)
}

/// Archive paths are relative ("usr/bin/x"), because that is what the kernel unpacker and `cpio -i`
/// expect; anything that could escape or alias the root is refused.
fn validate_path(path: &str) -> Result<()> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') || path.contains('\0') {
        bail!("invalid cpio path {path:?}: must be relative, non-empty, without a trailing '/' or NUL");
    }
    if path == TRAILER {
        bail!("invalid cpio path {path:?}: it is the end-of-archive marker");
    }
    if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("invalid cpio path {path:?}: empty, '.' or '..' component");
    }
    Ok(())
}

/// One entry of a parsed archive.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
pub struct CpioEntry {
    pub path: String,
    /// Type and permission bits, as stored.
    pub mode: u32,
    pub inode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub data: Vec<u8>,
}

#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
impl CpioEntry {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

/// Parses one uncompressed newc archive up to its trailer, for checking what was written.
#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
pub fn parse_newc(archive: &[u8]) -> Result<Vec<CpioEntry>> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    loop {
        let header = archive
            .get(pos..pos + HEADER_LEN as usize)
            .with_context(|| format!("cpio archive truncated in the header at offset {pos}"))?;
        ensure!(&header[..6] == MAGIC, "no newc magic at offset {pos}");
        let mut fields = [0u32; 13];
        for (i, field) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .with_context(|| format!("bad hex field {i} in the cpio header at offset {pos}"))?;
            *field = hex;
        }
        let [inode, mode, uid, gid, nlink, mtime, size, _, _, _, _, name_size, _] = fields;
        let name_start = pos + HEADER_LEN as usize;
        let name_bytes = archive
            .get(name_start..name_start + name_size as usize)
            .with_context(|| format!("cpio archive truncated in a name at offset {name_start}"))?;
        let (last, name) = name_bytes.split_last().context("cpio entry with an empty name field")?;
        ensure!(*last == 0, "cpio name at offset {name_start} is not NUL-terminated");
        let path = String::from_utf8(name.to_vec()).context("cpio name is not UTF-8")?;
        let data_start = align4(name_start + name_size as usize);
        if path == TRAILER {
            return Ok(entries);
        }
        let data = archive
            .get(data_start..data_start + size as usize)
            .with_context(|| format!("cpio archive truncated in the data of {path}"))?
            .to_vec();
        pos = align4(data_start + size as usize);
        entries.push(CpioEntry { path, mode, inode, nlink, uid, gid, mtime, data });
    }
}

#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::cmd::cmd;

    fn sample(mtime: i64) -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), mtime).unwrap();
        w.add_dir("bin", 0o755).unwrap();
        w.add_file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.add_symlink("bin/sh", "busybox").unwrap();
        w.add_file("empty", 0o644, b"").unwrap();
        w.add_file("odd", 0o600, b"abcde").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_through_own_parser() {
        let archive = sample(1_700_000_000);
        assert_eq!(archive.len() % 4, 0);
        let entries = parse_newc(&archive).unwrap();
        let paths: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["bin", "bin/hello", "bin/sh", "empty", "odd"]);
        assert!(entries[0].is_dir() && entries[0].nlink == 2 && entries[0].mode == 0o40755);
        assert!(entries[1].is_file() && entries[1].data == b"#!/bin/sh\necho hi\n");
        assert!(entries[2].is_symlink() && entries[2].data == b"busybox" && entries[2].mode == 0o120777);
        assert_eq!(entries[4].data, b"abcde");
        assert!(entries.iter().all(|e| e.mtime == 1_700_000_000 && e.uid == 0 && e.gid == 0));
        let inodes: Vec<_> = entries.iter().map(|e| e.inode).collect();
        assert_eq!(inodes, [1, 2, 3, 4, 5]);
        assert_eq!(sample(1_700_000_000), archive, "same calls give the same bytes");
    }

    #[test]
    fn gnu_cpio_lists_it() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, sample(0)).unwrap();
        let listing = cmd("sh").arg("-c").arg("cpio -it --quiet < \"$0\"").arg(&path).read().unwrap();
        assert_eq!(listing, "bin\nbin/hello\nbin/sh\nempty\nodd\n");
        let extract = dir.path().join("x");
        std::fs::create_dir(&extract).unwrap();
        cmd("sh").arg("-c").arg("cpio -id --quiet < \"$0\"").arg(&path).dir(&extract).run().unwrap();
        assert_eq!(std::fs::read(extract.join("odd")).unwrap(), b"abcde");
        assert_eq!(std::fs::read_link(extract.join("bin/sh")).unwrap(), Path::new("busybox"));
    }

    #[test]
    fn streams_from_a_file_and_checks_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("big");
        let data: Vec<u8> = (0..100_003u32).map(|i| i as u8).collect();
        std::fs::write(&source, &data).unwrap();
        let mut w = CpioWriter::new(Vec::new(), 5).unwrap();
        w.add_file_from_path("rootfs.sqsh", 0o444, &source).unwrap();
        let entries = parse_newc(&w.finish().unwrap()).unwrap();
        assert_eq!(entries[0].data, data);

        let mut w = CpioWriter::new(Vec::new(), 5).unwrap();
        assert!(w.add_file_from_reader("short", 0o644, 10, &b"abc"[..]).is_err());
        let mut w = CpioWriter::new(Vec::new(), 5).unwrap();
        assert!(w.add_file_from_reader("long", 0o644, 2, &b"abc"[..]).is_err());
    }

    #[test]
    fn parser_reports_truncation() {
        let archive = sample(7);
        // The trailer's final padding (3 bytes after its 121-byte header and name) is not needed to parse.
        for len in 0..archive.len() - 3 {
            assert!(parse_newc(&archive[..len]).is_err(), "accepted {len} bytes");
        }
    }

    #[test]
    fn refuses_bad_input() {
        let mut w = CpioWriter::new(Vec::new(), 0).unwrap();
        for bad in ["/abs", "", "a//b", "a/../b", "./a", "dir/", "TRAILER!!!"] {
            assert!(w.add_dir(bad, 0o755).is_err(), "{bad:?} accepted");
        }
        assert!(w.add_file("f", 0o100644, b"").is_err());
        assert!(CpioWriter::new(Vec::new(), -1).is_err());
        assert!(CpioWriter::new(Vec::new(), 1 << 33).is_err());
        assert!(parse_newc(b"070701garbage").is_err());
    }
}

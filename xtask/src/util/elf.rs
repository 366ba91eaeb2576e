//! Reading little-endian ELF64 files by their section headers: what kernel modules (`.modinfo`) and
//! shared libraries (their soname, for an ld.so.cache) tell about themselves.

use anyhow::{bail, Context, Result};

/// The ELF identification every file read here must start with: ELF, 64-bit, little-endian.
const IDENT: [u8; 6] = [0x7f, b'E', b'L', b'F', 2, 1];
/// The section type of the dynamic section, and the dynamic tag of the soname.
const SHT_DYNAMIC: u32 = 6;
const DT_SONAME: u64 = 14;

/// A section header: (name, type, file offset, size, link).
struct Header<'a> {
    name: &'a [u8],
    kind: u32,
    offset: usize,
    size: usize,
    link: usize,
}

fn u16_at(data: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(data.get(o..o + 2).context("truncated ELF")?.try_into()?))
}

fn u32_at(data: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(data.get(o..o + 4).context("truncated ELF")?.try_into()?))
}

fn u64_at(data: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(data.get(o..o + 8).context("truncated ELF")?.try_into()?))
}

/// Whether `data` starts like a file these functions read.
pub fn is_elf64_le(data: &[u8]) -> bool {
    data.get(0..6) == Some(&IDENT[..])
}

fn headers(data: &[u8]) -> Result<Vec<Header<'_>>> {
    if !is_elf64_le(data) {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = u64_at(data, 0x28)? as usize;
    let shentsize = u16_at(data, 0x3a)? as usize;
    let shnum = u16_at(data, 0x3c)? as usize;
    let shstrndx = u16_at(data, 0x3e)? as usize;
    let at = |i: usize| shoff + i * shentsize;
    let strtab_off = u64_at(data, at(shstrndx) + 0x18)? as usize;
    (0..shnum)
        .map(|i| {
            let name_off = strtab_off + u32_at(data, at(i))? as usize;
            let rest = data.get(name_off..).context("section name outside the file")?;
            let name_end = rest.iter().position(|&b| b == 0).context("unterminated section name")?;
            Ok(Header {
                name: &rest[..name_end],
                kind: u32_at(data, at(i) + 4)?,
                offset: u64_at(data, at(i) + 0x18)? as usize,
                size: u64_at(data, at(i) + 0x20)? as usize,
                link: u32_at(data, at(i) + 0x28)? as usize,
            })
        })
        .collect()
}

fn bytes<'a>(data: &'a [u8], header: &Header) -> Result<&'a [u8]> {
    data.get(header.offset..header.offset + header.size).context("section outside the file")
}

/// The bytes of a named section.
pub fn section<'a>(data: &'a [u8], wanted: &str) -> Result<&'a [u8]> {
    let all = headers(data)?;
    let header = all.iter().find(|h| h.name == wanted.as_bytes()).with_context(|| format!("no {wanted} section"))?;
    bytes(data, header)
}

/// A shared library's DT_SONAME (None for a file without one, such as a program).
pub fn soname(data: &[u8]) -> Result<Option<String>> {
    let all = headers(data)?;
    let Some(dynamic) = all.iter().find(|h| h.kind == SHT_DYNAMIC) else { return Ok(None) };
    let strings = bytes(data, all.get(dynamic.link).context("the dynamic section links no string table")?)?;
    for entry in bytes(data, dynamic)?.chunks_exact(16) {
        let (tag, value) = (u64_at(entry, 0)?, u64_at(entry, 8)? as usize);
        if tag == DT_SONAME {
            let rest = strings.get(value..).context("soname outside the string table")?;
            let end = rest.iter().position(|&b| b == 0).context("unterminated soname")?;
            return Ok(Some(String::from_utf8_lossy(&rest[..end]).into_owned()));
        }
    }
    Ok(None)
}

//! Unified Kernel Images: systemd-stub's PE/COFF image with the kernel, initrd, command line and
//! os-release appended as new sections, the way ukify and `objcopy --add-section` do it. The stub's
//! headers and sections are kept; new section headers go into the free space after the existing section
//! table, their data follows the stub's last section at FileAlignment, and their virtual addresses
//! follow the image at SectionAlignment.
//!
//! Bytes a stub carries after its last section (systemd 252's x86-64 stub has a 12 KiB COFF symbol
//! table there) are dropped, with the header's pointer to them: left in place they would be a gap
//! between sections, which Authenticode implementations hash differently (edk2, sbsign and osslsigncode
//! skip it, PyPI's signify hashes it), so one signature would verify in some and not in others. With no
//! gap every byte after the headers belongs to a section, and they all agree.
//!
//! [`without_signature`] takes an Authenticode signature off again (boot-test's unsigned image).

use anyhow::{bail, ensure, Context, Result};

const PE32_PLUS_MAGIC: u16 = 0x20b;
const SECTION_HEADER_LEN: usize = 40;
const COFF_HEADER_LEN: usize = 20;
/// Initialized data, readable: what ukify gives every section it adds.
const DATA_SECTION_FLAGS: u32 = 0x0000_0040 | 0x4000_0000;
/// Index of the certificate table (Authenticode signature) among the data directories.
const SECURITY_DIRECTORY: usize = 4;
/// Index of the debug directory, whose entries point at file offsets.
const DEBUG_DIRECTORY: usize = 6;
const DEBUG_ENTRY_LEN: usize = 28;

/// One section header, as read back for checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionInfo {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
    pub characteristics: u32,
}

/// Offsets and fields of a parsed PE32+ image that building a UKI needs.
struct PeLayout {
    coff_offset: usize,
    optional_offset: usize,
    number_of_sections: usize,
    section_table_offset: usize,
    section_alignment: u32,
    file_alignment: u32,
    size_of_image: u32,
    size_of_headers: u32,
    sections: Vec<SectionInfo>,
}

impl PeLayout {
    /// Where the data of the last section with any ends (the headers' end if none has data).
    fn data_end(&self) -> usize {
        self.sections
            .iter()
            .filter(|s| s.raw_size > 0)
            .map(|s| s.raw_offset as usize + s.raw_size as usize)
            .chain([self.size_of_headers as usize])
            .max()
            .unwrap_or(0)
    }
}

/// Appends `sections` (in order; normally .osrel, .cmdline, .uname, .initrd, .linux) to the stub.
pub fn build_uki(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let pe = parse(stub).context("systemd-stub is not a usable PE32+ image")?;
    let optional = pe.optional_offset;
    let data_directories = read_u32(stub, optional + 108)? as usize;
    if data_directories > SECURITY_DIRECTORY {
        let (_, certificate_size) = data_directory(stub, optional, SECURITY_DIRECTORY)?;
        ensure!(
            certificate_size == 0,
            "the stub is signed; adding sections would invalidate its signature: use the unsigned stub and \
             sign the finished UKI"
        );
    }
    for (name, _) in sections {
        ensure!(!name.is_empty() && name.len() <= 8, "section name {name:?} must be 1 to 8 bytes (no string table)");
        ensure!(!pe.sections.iter().any(|s| s.name == *name), "the stub already has a {name} section");
    }
    ensure!(
        sections.iter().enumerate().all(|(i, (n, _))| sections[..i].iter().all(|(m, _)| m != n)),
        "a section name is given twice"
    );

    // Room for the new headers: they must end inside SizeOfHeaders and before any section's data.
    let table_end = pe.section_table_offset + SECTION_HEADER_LEN * (pe.number_of_sections + sections.len());
    let first_raw = pe.sections.iter().filter(|s| s.raw_size > 0).map(|s| s.raw_offset as usize).min();
    let room_end = first_raw.map_or(pe.size_of_headers as usize, |raw| raw.min(pe.size_of_headers as usize));
    if table_end > room_end || table_end > stub.len() {
        bail!(
            "the stub has no room for {} more section headers: the table would end at {table_end:#x}, but the \
             headers end at {room_end:#x}",
            sections.len()
        );
    }

    // The stub's own bytes end with its last section: what follows belongs to no section.
    let data_end = pe.data_end();
    ensure!(data_end <= stub.len(), "the stub's headers run past the end of the file");
    let mut out = stub[..data_end].to_vec();
    if stub.len() > data_end {
        drop_trailing_data(&mut out, &pe, data_end, stub)?;
    }
    // SizeOfImage should already cover every section; take the larger in case a linker left it short.
    let image_end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
        .chain([u64::from(pe.size_of_image)])
        .max()
        .unwrap_or(0);
    let image_end = u32::try_from(image_end).context("stub image size overflows 32 bits")?;
    let mut virtual_address = align(image_end, pe.section_alignment)?;
    let mut added_initialized = 0u32;
    for (index, (name, data)) in sections.iter().enumerate() {
        let what = || format!("section {name}");
        let virtual_size = u32::try_from(data.len()).with_context(|| format!("{} is over 4 GiB", what()))?;
        let raw_offset = align_len(out.len(), pe.file_alignment).with_context(what)?;
        let raw_size = align(virtual_size, pe.file_alignment).with_context(what)?;
        out.resize(raw_offset as usize, 0);
        out.extend_from_slice(data);
        out.resize(raw_offset as usize + raw_size as usize, 0);

        let header_at = pe.section_table_offset + SECTION_HEADER_LEN * (pe.number_of_sections + index);
        let header = &mut out[header_at..header_at + SECTION_HEADER_LEN];
        header.fill(0);
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[8..12].copy_from_slice(&virtual_size.to_le_bytes());
        header[12..16].copy_from_slice(&virtual_address.to_le_bytes());
        header[16..20].copy_from_slice(&raw_size.to_le_bytes());
        header[20..24].copy_from_slice(&raw_offset.to_le_bytes());
        header[36..40].copy_from_slice(&DATA_SECTION_FLAGS.to_le_bytes());

        added_initialized = added_initialized.checked_add(raw_size).context("UKI too large")?;
        let end = virtual_address.checked_add(virtual_size.max(1)).context("UKI too large")?;
        virtual_address = align(end, pe.section_alignment).with_context(what)?;
    }

    let count = u16::try_from(pe.number_of_sections + sections.len()).context("too many sections")?;
    write_u16(&mut out, pe.coff_offset + 2, count);
    write_u32(&mut out, optional + 56, virtual_address); // SizeOfImage, already aligned
    let initialized = read_u32(&out, optional + 8)?.checked_add(added_initialized).context("UKI too large")?;
    write_u32(&mut out, optional + 8, initialized);
    let checksum = pe_checksum(&out, optional + 64);
    write_u32(&mut out, optional + 64, checksum);
    Ok(out)
}

/// Checks that nothing but the COFF symbol table (which an image does not need, and which `strip`
/// removes) lives in the stub's bytes past `data_end`, and clears the header's pointer to it.
fn drop_trailing_data(out: &mut [u8], pe: &PeLayout, data_end: usize, stub: &[u8]) -> Result<()> {
    let optional = pe.optional_offset;
    let data_directories = read_u32(stub, optional + 108)? as usize;
    if data_directories > DEBUG_DIRECTORY {
        let (rva, size) = data_directory(stub, optional, DEBUG_DIRECTORY)?;
        if size > 0 {
            let section = pe
                .sections
                .iter()
                .find(|s| rva >= s.virtual_address && rva - s.virtual_address < s.raw_size.max(s.virtual_size))
                .context("the stub's debug directory lies in no section")?;
            let table = section.raw_offset as usize + (rva - section.virtual_address) as usize;
            for entry in 0..size as usize / DEBUG_ENTRY_LEN {
                let at = table + entry * DEBUG_ENTRY_LEN;
                let (data_size, pointer) = (read_u32(stub, at + 16)?, read_u32(stub, at + 24)?);
                ensure!(
                    data_size == 0 || (pointer as usize) + (data_size as usize) <= data_end,
                    "the stub keeps debug data at {pointer:#x}, after its last section (which ends at \
                     {data_end:#x}): it would be lost"
                );
            }
        }
    }
    let symbol_table = read_u32(stub, pe.coff_offset + 8)? as usize;
    if symbol_table != 0 {
        ensure!(symbol_table >= data_end, "the stub's COFF symbol table at {symbol_table:#x} lies inside its sections");
        write_u32(out, pe.coff_offset + 8, 0); // PointerToSymbolTable
        write_u32(out, pe.coff_offset + 12, 0); // NumberOfSymbols
    }
    Ok(())
}

/// The image with its Authenticode signature (the certificate table at the end of the file) taken
/// off: the security directory cleared, the file cut where the table began, the checksum redone.
pub fn without_signature(pe: &[u8]) -> Result<Vec<u8>> {
    let layout = parse(pe).context("not a usable PE32+ image")?;
    let optional = layout.optional_offset;
    let data_directories = read_u32(pe, optional + 108)? as usize;
    ensure!(data_directories > SECURITY_DIRECTORY, "the image has no certificate table entry");
    let (offset, size) = data_directory(pe, optional, SECURITY_DIRECTORY)?;
    ensure!(size > 0, "the image is not signed");
    let (offset, end) = (offset as usize, offset as usize + size as usize);
    ensure!(
        end == pe.len() && offset >= layout.data_end(),
        "the certificate table ({offset:#x}..{end:#x}) is not at the end of the file ({:#x})",
        pe.len()
    );
    let mut out = pe[..offset].to_vec();
    let entry = optional + 112 + 8 * SECURITY_DIRECTORY;
    out[entry..entry + 8].fill(0);
    let checksum = pe_checksum(&out, optional + 64);
    write_u32(&mut out, optional + 64, checksum);
    Ok(out)
}

/// One data directory entry: (virtual address or, for the certificate table, file offset; size).
fn data_directory(pe: &[u8], optional: usize, index: usize) -> Result<(u32, u32)> {
    let at = optional + 112 + 8 * index;
    Ok((read_u32(pe, at)?, read_u32(pe, at + 4)?))
}

/// The section headers of a PE32+ image.
pub fn sections(pe: &[u8]) -> Result<Vec<SectionInfo>> {
    Ok(parse(pe)?.sections)
}

fn parse(pe: &[u8]) -> Result<PeLayout> {
    ensure!(pe.get(..2) == Some(b"MZ"), "no MZ (DOS) signature");
    let coff_signature = read_u32(pe, 0x3c).context("truncated DOS header")? as usize;
    ensure!(
        pe.get(coff_signature..coff_signature + 4) == Some(b"PE\0\0"),
        "no PE signature at e_lfanew {coff_signature:#x}"
    );
    let coff_offset = coff_signature + 4;
    let number_of_sections = read_u16(pe, coff_offset + 2)? as usize;
    let optional_size = read_u16(pe, coff_offset + 16)? as usize;
    let optional_offset = coff_offset + COFF_HEADER_LEN;
    let magic = read_u16(pe, optional_offset)?;
    ensure!(magic == PE32_PLUS_MAGIC, "optional header magic {magic:#x} is not PE32+ (0x20b)");
    ensure!(pe.len() >= optional_offset + optional_size, "PE truncated inside the optional header");
    ensure!(optional_size >= 112, "PE32+ optional header of {optional_size} bytes is truncated");
    let section_alignment = read_u32(pe, optional_offset + 32)?;
    let file_alignment = read_u32(pe, optional_offset + 36)?;
    for (what, value) in [("SectionAlignment", section_alignment), ("FileAlignment", file_alignment)] {
        ensure!(value.is_power_of_two() && value >= 16, "{what} {value:#x} is not a usable power of two");
    }
    let size_of_image = read_u32(pe, optional_offset + 56)?;
    let size_of_headers = read_u32(pe, optional_offset + 60)?;
    let section_table_offset = optional_offset + optional_size;

    let mut sections = Vec::with_capacity(number_of_sections);
    for index in 0..number_of_sections {
        let at = section_table_offset + SECTION_HEADER_LEN * index;
        let header = pe.get(at..at + SECTION_HEADER_LEN).context("section table runs past the end of the file")?;
        let name_bytes = &header[..8];
        let name_len = name_bytes.iter().position(|&b| b == 0).unwrap_or(8);
        let section = SectionInfo {
            name: String::from_utf8_lossy(&name_bytes[..name_len]).into_owned(),
            virtual_size: read_u32(header, 8)?,
            virtual_address: read_u32(header, 12)?,
            raw_size: read_u32(header, 16)?,
            raw_offset: read_u32(header, 20)?,
            characteristics: read_u32(header, 36)?,
        };
        let raw_end = u64::from(section.raw_offset) + u64::from(section.raw_size);
        ensure!(
            section.raw_size == 0 || raw_end <= pe.len() as u64,
            "section {} data ({:#x}..{raw_end:#x}) runs past the end of the file ({:#x})",
            section.name,
            section.raw_offset,
            pe.len()
        );
        sections.push(section);
    }
    Ok(PeLayout {
        coff_offset,
        optional_offset,
        number_of_sections,
        section_table_offset,
        section_alignment,
        file_alignment,
        size_of_image,
        size_of_headers,
        sections,
    })
}

/// The PE image checksum (as in Windows' CheckSumMappedFile): a folded 16-bit one's-complement-style
/// sum of the file with the CheckSum field taken as zero, plus the file length.
fn pe_checksum(image: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (index, chunk) in image.chunks(2).enumerate() {
        let at = index * 2;
        if at >= checksum_offset && at < checksum_offset + 4 {
            continue;
        }
        let word = u64::from(chunk[0]) | chunk.get(1).map_or(0, |&b| u64::from(b) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}

fn align(value: u32, alignment: u32) -> Result<u32> {
    value
        .checked_add(alignment - 1)
        .map(|v| v & !(alignment - 1))
        .with_context(|| format!("{value:#x} aligned to {alignment:#x} overflows 32 bits"))
}

fn align_len(len: usize, alignment: u32) -> Result<u32> {
    align(u32::try_from(len).context("UKI over 4 GiB")?, alignment)
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16> {
    let b = bytes.get(at..at + 2).with_context(|| format!("PE truncated at {at:#x}"))?;
    Ok(u16::from_le_bytes([b[0], b[1]]))
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    let b = bytes.get(at..at + 4).with_context(|| format!("PE truncated at {at:#x}"))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ EFI application: DOS header, PE header, 16 data directories and one .text
    /// section, with `size_of_headers` bytes of headers.
    fn minimal_pe(section_alignment: u32, size_of_headers: u32) -> Vec<u8> {
        let file_alignment = 0x200u32;
        let text_raw = align(size_of_headers, file_alignment).unwrap();
        let text_va = align(size_of_headers, section_alignment).unwrap();
        let mut pe = vec![0u8; text_raw as usize + 0x200];
        pe[..2].copy_from_slice(b"MZ");
        write_u32(&mut pe, 0x3c, 0x40);
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        let coff = 0x44;
        write_u16(&mut pe, coff, 0x8664);
        write_u16(&mut pe, coff + 2, 1);
        write_u16(&mut pe, coff + 16, 240);
        write_u16(&mut pe, coff + 18, 0x206);
        let opt = coff + 20;
        write_u16(&mut pe, opt, PE32_PLUS_MAGIC);
        write_u32(&mut pe, opt + 4, 0x200); // SizeOfCode
        write_u32(&mut pe, opt + 16, text_va); // entry point
        write_u32(&mut pe, opt + 32, section_alignment);
        write_u32(&mut pe, opt + 36, file_alignment);
        write_u32(&mut pe, opt + 56, text_va + align(0x10, section_alignment).unwrap());
        write_u32(&mut pe, opt + 60, size_of_headers);
        write_u16(&mut pe, opt + 68, 10); // EFI application
        write_u32(&mut pe, opt + 108, 16);
        let section = opt + 240;
        pe[section..section + 5].copy_from_slice(b".text");
        write_u32(&mut pe, section + 8, 0x10);
        write_u32(&mut pe, section + 12, text_va);
        write_u32(&mut pe, section + 16, 0x200);
        write_u32(&mut pe, section + 20, text_raw);
        write_u32(&mut pe, section + 36, 0x6000_0020);
        pe[text_raw as usize] = 0xc3;
        pe
    }

    const PARTS: [(&str, &[u8]); 5] = [
        (".osrel", b"ID=test\n"),
        (".cmdline", b"console=ttyS0"),
        (".uname", b"6.1.0-test"),
        (".initrd", &[7u8; 0x1234]),
        (".linux", &[9u8; 0x3001]),
    ];

    #[test]
    fn appends_aligned_sections() {
        for section_alignment in [0x200u32, 0x1000] {
            let stub = minimal_pe(section_alignment, 0x400);
            let uki = build_uki(&stub, &PARTS).unwrap();
            let all = sections(&uki).unwrap();
            assert_eq!(all.len(), 6);
            assert_eq!(&uki[0x400..stub.len()], &stub[0x400..], "the stub's sections are untouched");
            let mut expected_va = align(read_u32(&stub, 0x58 + 56).unwrap(), section_alignment).unwrap();
            for ((name, data), info) in PARTS.iter().zip(&all[1..]) {
                assert_eq!(info.name, *name);
                assert_eq!(info.virtual_address, expected_va, "{name}");
                assert_eq!(info.virtual_address % section_alignment, 0);
                assert_eq!(info.raw_offset % 0x200, 0);
                assert_eq!(info.virtual_size as usize, data.len());
                assert_eq!(&uki[info.raw_offset as usize..][..data.len()], *data);
                expected_va = align(expected_va + info.virtual_size, section_alignment).unwrap();
            }
            let opt = 0x58;
            assert_eq!(read_u32(&uki, opt + 56).unwrap(), expected_va, "SizeOfImage");
            assert_eq!(read_u16(&uki, 0x46).unwrap(), 6);
            assert_eq!(read_u32(&uki, opt + 64).unwrap(), pe_checksum(&uki, opt + 64));
            assert_eq!(uki.len() % 0x200, 0);
        }
    }

    #[test]
    fn refuses_stub_without_header_room() {
        // 0x40 + 4 + 20 + 240 + 40 = 0x1a8 bytes of headers in use; 0x200 leaves room for only 1 more.
        let stub = minimal_pe(0x1000, 0x200);
        let err = build_uki(&stub, &PARTS).unwrap_err();
        assert!(format!("{err:#}").contains("no room"), "{err:#}");
        assert!(build_uki(&stub, &PARTS[..1]).is_ok());
    }

    #[test]
    fn refuses_bad_input() {
        let stub = minimal_pe(0x1000, 0x400);
        assert!(build_uki(&stub, &[(".text", b"x")]).is_err());
        assert!(build_uki(&stub, &[(".toolongname", b"x")]).is_err());
        assert!(build_uki(&stub, &[(".a", b"x"), (".a", b"y")]).is_err());
        assert!(build_uki(&stub[..0x50], &PARTS).is_err());
        assert!(build_uki(b"not a pe", &PARTS).is_err());
        let mut signed = stub.clone();
        write_u32(&mut signed, 0x58 + 112 + 8 * SECURITY_DIRECTORY + 4, 0x100);
        assert!(format!("{:#}", build_uki(&signed, &PARTS).unwrap_err()).contains("signed"));
        let mut pe32 = stub;
        write_u16(&mut pe32, 0x58, 0x10b);
        assert!(build_uki(&pe32, &PARTS).is_err());
    }

    #[test]
    fn truncated_or_corrupt_input_is_an_error_not_a_panic() {
        let stub = minimal_pe(0x1000, 0x400);
        for len in 0..stub.len() {
            let _ = build_uki(&stub[..len], &PARTS);
            let _ = sections(&stub[..len]);
        }
        for at in 0..0x200 {
            let mut corrupt = stub.clone();
            corrupt[at] ^= 0xff;
            let _ = build_uki(&corrupt, &PARTS);
        }
    }

    /// A stub whose file goes on past its last section: a COFF symbol table of `len` bytes there,
    /// pointed at by the COFF header, as systemd 252's x86-64 stub has.
    fn stub_with_symbol_table(len: usize) -> Vec<u8> {
        let mut stub = minimal_pe(0x1000, 0x400);
        let at = stub.len() as u32;
        stub.extend((0..len).map(|i| i as u8 | 1));
        write_u32(&mut stub, 0x44 + 8, at);
        write_u32(&mut stub, 0x44 + 12, 7);
        stub
    }

    /// Every byte after the headers belongs to a section, in file order: the condition under which
    /// all Authenticode implementations hash the same bytes.
    fn assert_no_gaps(pe: &[u8]) {
        let layout = parse(pe).unwrap();
        let mut at = layout.size_of_headers as usize;
        let mut sections = layout.sections.clone();
        sections.sort_by_key(|s| s.raw_offset);
        for s in sections.iter().filter(|s| s.raw_size > 0) {
            assert_eq!(s.raw_offset as usize, align(at as u32, layout.file_alignment).unwrap() as usize, "{}", s.name);
            assert!(pe[at..s.raw_offset as usize].iter().all(|&b| b == 0), "bytes before {}", s.name);
            at = (s.raw_offset + s.raw_size) as usize;
        }
        assert_eq!(at, pe.len(), "bytes after the last section");
    }

    #[test]
    fn bytes_after_the_stubs_last_section_are_dropped_with_their_pointer() {
        let stub = stub_with_symbol_table(0x3161);
        let uki = build_uki(&stub, &PARTS).unwrap();
        let all = sections(&uki).unwrap();
        assert_eq!(all[1].raw_offset as usize, stub.len() - 0x3161, ".osrel follows .text at once");
        assert_eq!(read_u32(&uki, 0x44 + 8).unwrap(), 0, "PointerToSymbolTable");
        assert_eq!(read_u32(&uki, 0x44 + 12).unwrap(), 0, "NumberOfSymbols");
        assert_no_gaps(&uki);
        assert_no_gaps(&build_uki(&minimal_pe(0x200, 0x400), &PARTS).unwrap());
    }

    #[test]
    fn debug_data_past_the_last_section_is_refused_not_lost() {
        let mut stub = stub_with_symbol_table(0x100);
        write_u32(&mut stub, 0x44 + 8, 0);
        // One debug directory entry inside .text, pointing at the trailing bytes.
        let text_va = read_u32(&stub, 0x58 + 240 + 12).unwrap();
        let text_raw = read_u32(&stub, 0x58 + 240 + 20).unwrap() as usize;
        write_u32(&mut stub, 0x58 + 112 + 8 * DEBUG_DIRECTORY, text_va + 0x20);
        write_u32(&mut stub, 0x58 + 112 + 8 * DEBUG_DIRECTORY + 4, DEBUG_ENTRY_LEN as u32);
        write_u32(&mut stub, text_raw + 0x20 + 16, 0x40);
        let trailing = (stub.len() - 0x80) as u32;
        write_u32(&mut stub, text_raw + 0x20 + 24, trailing);
        let err = format!("{:#}", build_uki(&stub, &PARTS).unwrap_err());
        assert!(err.contains("debug data"), "{err}");
    }

    /// edk2 (and sbsign, osslsigncode, the authenticode crate) hash the sections sorted by offset and
    /// then what follows them; signify hashes the file as it lies. Without gaps the two are one digest.
    #[test]
    fn both_ways_of_hashing_agree_on_a_uki_but_not_on_a_gapped_one() {
        use sha2::{Digest, Sha256};
        let in_file_order = |pe: &[u8]| {
            let mut hasher = Sha256::new();
            hasher.update(&pe[..0x58 + 64]);
            hasher.update(&pe[0x58 + 68..0x58 + 112 + 8 * SECURITY_DIRECTORY]);
            hasher.update(&pe[0x58 + 112 + 8 * SECURITY_DIRECTORY + 8..]);
            hasher.finalize().to_vec()
        };
        let edk2_way = |pe: &[u8]| {
            let file = object::read::pe::PeFile64::parse(pe).unwrap();
            let mut hasher = Sha256::new();
            authenticode::authenticode_digest(&file, &mut hasher).unwrap();
            hasher.finalize().to_vec()
        };
        let stub = stub_with_symbol_table(0x3161);
        let uki = build_uki(&stub, &PARTS).unwrap();
        assert_eq!(edk2_way(&uki), in_file_order(&uki));

        // The old layout: the stub's trailing bytes kept between .text and the added sections.
        let mut gapped = stub.clone();
        gapped.resize(align_len(gapped.len(), 0x200).unwrap() as usize, 0);
        let shift = gapped.len() - (stub.len() - 0x3161);
        let mut moved = uki.clone();
        for index in 1..6 {
            let at = 0x58 + 240 + SECTION_HEADER_LEN * index + 20;
            let raw = read_u32(&moved, at).unwrap();
            write_u32(&mut moved, at, raw + shift as u32);
        }
        gapped[..0x400].copy_from_slice(&moved[..0x400]);
        gapped.extend_from_slice(&uki[stub.len() - 0x3161..]);
        assert_ne!(edk2_way(&gapped), in_file_order(&gapped));
    }

    #[test]
    fn a_signature_comes_off_leaving_the_unsigned_image() {
        let uki = build_uki(&minimal_pe(0x1000, 0x400), &PARTS).unwrap();
        let mut signed = uki.clone();
        signed.extend_from_slice(&[0u8; 8]); // padding to 8, as signers add
        let table = signed.len() as u32;
        signed.extend_from_slice(&[0x5a; 0x588]);
        write_u32(&mut signed, 0x58 + 112 + 8 * SECURITY_DIRECTORY, table);
        write_u32(&mut signed, 0x58 + 112 + 8 * SECURITY_DIRECTORY + 4, 0x588);
        let unsigned = without_signature(&signed).unwrap();
        let without_checksum = |pe: &[u8]| [&pe[..0x58 + 64], &pe[0x58 + 68..uki.len()]].concat();
        assert_eq!(without_checksum(&unsigned), without_checksum(&uki), "the image before signing, and padding");
        assert_eq!(unsigned.len(), uki.len() + 8);
        assert_eq!(read_u32(&unsigned, 0x58 + 64).unwrap(), pe_checksum(&unsigned, 0x58 + 64));
        assert!(format!("{:#}", without_signature(&unsigned).unwrap_err()).contains("not signed"));
        let mut not_last = signed.clone();
        not_last.push(0);
        assert!(without_signature(&not_last).is_err());
    }

    #[test]
    fn checksum_matches_a_known_image() {
        // The checksum of a file of zeros is its length; one word adds itself.
        let mut image = vec![0u8; 0x100];
        assert_eq!(pe_checksum(&image, 0x40), 0x100);
        image[0] = 0x34;
        image[1] = 0x12;
        image[0x40] = 0xff; // inside the CheckSum field: ignored
        assert_eq!(pe_checksum(&image, 0x40), 0x1234 + 0x100);
    }
}

//! Unified Kernel Images: systemd-stub's PE/COFF image with the kernel, initrd, command line and
//! os-release appended as new sections, the way ukify and `objcopy --add-section` do it. The stub's
//! bytes are kept; new section headers go into the free space after the existing section table, their
//! data is appended at FileAlignment, and their virtual addresses follow the image at SectionAlignment.

use anyhow::{bail, ensure, Context, Result};

const PE32_PLUS_MAGIC: u16 = 0x20b;
const SECTION_HEADER_LEN: usize = 40;
const COFF_HEADER_LEN: usize = 20;
/// Initialized data, readable: what ukify gives every section it adds.
const DATA_SECTION_FLAGS: u32 = 0x0000_0040 | 0x4000_0000;
/// Index of the certificate table (Authenticode signature) among the data directories.
const SECURITY_DIRECTORY: usize = 4;

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

/// Appends `sections` (in order; normally .osrel, .cmdline, .uname, .initrd, .linux) to the stub.
pub fn build_uki(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let pe = parse(stub).context("systemd-stub is not a usable PE32+ image")?;
    let optional = pe.optional_offset;
    let data_directories = read_u32(stub, optional + 108)? as usize;
    if data_directories > SECURITY_DIRECTORY {
        let certificate_size = read_u32(stub, optional + 112 + 8 * SECURITY_DIRECTORY + 4)?;
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

    let mut out = stub.to_vec();
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

/// The section headers of a PE32+ image.
#[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
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

//! Where the machine config comes from, first found wins:
//!
//! 1. A NoCloud volume: a block device (or partition) holding a FAT or ISO-9660 filesystem labelled
//!    CIDATA (or cidata), as clouds and bare-metal provisioners attach it. Its `user-data` is the
//!    machine config; `meta-data`'s `local-hostname` names the node when the config does not. A FAT
//!    volume is read by machined itself (fat.rs); an ISO-9660 one is mounted read-only just long
//!    enough to read the two files, its driver loading on demand (modprobe.rs).
//! 2. An SMBIOS OEM string (type 11) `machined.config=<base64 of the document>`, as a hypervisor or a
//!    BMC can set per machine (QEMU: `-smbios type=11,value=...`).
//!
//! Neither: the node runs on defaults (DHCP on every link, no role).

use crate::config::{self, MachineConfig};
use crate::protocol::{CONFIG_OEM_STRING, CONFIG_VOLUME_LABEL};
use crate::{fat, json, sys};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};

const MOUNT_POINT: &str = "/run/machined/cidata";
const SMBIOS_ENTRIES: &str = "/sys/firmware/dmi/entries";
/// A NoCloud volume's files are a few KiB; anything much larger is not one.
const MAX_DOCUMENT: u64 = 1 << 20;

/// A config document and where it was found.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    /// `cidata:/dev/vdc (vfat)` or `smbios:oem-string`.
    pub source: String,
    pub text: String,
    /// meta-data's `local-hostname` (NoCloud only).
    pub meta_hostname: Option<String>,
}

/// What the node made of its machine config.
pub enum Loaded {
    /// No source: defaults (DHCP everywhere, no role).
    None,
    Valid {
        source: String,
        config: MachineConfig,
        meta_hostname: Option<String>,
    },
    /// Found but unusable: the field and why (a source that could not be read is field `(source)`).
    Invalid {
        source: String,
        error: config::Invalid,
    },
}

impl Loaded {
    pub fn config(&self) -> Option<&MachineConfig> {
        match self {
            Loaded::Valid { config, .. } => Some(config),
            _ => None,
        }
    }

    pub fn meta_hostname(&self) -> Option<String> {
        match self {
            Loaded::Valid { meta_hostname, .. } => meta_hostname.clone(),
            _ => None,
        }
    }

    /// The status's `config` section; `files` is what writing machine.files came to.
    pub fn json(&self, files: &[(String, Option<String>)]) -> json::Object {
        match self {
            Loaded::None => json::Object::new().opt_str("source", None).bool("valid", false).bool("applied", false),
            Loaded::Valid { source, config, .. } => {
                let files = files
                    .iter()
                    .map(|(path, error)| json::Object::new().str("path", path).opt_str("error", error.as_deref()))
                    .collect();
                json::Object::new()
                    .str("source", source)
                    .bool("valid", true)
                    .bool("applied", true)
                    .str("role", config.role.as_str())
                    .opt_str("hostname", config.hostname.as_deref())
                    .str_array("ignored", &config.ignored)
                    .objects("files", files)
            }
            Loaded::Invalid { source, error } => json::Object::new()
                .str("source", source)
                .bool("valid", false)
                .bool("applied", false)
                .object("error", json::Object::new().str("field", &error.field).str("why", &error.why)),
        }
    }
}

/// Finds, reads and checks the machine config (see the module doc).
pub fn load(skip: &[String]) -> Loaded {
    match find(skip) {
        Ok(None) => Loaded::None,
        Ok(Some(found)) => match config::parse(&found.text) {
            Ok(config) => Loaded::Valid { source: found.source, config, meta_hostname: found.meta_hostname },
            Err(error) => Loaded::Invalid { source: found.source, error },
        },
        Err(why) => Loaded::Invalid {
            source: why.split(':').next().unwrap_or_default().to_string(),
            error: config::Invalid { field: "(source)".into(), why },
        },
    }
}

/// Looks for a config; `skip` names block devices that are known not to be one (the scratch disk).
/// Err: a source was found but could not be read (the status reports it like an invalid config).
pub fn find(skip: &[String]) -> Result<Option<Found>, String> {
    if let Some((device, fstype)) = find_volume(skip) {
        return read_volume(&device, fstype).map(Some);
    }
    Ok(read_smbios()?.map(|text| Found { source: "smbios:oem-string".into(), text, meta_hostname: None }))
}

/// Block devices and partitions whose filesystem label is CIDATA: (device path, fstype).
fn find_volume(skip: &[String]) -> Option<(String, &'static str)> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/block")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with("loop") && !n.starts_with("dm-") && !n.starts_with("ram"))
        .filter(|n| !skip.iter().any(|s| n.starts_with(s.as_str())))
        .collect();
    names.sort();
    for name in names {
        let device = format!("/dev/{name}");
        let Ok(mut file) = File::open(&device) else { continue };
        if let Some(fstype) = volume_label_type(&mut file) {
            return Some((device, fstype));
        }
    }
    None
}

/// "vfat" or "iso9660" when the filesystem on `dev` is labelled CIDATA.
fn volume_label_type(dev: &mut File) -> Option<&'static str> {
    let mut boot = [0u8; 512];
    dev.read_exact(&mut boot).ok()?;
    if fat::label(&boot).is_some_and(|l| l.eq_ignore_ascii_case(CONFIG_VOLUME_LABEL)) {
        return Some("vfat");
    }
    let mut descriptor = [0u8; 2048];
    dev.seek(SeekFrom::Start(16 * 2048)).ok()?;
    dev.read_exact(&mut descriptor).ok()?;
    if iso_label(&descriptor).is_some_and(|l| l.eq_ignore_ascii_case(CONFIG_VOLUME_LABEL)) {
        return Some("iso9660");
    }
    None
}

/// The volume identifier of an ISO-9660 primary volume descriptor (sector 16).
pub fn iso_label(descriptor: &[u8; 2048]) -> Option<String> {
    if descriptor[0] != 1 || &descriptor[1..6] != b"CD001" {
        return None;
    }
    Some(String::from_utf8_lossy(&descriptor[40..72]).trim_end().to_string())
}

fn read_volume(device: &str, fstype: &'static str) -> Result<Found, String> {
    let source = format!("cidata:{device} ({fstype})");
    let [user_data, meta_data] = if fstype == "vfat" { read_fat(device) } else { read_mounted(device, fstype) }
        .map_err(|e| format!("{source}: {e}"))?;
    let text = user_data.ok_or_else(|| format!("{source}: the volume has no user-data"))?;
    let meta_hostname = meta_data.as_deref().and_then(meta_local_hostname);
    Ok(Found { source, text, meta_hostname })
}

const DOCUMENTS: [&str; 2] = ["user-data", "meta-data"];

/// The two documents of a FAT volume, read from the device by fat.rs (no driver, no mount).
fn read_fat(device: &str) -> Result<[Option<String>; 2], String> {
    let mut dev = File::open(device).map_err(|e| format!("opening it: {e}"))?;
    let files = fat::read_root_files(&mut dev, &DOCUMENTS, MAX_DOCUMENT)?;
    let mut texts = [None, None];
    for ((text, bytes), name) in texts.iter_mut().zip(files).zip(DOCUMENTS) {
        *text = bytes.map(|b| String::from_utf8(b).map_err(|_| format!("{name} is not UTF-8"))).transpose()?;
    }
    Ok(texts)
}

/// The two documents of an ISO-9660 volume, mounted read-only just long enough to read them (its
/// driver loads on demand).
fn read_mounted(device: &str, fstype: &str) -> Result<[Option<String>; 2], String> {
    fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("creating {MOUNT_POINT}: {e}"))?;
    let flags = sys::MS_RDONLY | sys::MS_NOSUID | sys::MS_NODEV | sys::MS_NOEXEC;
    sys::do_mount(Some(device), MOUNT_POINT, Some(fstype), flags, None)
        .map_err(|e| format!("mounting it read-only: {e}"))?;
    let read = |name: &str| -> Result<Option<String>, String> {
        let path = format!("{MOUNT_POINT}/{name}");
        match fs::metadata(&path) {
            Err(_) => Ok(None),
            Ok(meta) if meta.len() > MAX_DOCUMENT => Err(format!("{name} is over {MAX_DOCUMENT} bytes")),
            Ok(_) => fs::read_to_string(&path).map(Some).map_err(|e| format!("reading {name}: {e}")),
        }
    };
    let texts = [read(DOCUMENTS[0]), read(DOCUMENTS[1])];
    let _ = sys::do_umount(MOUNT_POINT, 0);
    let [user_data, meta_data] = texts;
    Ok([user_data?, meta_data?])
}

/// `local-hostname: <name>` from NoCloud meta-data (a flat YAML map; nothing else is used).
pub fn meta_local_hostname(meta: &str) -> Option<String> {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(meta).ok()?;
    let name = value.get("local-hostname")?.as_str()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// The config from the SMBIOS OEM strings, if one of them carries it.
fn read_smbios() -> Result<Option<String>, String> {
    let Ok(entries) = fs::read_dir(SMBIOS_ENTRIES) else { return Ok(None) };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("11-"))
        .collect();
    names.sort();
    for name in names {
        let Ok(raw) = fs::read(format!("{SMBIOS_ENTRIES}/{name}/raw")) else { continue };
        for string in oem_strings(&raw) {
            if let Some(encoded) = string.strip_prefix(CONFIG_OEM_STRING) {
                let bytes = base64_decode(encoded.trim())
                    .map_err(|e| format!("smbios:oem-string: {CONFIG_OEM_STRING}: not base64: {e}"))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("smbios:oem-string: {CONFIG_OEM_STRING}: the document is not UTF-8"))?;
                return Ok(Some(text));
            }
        }
    }
    Ok(None)
}

/// The strings of one SMBIOS type-11 structure: after the formatted area (its length is byte 1), a
/// set of NUL-terminated strings ended by an empty one.
pub fn oem_strings(raw: &[u8]) -> Vec<String> {
    if raw.len() < 5 || raw[0] != 11 {
        return Vec::new();
    }
    let start = usize::from(raw[1]).min(raw.len());
    raw[start..]
        .split(|b| *b == 0)
        .take_while(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Standard base64 (RFC 4648, with or without padding).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for (i, c) in text.trim_end_matches('=').bytes().enumerate() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("byte {i} ({:?}) is not in the base64 alphabet", c as char)),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_the_alphabet_and_refuses_others() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(base64_decode("aGV*bG8=").unwrap_err().contains("byte 3"));
    }

    #[test]
    fn oem_strings_follow_the_formatted_area() {
        let mut raw = vec![11, 5, 0, 0x0e, 2];
        raw.extend_from_slice(b"io.systemd.credential:foo=bar\0machined.config=aGVsbG8=\0\0");
        assert_eq!(oem_strings(&raw), ["io.systemd.credential:foo=bar", "machined.config=aGVsbG8="]);
        assert!(oem_strings(&[1, 5, 0, 0, 0, 0, 0]).is_empty());
        assert!(oem_strings(&[11, 5, 0, 0, 0, 0, 0]).is_empty());
    }

    #[test]
    fn labels_are_read_from_iso_descriptors() {
        let mut iso = [0u8; 2048];
        iso[0] = 1;
        iso[1..6].copy_from_slice(b"CD001");
        iso[40..72].copy_from_slice(format!("{:32}", "cidata").as_bytes());
        assert_eq!(iso_label(&iso).as_deref(), Some("cidata"));
        iso[1] = b'X';
        assert_eq!(iso_label(&iso), None);
    }

    #[test]
    fn meta_data_names_the_host() {
        assert_eq!(meta_local_hostname("instance-id: i-1\nlocal-hostname: worker-1\n").as_deref(), Some("worker-1"));
        assert_eq!(meta_local_hostname("instance-id: i-1\n"), None);
        assert_eq!(meta_local_hostname("[not, a, map"), None);
    }
}

//! Names the stages agree on: the lock's package sets, the files of an output directory, where
//! extensions and their services live. Each is spelled here once.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A group of packages resolved and locked on its own, for one arch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PackageSet {
    /// The spec's packages with their full closure: the root filesystem.
    Rootfs,
    /// The boards' kernel packages, followed only to the linux-image-* package.
    Kernel,
    /// systemd-boot-efi alone, for the UKI's stub.
    EfiStub,
    /// An extension's packages.toml, unpacked into the extension's own root.
    Extension(String),
}

const EXTENSION_SET_PREFIX: &str = "extension:";

impl PackageSet {
    /// The name the lockfile records: "rootfs", "kernel", "efi-stub", "extension:<name>".
    pub fn name(&self) -> String {
        match self {
            PackageSet::Rootfs => "rootfs".to_string(),
            PackageSet::Kernel => "kernel".to_string(),
            PackageSet::EfiStub => "efi-stub".to_string(),
            PackageSet::Extension(name) => format!("{EXTENSION_SET_PREFIX}{name}"),
        }
    }

    pub fn parse(text: &str) -> Option<PackageSet> {
        match text {
            "rootfs" => Some(PackageSet::Rootfs),
            "kernel" => Some(PackageSet::Kernel),
            "efi-stub" => Some(PackageSet::EfiStub),
            _ => text
                .strip_prefix(EXTENSION_SET_PREFIX)
                .filter(|name| valid_name(name))
                .map(|name| PackageSet::Extension(name.to_string())),
        }
    }
}

impl fmt::Display for PackageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Sets order by the name the lockfile records, so the lock's order never depends on this enum's.
impl Ord for PackageSet {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(&other.name())
    }
}

impl PartialOrd for PackageSet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for PackageSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for PackageSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PackageSet::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a package set (rootfs, kernel, efi-stub or extension:<name>)"
            ))
        })
    }
}

/// The Debian package that carries systemd-stub (linuxx64.efi.stub / linuxaa64.efi.stub).
pub const EFI_STUB_PACKAGE: &str = "systemd-boot-efi";

/// Extension and service names: Talos's service-name rule, which also keeps them safe in file names
/// and in machined's line formats.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
}

/// Where extension directories live, under the overlays directory: `extensions/<name>/`.
pub const EXTENSIONS_DIR: &str = "extensions";

/// The files of an output directory (out/<board>/) besides the artifacts.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SUMS_FILE: &str = "SHA256SUMS";
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// The signed list of every file of a release, signatures included (sign/index.rs).
pub const INDEX_FILE: &str = "index.json";

/// The signature file of `file`: `<file>.minisig`.
pub fn signature_of(file: &str) -> String {
    format!("{file}{SIGNATURE_SUFFIX}")
}

/// An artifact's file name: `<image>-<arch>.<kind>`, e.g. node-arm64.rootfs.sqsh.
pub fn artifact(base: &str, kind: &str) -> String {
    format!("{base}.{kind}")
}

/// The artifact name of an extension's layer, e.g. node-arm64.ext-iscsi-tools.sqsh.
pub fn layer_artifact(base: &str, extension: &str) -> String {
    format!("{base}.ext-{extension}.sqsh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_round_trip_and_order_by_name() {
        for set in
            [PackageSet::Rootfs, PackageSet::Kernel, PackageSet::EfiStub, PackageSet::Extension("iscsi-tools".into())]
        {
            assert_eq!(PackageSet::parse(&set.name()), Some(set.clone()));
        }
        assert_eq!(PackageSet::parse("extension:Bad Name"), None);
        assert_eq!(PackageSet::parse("root"), None);
        let mut sets = vec![PackageSet::Rootfs, PackageSet::Extension("a".into()), PackageSet::EfiStub];
        sets.sort();
        assert_eq!(sets, [PackageSet::EfiStub, PackageSet::Extension("a".into()), PackageSet::Rootfs]);
    }
}

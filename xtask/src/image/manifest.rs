//! `out/<board>/manifest.json`: what was built, from what, with each artifact's size and digest. Signing,
//! verification, boot-test and the build comparison all read it through this one type.

use crate::initramfs::kernel_requirements;
use crate::layers::layer::LayerRecord;
use crate::spec::names::{INDEX_FILE, MANIFEST_FILE, SIGNATURE_SUFFIX, SUMS_FILE};
use crate::spec::Arch;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub image: String,
    pub version: String,
    pub arch: Arch,
    pub board: String,
    pub source_date_epoch: i64,
    /// sha256 of the lockfile the packages came from.
    pub lock_sha256: String,
    pub kernel: String,
    pub cmdline: String,
    /// System extensions baked into the initramfs, in mount order (absent in older manifests).
    #[serde(default)]
    pub extensions: Vec<LayerRecord>,
    /// Modules shipped in the root for the kernel to load on demand (absent in older manifests).
    #[serde(default)]
    pub on_demand_modules: usize,
    /// The kernel's configuration judged against what Kubernetes networking needs.
    #[serde(default)]
    pub kernel_requirements: Option<KernelRequirements>,
    pub artifacts: Vec<Artifact>,
    /// Present when the UKI is signed for Secure Boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<SecureBootRecord>,
}

/// What a Secure Boot build signed with and enrolled.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SecureBootRecord {
    /// SHA-256 of the db certificate (DER) the UKI is signed for.
    pub db_certificate_sha256: String,
    /// The variable store artifact with the key set enrolled (absent for a board without `[secure-boot]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KernelRequirements {
    pub cilium: kernel_requirements::Report,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// A name that is safe to join to the directory and to write into SHA256SUMS: one plain path
/// component, no whitespace or control characters, and not one of the files signing writes.
pub fn check_file_name(name: &str) -> Result<()> {
    check_plain_name(name)?;
    ensure!(
        name != SUMS_FILE && name != INDEX_FILE && !name.ends_with(SIGNATURE_SUFFIX),
        "{name:?} is a name signing itself writes"
    );
    Ok(())
}

/// One plain path component: no directories, whitespace or control characters.
pub fn check_plain_name(name: &str) -> Result<()> {
    ensure!(
        !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains(['/', '\\'])
            && !name.chars().any(|c| c.is_whitespace() || c.is_control()),
        "{name:?} is not a plain file name (no directories, spaces or control characters)"
    );
    Ok(())
}

/// A value that can stand in a `key=value` trusted comment and still be read back.
fn check_comment_value(field: &str, value: &str) -> Result<()> {
    ensure!(
        !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic()),
        "field `{field}` {value:?} must be non-empty printable ASCII without spaces"
    );
    Ok(())
}

pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Manifest {
    /// Parses and checks manifest.json's text; `path` names it in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).with_context(|| format!("{}: not a valid manifest", path.display()))?;
        let in_manifest = |e: anyhow::Error| e.context(format!("{}: invalid manifest", path.display()));
        check_comment_value("image", &manifest.image).map_err(in_manifest)?;
        check_comment_value("version", &manifest.version).map_err(in_manifest)?;
        ensure!(!manifest.artifacts.is_empty(), "{}: lists no artifacts", path.display());
        let mut seen = BTreeSet::new();
        for artifact in &manifest.artifacts {
            check_file_name(&artifact.file)
                .and_then(|()| {
                    ensure!(artifact.file != MANIFEST_FILE, "the manifest cannot list itself");
                    ensure!(seen.insert(artifact.file.as_str()), "listed twice");
                    ensure!(
                        is_sha256_hex(&artifact.sha256),
                        "sha256 {:?} is not 64 lowercase hex digits",
                        artifact.sha256
                    );
                    Ok(())
                })
                .with_context(|| format!("{}: artifact {:?}", path.display(), artifact.file))?;
        }
        if let Some(vars) = manifest.secure_boot.as_ref().and_then(|s| s.vars.as_ref()) {
            ensure!(
                seen.contains(vars.as_str()),
                "{}: field `secure_boot.vars` names {vars:?}, which is not among the artifacts",
                path.display()
            );
        }
        Ok(manifest)
    }

    /// Reads `dir/manifest.json`; returns its bytes (which get signed as they are) and its contents.
    pub fn load_with_bytes(dir: &Path) -> Result<(Vec<u8>, Self)> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let manifest = Self::parse(&bytes, &path)?;
        Ok((bytes, manifest))
    }

    pub fn load(dir: &Path) -> Result<Self> {
        Ok(Self::load_with_bytes(dir)?.1)
    }

    /// The text build-image writes.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self).context("serializing manifest.json")? + "\n")
    }

    /// The trusted comment signed with `file`, e.g.
    /// `image=node version=0.1.0 arch=arm64 file=node-arm64.raw sha256=<hex>`.
    pub fn trusted_comment(&self, file: &str, sha256_hex: &str) -> String {
        format!("image={} version={} arch={} file={file} sha256={sha256_hex}", self.image, self.version, self.arch)
    }

    /// The artifact whose file name ends with `suffix` (".qcow2", ".efi").
    pub fn artifact(&self, suffix: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.file.ends_with(suffix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_must_be_plain() {
        for bad in ["", "..", "a/b", "../x", "a b", "x\ny", "SHA256SUMS", "a.minisig", "index.json"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("node-arm64.rootfs.sqsh").unwrap();
    }
}

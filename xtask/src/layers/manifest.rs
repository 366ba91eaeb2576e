//! Talos's extension `manifest.yaml`: `version: v1alpha1` and the extension's metadata. Unknown keys
//! are ignored, as Talos's own YAML decoder ignores them, so manifests from newer Talos extensions
//! still parse.

use super::yaml;
use crate::spec::names::valid_name;
use anyhow::{bail, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::path::Path;

/// The file's name in an extension directory.
pub const MANIFEST_FILE: &str = "manifest.yaml";
const TALOS_MANIFEST_VERSION: &str = "v1alpha1";

/// `manifest.yaml`; `version` and `metadata.name`/`version` are required.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TalosManifest {
    #[serde(deserialize_with = "scalar")]
    pub version: String,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    #[serde(deserialize_with = "scalar")]
    pub name: String,
    #[serde(deserialize_with = "scalar")]
    pub version: String,
    #[serde(default, deserialize_with = "scalar")]
    pub author: String,
    #[serde(default, deserialize_with = "scalar")]
    pub description: String,
    #[serde(default)]
    pub compatibility: Compatibility,
    #[serde(rename = "extraInfo", default, deserialize_with = "scalar", skip_serializing_if = "String::is_empty")]
    pub extra_info: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Compatibility {
    #[serde(default)]
    pub talos: Constraint,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Constraint {
    #[serde(default, deserialize_with = "scalar")]
    pub version: String,
}

/// A YAML scalar read as text, as Go's decoder reads `version: 1.2` into a string field.
fn scalar<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<String, D::Error> {
    use serde_yaml_ng::Value;
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(serde::de::Error::custom("expected a string, found a list or mapping")),
    }
}

/// `/extensions.yaml` in the initramfs, Talos's `layers:` list.
/// Parses a Talos manifest, checking what Talos and machined rely on. `label` names the extension.
pub fn parse_manifest(text: &str, path: &Path, label: &str) -> Result<TalosManifest> {
    let manifest: TalosManifest =
        serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("{label}: {}", yaml::error(path, &e)))?;
    let at = |key: &str| yaml::at(label, path, text, key);
    if manifest.version != TALOS_MANIFEST_VERSION {
        bail!(
            "{}: field `version`: {:?} is not a Talos extension manifest version (expected {TALOS_MANIFEST_VERSION})",
            at("version"),
            manifest.version
        );
    }
    let metadata = &manifest.metadata;
    if metadata.name.is_empty() {
        bail!("{}: field `metadata.name` must not be empty", at("name"));
    }
    if !valid_name(&metadata.name) {
        bail!(
            "{}: field `metadata.name`: {:?} must be lowercase letters, digits, '-' and '_'",
            at("name"),
            metadata.name
        );
    }
    if metadata.version.is_empty() || metadata.version.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{}: field `metadata.version`: {:?} must be non-empty, without spaces", at("version"), metadata.version);
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TALOS_ISCSI_TOOLS: &str = include_str!("../../../tests/fixtures/talos-iscsi-tools/manifest.yaml");

    #[test]
    fn a_real_talos_manifest_parses() {
        let manifest = parse_manifest(TALOS_ISCSI_TOOLS, Path::new("manifest.yaml"), "extension iscsi-tools").unwrap();
        assert_eq!(manifest.metadata.name, "iscsi-tools");
        assert_eq!(manifest.metadata.author, "Sidero Labs");
        assert_eq!(manifest.metadata.compatibility.talos.version, ">= v1.1.0");
    }

    #[test]
    fn extra_info_and_unknown_keys_are_accepted() {
        let text = "version: v1alpha1\nmetadata:\n  name: x\n  version: 1.2\n  extraInfo: more\n  \
                    futureKey: [1, 2]\nanotherTopLevel: {a: b}\n";
        let manifest = parse_manifest(text, Path::new("m.yaml"), "extension x").unwrap();
        assert_eq!(manifest.metadata.version, "1.2");
        assert_eq!(manifest.metadata.extra_info, "more");
    }

    #[test]
    fn wrong_version_and_missing_name_are_named() {
        let err =
            parse_manifest("version: v1\nmetadata:\n  name: x\n  version: '1'\n", Path::new("m.yaml"), "extension x")
                .unwrap_err()
                .to_string();
        assert!(err.contains("extension x: m.yaml:1: field `version`") && err.contains("v1alpha1"), "{err}");
        let err = parse_manifest("version: v1alpha1\nmetadata:\n  version: '1'\n", Path::new("m.yaml"), "extension x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extension x: m.yaml:") && err.contains("missing field `name`"), "{err}");
    }
}

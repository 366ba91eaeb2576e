//! Extension trees packed as squashfs layers, and what describes them: Talos's `/extensions.yaml`,
//! machined's layer list, and the records manifest.json keeps.

use super::manifest::Metadata;
use crate::rootfs::squashfs;
use crate::spec::protocol::EXTENSION_IMAGES;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An extension's assembled and checked tree, ready to be packed.
pub struct LayerTree {
    pub metadata: Metadata,
    pub tree: PathBuf,
}

/// One extension's finished layer.
pub struct Layer {
    pub metadata: Metadata,
    pub sqsh: PathBuf,
}

/// An extension as manifest.json records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub name: String,
    pub version: String,
}

/// `/extensions.yaml` in the initramfs, Talos's `layers:` list.
#[derive(Serialize)]
struct ExtensionsConfig<'a> {
    layers: Vec<ConfigLayer<'a>>,
}

#[derive(Serialize)]
struct ConfigLayer<'a> {
    image: String,
    metadata: &'a Metadata,
}

/// Makes one extension's squashfs at `sqsh`.
pub fn make(tree: &LayerTree, sqsh: &Path, epoch: i64) -> Result<()> {
    squashfs::make(&tree.tree, sqsh, epoch).with_context(|| format!("extension {}", tree.metadata.name))
}

pub fn records(layers: &[Layer]) -> Vec<LayerRecord> {
    layers.iter().map(|l| LayerRecord { name: l.metadata.name.clone(), version: l.metadata.version.clone() }).collect()
}

/// Where a layer lies in the initramfs: `extensions/<name>.sqsh` (relative, as the cpio holds it).
pub fn image_path(layer: &Layer) -> String {
    format!("{}/{}.sqsh", EXTENSION_IMAGES.trim_start_matches('/'), layer.metadata.name)
}

/// `/extensions.yaml`: Talos's layer list.
pub fn extensions_yaml(layers: &[Layer]) -> Result<String> {
    let config = ExtensionsConfig {
        layers: layers
            .iter()
            .map(|l| ConfigLayer { image: format!("{}.sqsh", l.metadata.name), metadata: &l.metadata })
            .collect(),
    };
    serde_yaml_ng::to_string(&config).context("writing extensions.yaml")
}

/// `/etc/machined/extensions`: one `<name> <version> /extensions/<name>.sqsh` line per layer, in
/// mount order.
pub fn machined_list(layers: &[Layer]) -> String {
    layers.iter().map(|l| format!("{} {} /{}\n", l.metadata.name, l.metadata.version, image_path(l))).collect()
}

//! System extensions in Talos's format: manifest.yaml, service specs and their translation for
//! machined, the extension trees (with Talos's content rules), and the squashfs layers made of them.

pub mod extension;
pub mod layer;
pub mod ldcache;
pub mod manifest;
pub mod service;
pub mod yaml;

//! The image: the build pipeline as numbered steps, the one loader of its inputs, manifest.json,
//! staging and publishing, the SBOM, and the proof that builds are reproducible.

pub mod build;
pub mod compare;
pub mod inputs;
pub mod manifest;
pub mod publish;
pub mod reproducible;
pub mod root_parts;
pub mod sbom;

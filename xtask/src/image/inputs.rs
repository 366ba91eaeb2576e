//! The one loader of a build's inputs: spec → boards → extensions → lock, each checked before anything
//! is fetched or written. lock, fetch, build-image, bench and the reproducibility check start here.

use crate::archive::lock::{ExtensionPackages, LockInputs};
use crate::archive::lockfile::Lock;
use crate::layers::extension::{self, Extension};
use crate::spec::workspace::Workspace;
use crate::spec::{self, Board, ImageSpec};
use anyhow::Result;
use std::path::PathBuf;

pub struct BuildInputs {
    pub spec_path: PathBuf,
    pub spec: ImageSpec,
    pub boards_dir: PathBuf,
    pub boards: Vec<Board>,
    pub extensions: Vec<Extension>,
    extension_packages: Vec<ExtensionPackages>,
}

impl BuildInputs {
    /// Reads and checks the spec, every board and every extension the spec names.
    pub fn load(ws: &Workspace) -> Result<BuildInputs> {
        let spec_path = ws.spec_path();
        let spec = spec::load_spec(&spec_path)?;
        let boards_dir = ws.boards_dir();
        let boards = spec::load_boards(&boards_dir)?;
        let extensions = extension::load(&ws.overlays_dir(), &spec)?;
        let extension_packages = extensions.iter().map(Extension::packages_request).collect();
        Ok(BuildInputs { spec_path, spec, boards_dir, boards, extensions, extension_packages })
    }

    /// What the lock is made from.
    pub fn lock_inputs(&self) -> LockInputs<'_> {
        LockInputs {
            spec_path: &self.spec_path,
            spec: &self.spec,
            boards_dir: &self.boards_dir,
            boards: &self.boards,
            extensions: &self.extension_packages,
        }
    }

    /// The lock beside the spec, checked against these inputs.
    pub fn lock(&self, ws: &Workspace) -> Result<Lock> {
        self.lock_inputs().load_checked(&ws.lock_path())
    }
}

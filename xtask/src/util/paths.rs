//! Where things live: the repository root and the defaults of the global flags.

use crate::Global;
use std::path::{Path, PathBuf};

/// The repository root (the workspace this xtask was built from).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the repository root")
}

impl Global {
    pub fn spec_path(&self) -> PathBuf {
        self.spec.clone().unwrap_or_else(|| repo_root().join("image-spec/node.toml"))
    }

    /// The lockfile sits beside its spec: image-spec/node.toml → image-spec/node.lock.
    pub fn lock_path(&self) -> PathBuf {
        self.spec_path().with_extension("lock")
    }

    pub fn boards_dir(&self) -> PathBuf {
        self.boards_dir.clone().unwrap_or_else(|| repo_root().join("boards"))
    }

    pub fn overlays_dir(&self) -> PathBuf {
        self.overlays_dir.clone().unwrap_or_else(|| repo_root().join("overlays"))
    }

    pub fn out_dir(&self) -> PathBuf {
        self.out_dir.clone().unwrap_or_else(|| repo_root().join("out"))
    }

    pub fn board_out_dir(&self, board: &str) -> PathBuf {
        self.out_dir().join(board)
    }

    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(|| repo_root().join("target"));
        base.join("nodeimg")
    }
}

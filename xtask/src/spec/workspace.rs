//! Where a run's inputs and outputs live: the spec, the boards, the overlays, the output and cache
//! directories, and the Debian archive overrides. tasks/ makes one from the command line; every stage
//! reads its paths from it.

use crate::util::paths::{default_cache_dir, repo_root};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Workspace {
    spec: PathBuf,
    boards_dir: PathBuf,
    overlays_dir: PathBuf,
    out_dir: PathBuf,
    cache_dir: PathBuf,
    /// `--mirror` / XTASK_DEBIAN_MIRROR; None means the host's apt sources decide.
    pub mirror: Option<String>,
    /// `--suite-mirror SUITE=URL` / XTASK_SUITE_MIRRORS entries, unparsed (archive/mirror.rs reads them).
    pub suite_mirrors: Vec<String>,
}

impl Workspace {
    /// The given paths, each defaulting to the repository's own (image-spec/node.toml, boards/,
    /// overlays/, out/) or, for the cache, $XDG_CACHE_HOME/nodeimg or ~/.cache/nodeimg.
    pub fn new(
        spec: Option<PathBuf>,
        boards_dir: Option<PathBuf>,
        overlays_dir: Option<PathBuf>,
        out_dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
        mirror: Option<String>,
        suite_mirrors: Vec<String>,
    ) -> Workspace {
        Workspace {
            spec: spec.unwrap_or_else(|| repo_root().join("image-spec/node.toml")),
            boards_dir: boards_dir.unwrap_or_else(|| repo_root().join("boards")),
            overlays_dir: overlays_dir.unwrap_or_else(|| repo_root().join("overlays")),
            out_dir: out_dir.unwrap_or_else(|| repo_root().join("out")),
            cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
            mirror,
            suite_mirrors,
        }
    }

    /// The same workspace with its own cache and output directories (bench's cold and warm builds).
    pub fn with_cache_and_out(&self, cache_dir: &Path, out_dir: &Path) -> Workspace {
        Workspace { cache_dir: cache_dir.to_path_buf(), out_dir: out_dir.to_path_buf(), ..self.clone() }
    }

    /// The same workspace reading its overlays (and extensions) from `overlays_dir`.
    pub fn with_overlays(&self, overlays_dir: &Path) -> Workspace {
        Workspace { overlays_dir: overlays_dir.to_path_buf(), ..self.clone() }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.spec.clone()
    }

    /// The lockfile sits beside its spec: image-spec/node.toml → image-spec/node.lock.
    pub fn lock_path(&self) -> PathBuf {
        self.spec.with_extension("lock")
    }

    pub fn boards_dir(&self) -> PathBuf {
        self.boards_dir.clone()
    }

    pub fn overlays_dir(&self) -> PathBuf {
        self.overlays_dir.clone()
    }

    pub fn board_out_dir(&self, board: &str) -> PathBuf {
        self.out_dir.join(board)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone()
    }
}

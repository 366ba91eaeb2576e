//! Where the repository is (the defaults of every input path are relative to it), where the cache
//! is by default, and where host tools that are not Debian packages are installed.

use std::path::{Path, PathBuf};

/// The repository root (the workspace this xtask was built from).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the repository root")
}

/// $XDG_CACHE_HOME/nodeimg, else ~/.cache/nodeimg: the download cache unless `--cache-dir` says otherwise.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| repo_root().join("target"));
    base.join("nodeimg")
}

/// Host tools installed outside apt (a pinned PyPI package in its own virtualenv), one directory each.
/// Beside the default cache whatever `--cache-dir` says: like the apt packages, they belong to the
/// host, and builds with their own caches (bench, `--check-reproducible`) share them.
pub fn tools_dir() -> PathBuf {
    default_cache_dir().join("tools")
}

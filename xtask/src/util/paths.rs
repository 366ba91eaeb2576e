//! Where the repository is: the defaults of every input path are relative to it.

use std::path::Path;

/// The repository root (the workspace this xtask was built from).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the repository root")
}

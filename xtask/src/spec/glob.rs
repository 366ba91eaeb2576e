//! The spec's path patterns: `drop-files` (absolute path globs) and `deny-files` (a basename glob, or an
//! absolute path glob). Parsing them here lets a spec with a bad pattern fail when it is loaded.

use anyhow::{bail, Context, Result};

/// How path globs match: `*` and `?` stay within one path component, `**` spans any number.
pub const GLOB_OPTIONS: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

/// An absolute path glob such as `/usr/sbin/e2scrub*`.
pub fn path_glob(pattern: &str) -> Result<glob::Pattern> {
    if !pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
        bail!("{pattern:?} must be an absolute path glob inside the image, like \"/usr/sbin/e2scrub*\"");
    }
    glob::Pattern::new(pattern).with_context(|| format!("{pattern:?} is not a valid glob"))
}

/// A `deny-files` entry: a basename glob (no `/`) or an absolute path glob.
pub enum DenyPattern {
    Basename(glob::Pattern),
    Path(glob::Pattern),
}

impl DenyPattern {
    pub fn parse(pattern: &str) -> Result<DenyPattern> {
        if pattern.is_empty() {
            bail!("an empty entry matches nothing");
        }
        if pattern.contains('/') {
            Ok(DenyPattern::Path(path_glob(pattern)?))
        } else {
            Ok(DenyPattern::Basename(
                glob::Pattern::new(pattern).with_context(|| format!("{pattern:?} is not a valid glob"))?,
            ))
        }
    }

    /// Whether a file with this basename, known by these absolute paths, matches.
    pub fn matches(&self, basename: &str, paths: &[String]) -> bool {
        match self {
            DenyPattern::Basename(p) => p.matches_with(basename, GLOB_OPTIONS),
            DenyPattern::Path(p) => paths.iter().any(|path| p.matches_with(path, GLOB_OPTIONS)),
        }
    }
}

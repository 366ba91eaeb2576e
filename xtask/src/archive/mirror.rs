//! Which Debian mirror to use. The repository never names one: `--mirror` / XTASK_DEBIAN_MIRROR wins,
//! else the host's own apt sources say where Debian lives for this machine (a local mirror, a proxy,
//! a snapshot), which is what the developer's apt already trusts and reaches.

use crate::util::host;
use anyhow::{Context, Result};

/// The mirror base URL (no trailing slash) to download `suite` from.
pub fn resolve(flag: Option<&str>, suite: &str) -> Result<String> {
    if let Some(url) = flag {
        return host::normalize(url).context("in --mirror / XTASK_DEBIAN_MIRROR");
    }
    host::host_uri(suite)
        .with_context(|| format!("no Debian mirror for suite {suite:?}: pass --mirror URL or set XTASK_DEBIAN_MIRROR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_checked_and_normalised() {
        assert!(resolve(Some("ftp://x.invalid/debian"), "bookworm").is_err());
        assert_eq!(resolve(Some("http://x.invalid/debian/"), "bookworm").unwrap(), "http://x.invalid/debian");
    }
}

//! Which Debian archive each suite comes from. The repository never names one. Per suite:
//! `--suite-mirror SUITE=URL` / XTASK_SUITE_MIRRORS wins; then `--mirror URL` / XTASK_DEBIAN_MIRROR for
//! every suite; else the host's own apt sources, which say where Debian lives for this machine (a
//! local mirror, a proxy, a snapshot) and are what the developer's apt already trusts and reaches. A
//! suite the host does not list (trixie on a bookworm host) comes from the host source that serves the
//! same kind of suite: the release, its -updates, its -security (Debian serves each kind of every
//! release from one archive: the security suites from the security archive).

use crate::spec::workspace::Workspace;
use crate::util::host::{self, SourceEntry};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// The kinds of suite an archive serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuiteKind {
    Release,
    Updates,
    Security,
    Backports,
}

impl SuiteKind {
    pub fn of(suite: &str) -> SuiteKind {
        if suite.ends_with("-security") {
            SuiteKind::Security
        } else if suite.ends_with("-updates") {
            SuiteKind::Updates
        } else if suite.ends_with("-backports") || suite.ends_with("-backports-sloppy") {
            SuiteKind::Backports
        } else {
            SuiteKind::Release
        }
    }
}

/// The archive overrides of a run.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    /// `--mirror`: the archive for every suite without its own.
    pub all: Option<String>,
    /// `--suite-mirror SUITE=URL`.
    pub per_suite: BTreeMap<String, String>,
}

impl Mirrors {
    /// Parses `SUITE=URL` entries (from `--suite-mirror` or XTASK_SUITE_MIRRORS).
    pub fn new(all: Option<String>, per_suite: &[String]) -> Result<Mirrors> {
        let mut map = BTreeMap::new();
        for entry in per_suite {
            let Some((suite, url)) = entry.split_once('=') else {
                bail!("--suite-mirror / XTASK_SUITE_MIRRORS: {entry:?} is not SUITE=URL");
            };
            let url = host::normalize(url).with_context(|| format!("--suite-mirror / XTASK_SUITE_MIRRORS: {suite}"))?;
            map.insert(suite.trim().to_string(), url);
        }
        Ok(Mirrors { all, per_suite: map })
    }

    /// The overrides a workspace was given.
    pub fn of(ws: &Workspace) -> Result<Mirrors> {
        Mirrors::new(ws.mirror.clone(), &ws.suite_mirrors)
    }

    /// The archive root URL (no trailing slash) to download `suite` from.
    pub fn uri(&self, suite: &str) -> Result<String> {
        if let Some(url) = self.per_suite.get(suite) {
            return Ok(url.clone());
        }
        if let Some(url) = &self.all {
            return host::normalize(url).context("in --mirror / XTASK_DEBIAN_MIRROR");
        }
        let entries = host::read_host_sources()?;
        pick(&entries, suite).with_context(|| {
            format!(
                "no Debian archive for suite {suite:?}: the host's apt sources list neither it nor another {} \
                 suite with an http(s) URI; pass --suite-mirror {suite}=URL (or --mirror URL for every suite)",
                match SuiteKind::of(suite) {
                    SuiteKind::Release => "release",
                    SuiteKind::Updates => "-updates",
                    SuiteKind::Security => "-security",
                    SuiteKind::Backports => "-backports",
                }
            )
        })
    }
}

/// The host source for `suite`: one that lists it, else one that lists a suite of the same kind.
pub fn pick(entries: &[SourceEntry], suite: &str) -> Option<String> {
    host::pick(entries, suite).or_else(|| {
        let kind = SuiteKind::of(suite);
        entries
            .iter()
            .filter(|entry| entry.suites.iter().any(|s| SuiteKind::of(s) == kind))
            .flat_map(|entry| entry.uris.iter())
            .find_map(|uri| host::normalize(uri).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_not_on_the_host_come_from_the_source_of_their_kind() {
        let entries = host::parse_deb822(
            "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm bookworm-updates\n\n\
             Types: deb\nURIs: http://s.invalid/debian-security\nSuites: bookworm-security\n",
            "debian.sources",
        );
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("http://m.invalid/debian"));
        assert_eq!(pick(&entries, "trixie").as_deref(), Some("http://m.invalid/debian"));
        assert_eq!(pick(&entries, "trixie-updates").as_deref(), Some("http://m.invalid/debian"));
        assert_eq!(pick(&entries, "trixie-security").as_deref(), Some("http://s.invalid/debian-security"));
        assert_eq!(pick(&entries, "trixie-backports"), None);
    }

    #[test]
    fn overrides_per_suite_then_for_all() {
        let mirrors =
            Mirrors::new(Some("http://all.invalid/debian/".into()), &["trixie-security=http://s.invalid/x/".into()])
                .unwrap();
        assert_eq!(mirrors.uri("trixie-security").unwrap(), "http://s.invalid/x");
        assert_eq!(mirrors.uri("trixie").unwrap(), "http://all.invalid/debian");
        assert!(Mirrors::new(None, &["trixie".into()]).is_err());
        assert!(Mirrors::new(None, &["trixie=ftp://x.invalid".into()]).is_err());
        let bad = Mirrors { all: Some("ftp://x.invalid/debian".into()), per_suite: BTreeMap::new() };
        assert!(bad.uri("bookworm").is_err());
    }
}

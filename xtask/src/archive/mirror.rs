//! Which Debian mirror to use. The repository never names one: `--mirror` / XTASK_DEBIAN_MIRROR wins,
//! else the host's own apt sources say where Debian lives for this machine (a local mirror, a proxy,
//! a snapshot), which is what the developer's apt already trusts and reaches.

use anyhow::{bail, Context, Result};
use std::path::Path;

const SOURCES_LIST: &str = "/etc/apt/sources.list";
const SOURCES_DIR: &str = "/etc/apt/sources.list.d";

/// One `deb` entry from the apt configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    /// Where it was read, for error messages: "file:line".
    pub origin: String,
}

/// The mirror base URL (no trailing slash) to download `suite` from.
pub fn resolve(flag: Option<&str>, suite: &str) -> Result<String> {
    if let Some(url) = flag {
        return normalize(url).context("in --mirror / XTASK_DEBIAN_MIRROR");
    }
    let entries = read_host_sources()?;
    pick(&entries, suite).with_context(|| {
        format!(
            "no Debian mirror for suite {suite:?}: none of the `deb` entries in {SOURCES_LIST} or \
             {SOURCES_DIR}/*.sources lists suite {suite:?} with an http(s) URI; \
             pass --mirror URL or set XTASK_DEBIAN_MIRROR"
        )
    })
}

/// The URI of the first entry whose Suites include `suite` exactly (so "bookworm" never picks the
/// bookworm-security or bookworm-updates archives, which hold only a few packages).
pub fn pick(entries: &[SourceEntry], suite: &str) -> Option<String> {
    entries
        .iter()
        .filter(|entry| entry.suites.iter().any(|s| s == suite))
        .flat_map(|entry| entry.uris.iter())
        .find_map(|uri| normalize(uri).ok())
}

/// Checks the URL is http(s) and drops trailing slashes, so paths can be appended with `/`.
pub fn normalize(url: &str) -> Result<String> {
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("mirror {url:?} is not an http:// or https:// URL");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// All `deb` entries of the host, in apt's order: sources.list, then sources.list.d by file name.
fn read_host_sources() -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    let list = Path::new(SOURCES_LIST);
    if list.exists() {
        let text = std::fs::read_to_string(list).with_context(|| format!("cannot read {SOURCES_LIST}"))?;
        entries.extend(parse_one_line(&text, SOURCES_LIST));
    }
    let dir = Path::new(SOURCES_DIR);
    if dir.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {SOURCES_DIR}"))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {SOURCES_DIR}"))?;
        files.sort();
        for path in files {
            let ext = path.extension().and_then(|e| e.to_str());
            if ext != Some("sources") && ext != Some("list") {
                continue;
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let origin = path.display().to_string();
            if ext == Some("sources") {
                entries.extend(parse_deb822(&text, &origin));
            } else {
                entries.extend(parse_one_line(&text, &origin));
            }
        }
    }
    Ok(entries)
}

/// Parses the one-line format: `deb [opt=val ...] URI SUITE [COMPONENT...]`.
pub fn parse_one_line(text: &str, origin: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            // Options such as [signed-by=...] come before the URI.
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        entries.push(SourceEntry {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            origin: format!("{origin}:{}", index + 1),
        });
    }
    entries
}

/// Parses deb822 `.sources` stanzas (Types, URIs, Suites, Enabled), skipping deb-src-only and
/// disabled ones.
pub fn parse_deb822(text: &str, origin: &str) -> Vec<SourceEntry> {
    let mut entries = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut start_line = 1;
    let mut finish = |fields: &mut Vec<(String, String)>, start_line: usize| {
        if fields.is_empty() {
            return;
        }
        let get =
            |name: &str| fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str());
        let words = |name: &str| get(name).map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        let is_deb = words("Types").is_some_and(|types| types.iter().any(|t| t == "deb"));
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        if is_deb && enabled {
            entries.push(SourceEntry {
                uris: words("URIs").unwrap_or_default(),
                suites: words("Suites").unwrap_or_default(),
                origin: format!("{origin}:{start_line}"),
            });
        }
        fields.clear();
    };
    for (index, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            finish(&mut fields, start_line);
            continue;
        }
        if fields.is_empty() {
            start_line = index + 1;
        }
        if line.starts_with([' ', '\t']) {
            // Continuation line: URIs and Suites may span several lines.
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    finish(&mut fields, start_line);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment between fields
URIs: http://mirror.invalid/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.invalid/debian
Suites: trixie

Types: deb
Enabled: no
URIs: http://disabled.invalid/debian
Suites: trixie
";

    #[test]
    fn deb822_takes_deb_entries_and_skips_disabled_and_src() {
        let entries = parse_deb822(DEB822, "x.sources");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].uris, ["http://mirror.invalid/debian/"]);
        assert_eq!(entries[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(entries[0].origin, "x.sources:1");
        assert_eq!(entries[1].suites, ["bookworm-security"]);
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("http://mirror.invalid/debian"));
        assert_eq!(pick(&entries, "bookworm-security").as_deref(), Some("http://mirror.invalid/debian-security"));
        assert_eq!(pick(&entries, "trixie"), None);
    }

    #[test]
    fn deb822_continuation_lines() {
        let text = "Types: deb\nURIs:\n http://a.invalid/debian\nSuites: sid\n";
        let entries = parse_deb822(text, "y.sources");
        assert_eq!(pick(&entries, "sid").as_deref(), Some("http://a.invalid/debian"));
    }

    #[test]
    fn one_line_format_with_options_and_comments() {
        let text = "\
# deb http://commented.invalid/debian bookworm main
deb-src http://src.invalid/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://security.invalid/debian-security bookworm-security main
deb http://mirror.invalid/debian bookworm main contrib # trailing comment
";
        let entries = parse_one_line(text, "sources.list");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].origin, "sources.list:4");
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("http://mirror.invalid/debian"));
    }

    #[test]
    fn non_http_uris_are_skipped_and_flag_is_checked() {
        let entries =
            parse_one_line("deb cdrom:[Debian]/ bookworm main\ndeb https://m.invalid/d/ bookworm main\n", "l");
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("https://m.invalid/d"));
        assert!(resolve(Some("ftp://x.invalid/debian"), "bookworm").is_err());
        assert_eq!(resolve(Some("http://x.invalid/debian/"), "bookworm").unwrap(), "http://x.invalid/debian");
    }
}

//! The host: its apt sources (where Debian lives for this machine) and the host tools every task runs,
//! with the Debian package behind each and the one place that installs what is missing, saying so.
//! A fresh machine needs nothing installed by hand. Each stage lists its own tools next to the code
//! that runs them; tasks/host_tools.rs gathers them.

use super::cmd::cmd;
use super::deb822;
use super::paths::tools_dir;
use super::progress;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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
pub fn read_host_sources() -> Result<Vec<SourceEntry>> {
    let mut entries = Vec::new();
    let list = Path::new(SOURCES_LIST);
    if list.exists() {
        let text = std::fs::read_to_string(list).with_context(|| format!("reading {SOURCES_LIST}"))?;
        entries.extend(parse_one_line(&text, SOURCES_LIST));
    }
    let dir = Path::new(SOURCES_DIR);
    if dir.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {SOURCES_DIR}"))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {SOURCES_DIR}"))?;
        files.sort();
        for path in files {
            let ext = path.extension().and_then(|e| e.to_str());
            if ext != Some("sources") && ext != Some("list") {
                continue;
            }
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
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
    deb822::paragraphs(text)
        .into_iter()
        .filter(|p| p.words("Types").is_some_and(|types| types.iter().any(|t| t == "deb")))
        .filter(|p| p.get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no")))
        .map(|p| SourceEntry {
            uris: p.words("URIs").unwrap_or_default(),
            suites: p.words("Suites").unwrap_or_default(),
            origin: format!("{origin}:{}", p.line),
        })
        .collect()
}

/// The http(s) URI the host's apt sources give for `suite`, or an error saying none does.
pub fn host_uri(suite: &str) -> Result<String> {
    let entries = read_host_sources()?;
    pick(&entries, suite).with_context(|| {
        format!(
            "none of the `deb` entries in {SOURCES_LIST} or {SOURCES_DIR}/*.sources lists suite {suite:?} with an \
             http(s) URI"
        )
    })
}

/// Something the host must have: a file (a program, a firmware image, a library) and what provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// An absolute path, or a program name looked up on PATH.
    pub file: String,
    /// The Debian package that provides it (with `:arm64` for foreign-arch packages), or for
    /// [`Source::Pip`] the pinned PyPI requirement ("virt-firmware==26.10").
    pub package: String,
    /// What needs it, for the message.
    pub why: &'static str,
    pub source: Source,
}

/// Where a requirement comes from, and so how its presence is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Debian package, present when `file` is.
    Apt,
    /// A Debian package without a file worth naming (python3-venv), present when dpkg says installed.
    AptPackage,
    /// A pinned PyPI package in its own virtualenv under [`tools_dir`], made with Debian's python3;
    /// present when its install finished and `file` (its program) is there.
    Pip,
}

pub fn req(file: impl Into<String>, package: impl Into<String>, why: &'static str) -> Requirement {
    Requirement { file: file.into(), package: package.into(), why, source: Source::Apt }
}

/// A Debian package that must be installed (checked with dpkg, not by a file).
pub fn pkg_req(package: &str, why: &'static str) -> Requirement {
    Requirement { file: package.to_string(), package: package.to_string(), why, source: Source::AptPackage }
}

/// `program` from the pinned PyPI requirement `spec` ("virt-firmware==26.10"), pip-installed into a
/// virtualenv of its own when missing. Run it as [`pip_program`]`(spec, program)`.
pub fn pip_req(spec: &str, program: &str, why: &'static str) -> Requirement {
    Requirement {
        file: pip_program(spec, program).display().to_string(),
        package: spec.to_string(),
        why,
        source: Source::Pip,
    }
}

/// Where [`pip_req`] installs `program` of `spec`: tools_dir()/<name>-<version>/bin/<program>.
pub fn pip_program(spec: &str, program: &str) -> PathBuf {
    venv_dir(spec).join("bin").join(program)
}

fn venv_dir(spec: &str) -> PathBuf {
    tools_dir().join(spec.replace("==", "-"))
}

/// Written last into a virtualenv: without it, an install was interrupted and is done again.
const INSTALLED_MARKER: &str = ".installed";
/// Debian's interpreter (not whichever python3 is first on PATH) makes the virtualenvs.
const PYTHON: &str = "/usr/bin/python3";

fn present(r: &Requirement) -> bool {
    match r.source {
        Source::Apt if r.file.starts_with('/') => Path::new(&r.file).exists(),
        Source::Apt => super::cmd::Cmd::exists(&r.file),
        Source::AptPackage => cmd("dpkg-query")
            .args(["-W", "-f=${Status}", &r.package])
            .read()
            .is_ok_and(|status| status.trim_end().ends_with(" installed")),
        Source::Pip => venv_dir(&r.package).join(INSTALLED_MARKER).exists() && Path::new(&r.file).exists(),
    }
}

/// Installs what every missing requirement needs (apt packages, then pip packages), or does nothing
/// when all are present.
pub fn ensure(reqs: &[Requirement]) -> Result<()> {
    let missing: Vec<&Requirement> = reqs.iter().filter(|r| !present(r)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pip: Vec<&Requirement> = missing.iter().copied().filter(|r| r.source == Source::Pip).collect();
    let mut apt: Vec<Requirement> = missing.iter().filter(|r| r.source != Source::Pip).map(|r| (*r).clone()).collect();
    if !pip.is_empty() {
        let python = [
            req(PYTHON, "python3", "making virtualenvs for pip-installed host tools"),
            pkg_req("python3-venv", "making virtualenvs for pip-installed host tools"),
        ];
        apt.extend(python.into_iter().filter(|r| !present(r)));
    }
    install_apt(&apt)?;
    let mut done = Vec::new();
    for r in pip {
        if !done.contains(&&r.package) {
            install_pip(r)?;
            done.push(&r.package);
        }
    }
    let still: Vec<&str> = reqs.iter().filter(|r| !present(r)).map(|r| r.file.as_str()).collect();
    if !still.is_empty() {
        bail!("installed the missing host tools but still missing: {}", still.join(", "));
    }
    Ok(())
}

fn install_apt(missing: &[Requirement]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|r| r.package.clone()).collect();
    packages.sort();
    packages.dedup();
    for r in missing {
        progress::note(format!("installing {} for {} (missing {})", r.package, r.why, r.file));
    }
    if !is_root() {
        bail!(
            "host tools are missing and installing them needs root: run `sudo apt-get install {}`",
            packages.join(" ")
        );
    }
    if packages.iter().any(|p| p.ends_with(":arm64")) {
        add_foreign_arch("arm64")?;
    }
    let packages = with_qemu_from_backports(packages)?;
    progress::note("running apt-get update");
    cmd("apt-get").args(["update", "-q"]).run().context("apt-get update")?;
    progress::note(format!("running apt-get install {}", packages.join(" ")));
    cmd("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("installing host tools {}", packages.join(" ")))
}

/// A fresh virtualenv (Debian's python3 forbids pip in the system one, PEP 668) with the pinned
/// requirement installed by pip from PyPI, saying so.
fn install_pip(r: &Requirement) -> Result<()> {
    let dir = venv_dir(&r.package);
    progress::note(format!(
        "installing {} with pip into {} for {} (missing {})",
        r.package,
        dir.display(),
        r.why,
        r.file
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing the unfinished {}", dir.display()))?;
    }
    cmd(PYTHON)
        .args(["-m", "venv"])
        .arg(&dir)
        .run()
        .with_context(|| format!("creating the virtualenv {}", dir.display()))?;
    cmd(dir.join("bin/python3"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", &r.package])
        .run()
        .with_context(|| format!("installing {} with pip", r.package))?;
    std::fs::write(dir.join(INSTALLED_MARKER), &r.package)
        .with_context(|| format!("writing {}", dir.join(INSTALLED_MARKER).display()))
}

/// A tool Debian does not package (Garage), built from crates.io with `cargo install --locked` at
/// `version` into `root` once, saying so, and reused from there: `root/bin/<krate>`.
pub fn cargo_tool(krate: &str, version: &str, root: &Path, why: &str) -> Result<std::path::PathBuf> {
    let binary = root.join("bin").join(krate);
    if binary.is_file() {
        return Ok(binary);
    }
    progress::note(format!(
        "installing {krate} {version} for {why}: `cargo install --locked` into {} (once; it compiles for many minutes)",
        root.display()
    ));
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let target = root.join("build");
    // Run from the tool's own directory, so no project's .cargo/config.toml applies, with a target
    // directory of its own whatever CARGO_TARGET_DIR says.
    cmd("cargo")
        .args(["install", "--locked", "--version", version, "--root"])
        .arg(root)
        .arg("--target-dir")
        .arg(&target)
        .arg(krate)
        .dir(root)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .run()
        .with_context(|| format!("installing {krate} {version} with cargo"))?;
    let _ = std::fs::remove_dir_all(&target);
    if !binary.is_file() {
        bail!("cargo installed {krate} {version} but {} is missing", binary.display());
    }
    progress::note(format!("installed {}", binary.display()));
    Ok(binary)
}

fn is_root() -> bool {
    cmd("id").arg("-u").read().map(|uid| uid.trim() == "0").unwrap_or(false)
}

fn add_foreign_arch(arch: &str) -> Result<()> {
    let archs = cmd("dpkg").arg("--print-foreign-architectures").read()?;
    if !archs.lines().any(|a| a.trim() == arch) {
        progress::note(format!("adding the {arch} architecture to dpkg (for cross-compiling machined)"));
        cmd("dpkg").args(["--add-architecture", arch]).run()?;
    }
    Ok(())
}

/// Some hosts ship qemu-utils from bookworm-backports (10.0), and bookworm's own qemu-system 7.2 is then
/// refused ("qemu-utils Breaks qemu-system-common (<8.0)"). Then the emulator must come from backports
/// too; the backports source reuses the URI of the host's existing Debian source (no mirror is
/// hard-coded). Only the qemu packages come from backports: pinning everything there would upgrade
/// systemd.
fn with_qemu_from_backports(packages: Vec<String>) -> Result<Vec<String>> {
    if !packages.iter().any(|p| p.starts_with("qemu-system-")) {
        return Ok(packages);
    }
    let installed = cmd("dpkg-query").args(["-W", "-f=${Version}", "qemu-utils"]).read().unwrap_or_default();
    if !installed.contains("bpo") {
        return Ok(packages);
    }
    let suite = cmd("sh").args(["-c", ". /etc/os-release && echo $VERSION_CODENAME"]).read()?.trim().to_string();
    let backports = format!("{suite}-backports");
    let source = Path::new("/etc/apt/sources.list.d/nodeimg-backports.sources");
    if !source.exists() && !apt_sources_mention(&backports)? {
        let uri = host_uri(&suite).context("finding the Debian mirror for backports")?;
        progress::note(format!("adding {backports} (from {uri}) to apt sources, for qemu-system matching qemu-utils"));
        let text = format!(
            "Types: deb\nURIs: {uri}\nSuites: {backports}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        std::fs::write(source, text).with_context(|| format!("writing {}", source.display()))?;
    }
    let mut out = Vec::new();
    for p in packages {
        if p.starts_with("qemu-system-") {
            out.push(format!("{p}/{backports}"));
        } else {
            out.push(p);
        }
    }
    for p in ["qemu-system-common", "qemu-system-data", "seabios"] {
        out.push(format!("{p}/{backports}"));
    }
    Ok(out)
}

fn apt_sources_mention(suite: &str) -> Result<bool> {
    Ok(read_host_sources()?.iter().any(|entry| entry.suites.iter().any(|s| s == suite)))
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
    fn pip_tools_live_in_a_virtualenv_named_after_the_pinned_version() {
        let r = pip_req("virt-firmware==26.10", "virt-fw-vars", "test");
        assert!(r.file.ends_with("/nodeimg/tools/virt-firmware-26.10/bin/virt-fw-vars"), "{}", r.file);
        assert_eq!(r.file, pip_program("virt-firmware==26.10", "virt-fw-vars").display().to_string());
        assert_eq!(r.source, Source::Pip);
        assert!(present(&pkg_req("dpkg", "test")), "dpkg is installed wherever dpkg-query runs");
        assert!(!present(&pkg_req("no-such-package-xyz", "test")));
    }

    #[test]
    fn non_http_uris_are_skipped() {
        let entries =
            parse_one_line("deb cdrom:[Debian]/ bookworm main\ndeb https://m.invalid/d/ bookworm main\n", "l");
        assert_eq!(pick(&entries, "bookworm").as_deref(), Some("https://m.invalid/d"));
        assert!(normalize("ftp://x.invalid/debian").is_err());
        assert_eq!(normalize("http://x.invalid/debian/").unwrap(), "http://x.invalid/debian");
    }
}

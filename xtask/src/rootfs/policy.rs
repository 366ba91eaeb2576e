//! The no-shell policy, enforced at build time on the root tree and on every extension tree before
//! anything is published. A node is managed through its API, never interactively, so no layer may hold
//! a shell (or a multi-call binary that is one), a script that needs one, an SSH server or client, or a
//! login program; the spec can deny more files (`deny-files`). Each refusal names the file and the
//! package or overlay it came from, so the fix (an exclude, a `drop-files` entry) is obvious.
//!
//! Also here: the content rules every layer follows, as Talos's extensions do (no setuid or setgid
//! file, nothing world-writable but sticky directories; a directory Debian ships setgid, such as
//! bookworm's /var/local, is normalised), and `drop-files`, which removes package files a shell-less
//! node has no use for.

use crate::spec::glob::{path_glob, DenyPattern, GLOB_OPTIONS};
use crate::spec::protocol::SERVICE_ROOTS;
use crate::spec::ImageSpec;
use crate::util::tree::{origin, Provenance};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Shells and multi-call binaries that contain one, by basename.
const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "dash", "ash", "ksh", "ksh93", "mksh", "lksh", "zsh", "csh", "tcsh", "fish", "yash", "posh",
    "sash", "busybox", "toybox",
];
/// SSH servers and clients, by basename.
const REMOTE_LOGIN: &[&str] = &["sshd", "ssh", "scp", "sftp", "sftp-server", "dropbear", "dropbearmulti", "dbclient"];
/// Programs whose job is to log a person in or switch to another user, by basename.
const LOGIN: &[&str] = &["getty", "agetty", "mingetty", "login", "su", "sudo", "doas"];

/// Where the policy is stated, for messages.
const POLICY_NAME: &str = "no-shell policy";

/// How many violations an error lists before summarising the rest.
const LISTED: usize = 20;

/// Documentation no one on a node can read (there is no shell, pager or man): change logs, release
/// notes, manuals, info pages and translations, in the root and in every extension (6 MB of files, half
/// of them in the extensions, read by the firmware on every boot). The packages' copyright files stay:
/// they are the licences the image is distributed under.
const DOCUMENTATION: &[&str] = &[
    "/usr/share/doc/*/changelog*",
    "/usr/share/doc/*/NEWS*",
    "/usr/share/doc/*/README*",
    "/usr/share/doc/*/TODO*",
    "/usr/share/doc/**/*.html",
    "/usr/share/doc/*/*/**",
    "/usr/share/man",
    "/usr/share/info",
    "/usr/share/locale",
];

/// Removes everything under `tree` that matches one of `patterns` (absolute globs, as seen from
/// `tree`'s root) or [`DOCUMENTATION`], in one walk, dropping it from `provenance` too. A pattern that
/// matches nothing is an error naming `origin` (the file and field it came from): it is a typo or no
/// longer needed; the documentation is removed wherever it is there. Returns how many entries were
/// removed.
pub fn drop_files(tree: &Path, patterns: &[String], provenance: &mut Provenance, origin: &str) -> Result<usize> {
    let mut compiled: Vec<glob::Pattern> =
        patterns.iter().map(|p| path_glob(p).with_context(|| origin.to_string())).collect::<Result<_>>()?;
    for pattern in DOCUMENTATION {
        compiled.push(path_glob(pattern)?);
    }
    let mut hits = vec![0usize; compiled.len()];
    let mut doomed: Vec<(PathBuf, bool)> = Vec::new();
    let mut walk = walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name().into_iter();
    while let Some(entry) = walk.next() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let rel = entry.path().strip_prefix(tree)?.to_path_buf();
        let shown = format!("/{}", rel.display());
        let mut matched = false;
        for (pattern, count) in compiled.iter().zip(hits.iter_mut()) {
            if pattern.matches_with(&shown, GLOB_OPTIONS) {
                *count += 1;
                matched = true;
            }
        }
        if matched {
            let is_dir = entry.file_type().is_dir();
            if is_dir {
                walk.skip_current_dir();
            }
            doomed.push((rel, is_dir));
        }
    }
    if let Some(unused) = hits[..patterns.len()].iter().position(|&n| n == 0) {
        bail!("{origin}: {:?} matches nothing in {}; remove the entry", patterns[unused], tree.display());
    }
    for (rel, is_dir) in &doomed {
        let path = tree.join(rel);
        if *is_dir {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        } else {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        provenance.retain(|recorded, _| !recorded.starts_with(rel));
    }
    Ok(doomed.len())
}

/// The built-in lists plus the spec's `deny-files`.
pub struct Policy {
    deny: Vec<(String, DenyPattern)>,
}

impl Policy {
    pub fn from_spec(spec: &ImageSpec) -> Result<Policy> {
        let deny = spec
            .deny_files
            .iter()
            .map(|p| Ok((p.clone(), DenyPattern::parse(p).with_context(|| format!("deny-files entry {p:?}"))?)))
            .collect::<Result<_>>()?;
        Ok(Policy { deny })
    }

    /// Checks every file and symlink under `tree` (`what` names the layer in the error, e.g. "the
    /// root filesystem" or "extension iscsi-tools"); fails listing each forbidden file with its origin.
    /// Paths inside an extension's container root (`/usr/local/lib/containers/<name>/…`) are also
    /// matched as the service sees them, so a `deny-files` path applies there as well.
    pub fn check_tree(&self, tree: &Path, what: &str, provenance: &Provenance) -> Result<()> {
        let mut violations = Vec::new();
        for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
            let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
            if entry.file_type().is_dir() {
                continue;
            }
            let rel = entry.path().strip_prefix(tree)?;
            if let Some(reason) = self.judge(entry.path(), rel, entry.file_type().is_file())? {
                violations.push(format!("/{} ({}): {reason}", rel.display(), origin(provenance, rel)));
            }
        }
        if violations.is_empty() {
            return Ok(());
        }
        let total = violations.len();
        let mut listing = violations.into_iter().take(LISTED).collect::<Vec<_>>().join("\n  ");
        if total > LISTED {
            listing.push_str(&format!("\n  … and {} more", total - LISTED));
        }
        bail!(
            "{POLICY_NAME}: {what} contains {total} forbidden file{}:\n  {listing}\n\
             exclude the package (spec `exclude-packages`, or the extension's packages.toml), or remove the \
             file (`drop-files`)",
            if total == 1 { "" } else { "s" }
        )
    }

    /// Why `path` (at `rel` in its layer) is forbidden, if it is.
    fn judge(&self, path: &Path, rel: &Path, regular_file: bool) -> Result<Option<String>> {
        let basename = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if SHELLS.contains(&basename) {
            return Ok(Some(format!("a shell (`{basename}`)")));
        }
        if REMOTE_LOGIN.contains(&basename) {
            return Ok(Some(format!("an SSH server or client (`{basename}`)")));
        }
        if LOGIN.contains(&basename) {
            return Ok(Some(format!("a login program (`{basename}`)")));
        }
        let paths = views(rel);
        if let Some((pattern, _)) = self.deny.iter().find(|(_, p)| p.matches(basename, &paths)) {
            return Ok(Some(format!("on the spec's deny-files list ({pattern:?})")));
        }
        if regular_file {
            if let Some(line) = shell_shebang(path)? {
                return Ok(Some(format!("a script for a shell ({line})")));
            }
        }
        Ok(None)
    }
}

/// The absolute paths a file is known by: in its layer, and inside an extension's container root.
fn views(rel: &Path) -> Vec<String> {
    let mut paths = vec![format!("/{}", rel.display())];
    if let Ok(inside) = rel.strip_prefix(SERVICE_ROOTS.trim_start_matches('/')) {
        let mut parts = inside.components();
        if parts.next().is_some() {
            paths.push(format!("/{}", parts.as_path().display()));
        }
    }
    paths
}

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_ISVTX: u32 = 0o1000;

/// Clears the setuid/setgid bits of directories (and any group or world write beside them): on a
/// directory they only steer ownership of new files, and nothing creates files in a read-only layer.
/// Returns one line per directory changed, naming the package, for the build to say so.
pub fn normalise_directories(tree: &Path, provenance: &Provenance) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut changed = Vec::new();
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        if !entry.file_type().is_dir() {
            continue;
        }
        let mode =
            entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?.permissions().mode();
        if mode & (S_ISUID | S_ISGID) == 0 {
            continue;
        }
        let new = mode & 0o1755;
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(new))
            .with_context(|| format!("setting the mode of {}", entry.path().display()))?;
        let rel = entry.path().strip_prefix(tree)?;
        changed.push(format!(
            "/{} ({}): a setgid/setuid directory, mode {:o} made {:o}",
            rel.display(),
            directory_origin(provenance, rel),
            mode & 0o7777,
            new & 0o7777
        ));
    }
    Ok(changed)
}

/// Who put a directory into the tree: the package that shipped it, else one that put a file in it.
fn directory_origin(provenance: &Provenance, rel: &Path) -> String {
    if provenance.contains_key(rel) {
        return origin(provenance, rel);
    }
    match provenance.iter().find(|(path, _)| path.starts_with(rel) && path.as_path() != rel) {
        Some((path, _)) => origin(provenance, path),
        None => origin(provenance, rel),
    }
}

/// Checks the content rules over `tree` (`what` names the layer): no setuid or setgid file, nothing
/// world-writable but sticky directories. Fails listing each entry with its origin.
pub fn check_modes(tree: &Path, what: &str, provenance: &Provenance) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut violations = Vec::new();
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("walking {}", tree.display()))?;
        let kind = entry.file_type();
        if kind.is_symlink() {
            continue;
        }
        let mode =
            entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?.permissions().mode();
        let rel = entry.path().strip_prefix(tree)?;
        let who = || if kind.is_dir() { directory_origin(provenance, rel) } else { origin(provenance, rel) };
        if !kind.is_dir() && mode & (S_ISUID | S_ISGID) != 0 {
            violations.push(format!("/{} ({}): setuid/setgid (mode {:o})", rel.display(), who(), mode & 0o7777));
        }
        if mode & 0o002 != 0 && !(kind.is_dir() && mode & S_ISVTX != 0) {
            violations.push(format!("/{} ({}): world-writable (mode {:o})", rel.display(), who(), mode & 0o7777));
        }
    }
    if violations.is_empty() {
        return Ok(());
    }
    let total = violations.len();
    let mut listing = violations.into_iter().take(LISTED).collect::<Vec<_>>().join("\n  ");
    if total > LISTED {
        listing.push_str(&format!("\n  … and {} more", total - LISTED));
    }
    bail!(
        "content rules: {what} holds {total} entr{} no layer may hold (no setuid or setgid file, nothing \
         world-writable but sticky directories):\n  {listing}\nremove the file (`drop-files`) or exclude its package",
        if total == 1 { "y" } else { "ies" }
    )
}

/// The `#!` line of a script whose interpreter is a shell (directly or through `env`), if `path` is one.
fn shell_shebang(path: &Path) -> Result<Option<String>> {
    let mut head = Vec::with_capacity(256);
    fs::File::open(path)
        .and_then(|f| f.take(256).read_to_end(&mut head))
        .with_context(|| format!("reading {}", path.display()))?;
    if !head.starts_with(b"#!") {
        return Ok(None);
    }
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]).trim_end().to_string();
    let mut words = line[2..].split_whitespace();
    let Some(interpreter) = words.next() else { return Ok(None) };
    let base = |word: &str| word.rsplit('/').next().unwrap_or(word).to_string();
    let mut program = base(interpreter);
    if program == "env" {
        // `#!/usr/bin/env [-S] [-i] [NAME=value] program …`
        program = words.find(|w| !w.starts_with('-') && !w.contains('=')).map(base).unwrap_or_default();
    }
    Ok(SHELLS.contains(&program.as_str()).then_some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(deny: &[&str]) -> ImageSpec {
        let text = format!(
            "name = \"n\"\nversion = \"1\"\nsuites = [\"bookworm\"]\npackages = [\"a\"]\ndeny-files = {deny:?}\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn shells_scripts_and_denied_files_are_named_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/local/lib/containers/x/usr/bin")).unwrap();
        fs::write(root.join("usr/bin/dash"), b"\x7fELF").unwrap();
        fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho\n").unwrap();
        fs::write(root.join("usr/bin/envtool"), b"#!/usr/bin/env -S bash -e\n").unwrap();
        fs::write(root.join("usr/bin/py"), b"#!/usr/bin/python3\n").unwrap();
        fs::write(root.join("usr/bin/elf"), b"\x7fELF\x02").unwrap();
        fs::write(root.join("usr/local/lib/containers/x/usr/bin/apt-get"), b"\x7fELF").unwrap();
        std::os::unix::fs::symlink("dash", root.join("usr/bin/sh")).unwrap();
        let mut provenance = Provenance::new();
        provenance.insert(PathBuf::from("usr/bin/dash"), "dash".to_string());
        provenance.insert(PathBuf::from("usr/bin/tool"), "overlay overlays/base".to_string());
        let err = Policy::from_spec(&spec_with(&["/usr/bin/apt*"]))
            .unwrap()
            .check_tree(root, "the root filesystem", &provenance)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/usr/bin/dash (package dash): a shell (`dash`)"), "{err}");
        assert!(err.contains("/usr/bin/sh (made by xtask): a shell"), "{err}");
        assert!(err.contains("/usr/bin/tool (overlay overlays/base): a script for a shell (#!/bin/sh)"), "{err}");
        assert!(err.contains("/usr/bin/envtool"), "{err}");
        assert!(err.contains("containers/x/usr/bin/apt-get (made by xtask): on the spec's deny-files"), "{err}");
        assert!(!err.contains("/usr/bin/py ") && !err.contains("/usr/bin/elf "), "{err}");
        assert!(err.contains("5 forbidden files"), "{err}");
    }

    #[test]
    fn drop_files_removes_matches_and_refuses_unused_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/share/bash-completion/completions")).unwrap();
        fs::write(root.join("usr/share/bash-completion/completions/ctr"), "").unwrap();
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        fs::write(root.join("usr/sbin/e2scrub"), "").unwrap();
        fs::write(root.join("usr/sbin/e2scrub_all"), "").unwrap();
        fs::write(root.join("usr/sbin/mke2fs"), "").unwrap();
        let mut provenance = Provenance::new();
        provenance.insert(PathBuf::from("usr/sbin/e2scrub"), "e2fsprogs".into());
        let patterns = vec!["/usr/sbin/e2scrub*".to_string(), "/usr/share/bash-completion".to_string()];
        assert_eq!(drop_files(root, &patterns, &mut provenance, "spec").unwrap(), 3);
        assert!(root.join("usr/sbin/mke2fs").exists() && !root.join("usr/sbin/e2scrub").exists());
        assert!(!root.join("usr/share/bash-completion").exists() && provenance.is_empty());
        let err =
            drop_files(root, &["/usr/bin/nothing*".to_string()], &mut provenance, "node.toml, field `drop-files`")
                .unwrap_err()
                .to_string();
        assert!(err.contains("node.toml, field `drop-files`") && err.contains("matches nothing"), "{err}");
    }

    #[test]
    fn documentation_goes_and_copyright_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let files = [
            "usr/share/doc/qemu-guest-agent/copyright",
            "usr/share/doc/qemu-guest-agent/changelog.Debian.gz",
            "usr/share/doc/qemu-guest-agent/qemu-qmp-ref.html",
            "usr/share/doc/util-linux/NEWS.gz",
            "usr/share/doc/util-linux/releases/v2.41-ReleaseNotes",
            "usr/share/doc/e2fsprogs/README",
            "usr/share/man/man8/mke2fs.8.gz",
            "usr/share/locale/de/LC_MESSAGES/e2fsprogs.mo",
            "usr/sbin/mke2fs",
        ];
        let mut provenance = Provenance::new();
        for file in files {
            fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            fs::write(root.join(file), "").unwrap();
            provenance.insert(PathBuf::from(file), "some-package".into());
        }
        drop_files(root, &[], &mut provenance, "spec").unwrap();
        let left: Vec<&str> = files.into_iter().filter(|f| root.join(f).exists()).collect();
        assert_eq!(left, ["usr/share/doc/qemu-guest-agent/copyright", "usr/sbin/mke2fs"]);
        assert_eq!(provenance.len(), 2);
        // A tree without documentation is fine: nothing to remove is not an error here.
        assert_eq!(drop_files(root, &[], &mut provenance, "spec").unwrap(), 0);
    }

    #[test]
    fn setid_files_and_loose_modes_are_refused_and_setgid_directories_normalised() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let chmod =
            |rel: &str, mode: u32| fs::set_permissions(root.join(rel), fs::Permissions::from_mode(mode)).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var/local")).unwrap();
        fs::create_dir_all(root.join("tmp")).unwrap();
        fs::write(root.join("var/local/x"), "").unwrap();
        chmod("var/local", 0o2775);
        chmod("tmp", 0o1777);
        let mut provenance = Provenance::new();
        provenance.insert(PathBuf::from("var/local/x"), "base-files".to_string());
        let notes = normalise_directories(root, &provenance).unwrap();
        assert_eq!(notes, ["/var/local (package base-files): a setgid/setuid directory, mode 2775 made 755"]);
        check_modes(root, "the root filesystem", &provenance).unwrap();

        fs::write(root.join("usr/bin/su"), "").unwrap();
        chmod("usr/bin/su", 0o4755);
        provenance.insert(PathBuf::from("usr/bin/su"), "util-linux".to_string());
        fs::write(root.join("usr/bin/open"), "").unwrap();
        chmod("usr/bin/open", 0o666);
        fs::create_dir_all(root.join("loose")).unwrap();
        chmod("loose", 0o777);
        let err = check_modes(root, "the root filesystem", &provenance).unwrap_err().to_string();
        assert!(err.contains("/usr/bin/su (package util-linux): setuid/setgid (mode 4755)"), "{err}");
        assert!(err.contains("/usr/bin/open (made by xtask): world-writable (mode 666)"), "{err}");
        assert!(err.contains("/loose (made by xtask): world-writable (mode 777)"), "{err}");
        assert!(err.contains("3 entries") && !err.contains("/tmp"), "{err}");
    }
}

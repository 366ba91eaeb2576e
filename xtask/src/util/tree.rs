//! Writing a tree under a root safely: paths normalised into it (merged /usr included), no write
//! through a symlink, no link that climbs out. Package unpacking and overlay copying share these, so a
//! .deb and a repository overlay are held to the same rules.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Top-level directories Debian merged into /usr: bookworm packages still ship `bin/…`, `lib/…`, and
/// we install them under `usr/` with compatibility symlinks, as a merged-/usr system does.
pub const MERGED_USR_DIRS: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Which package installed each path (relative to the root), for error messages and policy checks.
pub type Provenance = BTreeMap<PathBuf, String>;

/// Normalises a tar path to a relative path inside the root, or says why it is refused.
/// Merged-/usr directories are redirected under usr/.
pub fn normalise(raw: &Path) -> std::result::Result<PathBuf, String> {
    let mut parts: Vec<&str> = Vec::new();
    for component in raw.components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => parts.push(part.to_str().ok_or("path is not UTF-8")?),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
            Component::ParentDir => return Err("path contains `..`".into()),
        }
    }
    if let Some(first) = parts.first() {
        if MERGED_USR_DIRS.contains(first) {
            parts.insert(0, "usr");
        }
    }
    Ok(parts.iter().collect())
}

/// Whether a symlink at `link` (relative to the root) pointing at `target` stays inside the root.
/// Absolute targets are resolved against the image's own root at run time, so they cannot escape;
/// relative ones must not climb above it.
pub fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    lexical_depth_ok(link.parent().unwrap_or(Path::new("")), target)
}

fn lexical_depth_ok(base: &Path, target: &Path) -> bool {
    let mut depth: i64 = base.components().filter(|c| matches!(c, Component::Normal(_))).count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::RootDir => depth = 0,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Makes sure every directory from `root` down to `rel`'s parent is a real directory (never a
/// symlink, which could redirect a write to the host), creating missing ones.
pub fn ensure_parents(root: &Path, rel: &Path) -> Result<()> {
    let mut here = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for part in parent.components() {
            here.push(part);
            match fs::symlink_metadata(&here) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => bail!("{} is not a directory", here.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir(&here).with_context(|| format!("creating {}", here.display()))?;
                    fs::set_permissions(&here, fs::Permissions::from_mode(0o755))?;
                }
                Err(e) => return Err(e).with_context(|| format!("inspecting {}", here.display())),
            }
        }
    }
    Ok(())
}

/// Checks that no directory on the way from `root` to `rel` is a symlink (without creating any).
pub fn check_real_dirs(root: &Path, rel: &Path) -> Result<()> {
    let mut here = root.to_path_buf();
    for part in rel.parent().unwrap_or(Path::new("")).components() {
        here.push(part);
        let meta = fs::symlink_metadata(&here).with_context(|| format!("inspecting {}", here.display()))?;
        if !meta.is_dir() {
            bail!("{} is not a directory", here.display());
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (not following symlinks), so a later package can replace it.
pub fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => fs::remove_file(path).with_context(|| format!("replacing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Who put `rel` into a tree, for messages: "package NAME", "overlay DIR" or "made by xtask".
pub fn origin(provenance: &Provenance, rel: &Path) -> String {
    match provenance.get(rel) {
        Some(label) if label.starts_with("overlay ") => label.clone(),
        Some(package) => format!("package {package}"),
        None => "made by xtask".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_redirects_merged_usr_and_refuses_escapes() {
        assert_eq!(normalise(Path::new("./bin/true")).unwrap(), PathBuf::from("usr/bin/true"));
        assert_eq!(normalise(Path::new("./etc/x")).unwrap(), PathBuf::from("etc/x"));
        assert!(normalise(Path::new("/etc/x")).is_err());
        assert!(normalise(Path::new("./usr/../../x")).is_err());
    }

    #[test]
    fn symlinks_may_not_climb_out() {
        assert!(symlink_stays_inside(Path::new("usr/bin/x"), Path::new("../lib/y")));
        assert!(symlink_stays_inside(Path::new("usr/bin/x"), Path::new("/etc/passwd")));
        assert!(!symlink_stays_inside(Path::new("usr/bin/x"), Path::new("../../../etc/passwd")));
        assert!(!symlink_stays_inside(Path::new("x"), Path::new("../y")));
    }
}

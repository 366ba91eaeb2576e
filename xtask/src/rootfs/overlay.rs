//! The one overlay copier: a directory from the repository laid over a tree that packages filled, for
//! the root's overlays and an extension's `rootfs/` alike. Paths get the same checks as a package's
//! (normalised under the root, merged /usr, no write through a symlink), links may not climb out,
//! special files and a directory meeting a file are refused, and modes become what git records
//! (755 or 644) so the checkout's umask never reaches the image.

use crate::util::fs::checkout_mode;
use crate::util::tree::{ensure_parents, normalise, symlink_stays_inside, Provenance};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What the copier records as the origin of each file: `overlay <dir>`.
pub fn label(dir: &Path) -> String {
    format!("overlay {}", dir.display())
}

/// Copies the tree at `source` over `root`, recording `overlay <source>` as the origin of every file
/// and link it writes. Errors name the overlay and the path inside it.
pub fn apply(source: &Path, root: &Path, provenance: &mut Provenance) -> Result<()> {
    let label = label(source);
    if !source.is_dir() {
        bail!("{label}: the directory does not exist");
    }
    for entry in walkdir::WalkDir::new(source).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("{label}: walking it"))?;
        let raw = entry.path().strip_prefix(source)?;
        let rel = normalise(raw).map_err(|why| anyhow::anyhow!("{label}: {}: {why}", raw.display()))?;
        let at = || format!("{label}: {}", rel.display());
        let dest = root.join(&rel);
        ensure_parents(root, &rel).with_context(at)?;
        let meta = entry.path().symlink_metadata().with_context(at)?;
        let existing = fs::symlink_metadata(&dest).ok();
        if meta.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => bail!("{}: a directory in the overlay, a file in the tree below it", at()),
                None => fs::create_dir(&dest).with_context(|| format!("{}: creating {}", at(), dest.display()))?,
            }
            fs::set_permissions(&dest, fs::Permissions::from_mode(checkout_mode(meta.permissions().mode(), true)))
                .with_context(at)?;
            continue;
        }
        let kind = meta.file_type();
        if !kind.is_symlink() && !kind.is_file() {
            bail!("{}: a device node, fifo or socket: special files have no place in the image", at());
        }
        match existing {
            Some(m) if m.is_dir() => bail!("{}: a file in the overlay, a directory in the tree below it", at()),
            Some(_) => fs::remove_file(&dest).with_context(|| format!("{}: replacing {}", at(), dest.display()))?,
            None => {}
        }
        if kind.is_symlink() {
            let target = fs::read_link(entry.path()).with_context(at)?;
            if !symlink_stays_inside(&rel, &target) {
                bail!("{}: symlink to {} escapes the root", at(), target.display());
            }
            std::os::unix::fs::symlink(&target, &dest).with_context(|| format!("{}: creating the link", at()))?;
        } else {
            fs::copy(entry.path(), &dest).with_context(|| format!("{}: copying", at()))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(checkout_mode(meta.permissions().mode(), false)))
                .with_context(at)?;
        }
        provenance.insert(rel, label.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    struct Case {
        _dir: tempfile::TempDir,
        overlay: PathBuf,
        root: PathBuf,
    }

    fn case() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let (overlay, root) = (dir.path().join("overlay"), dir.path().join("root"));
        fs::create_dir_all(&overlay).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        Case { _dir: dir, overlay, root }
    }

    fn refused(case: &Case) -> String {
        format!("{:#}", apply(&case.overlay, &case.root, &mut Provenance::new()).unwrap_err())
    }

    #[test]
    fn copies_files_links_and_dirs_with_git_modes_under_merged_usr() {
        let c = case();
        fs::create_dir_all(c.overlay.join("etc/conf.d")).unwrap();
        fs::write(c.overlay.join("etc/conf.d/a"), "a").unwrap();
        fs::set_permissions(c.overlay.join("etc/conf.d/a"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir_all(c.overlay.join("bin")).unwrap();
        fs::write(c.overlay.join("bin/tool"), "t").unwrap();
        fs::set_permissions(c.overlay.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("../lib/x", c.overlay.join("bin/link")).unwrap();
        fs::write(c.root.join("usr/bin/tool"), "old").unwrap();
        let mut provenance = Provenance::new();
        apply(&c.overlay, &c.root, &mut provenance).unwrap();
        let mode = |rel: &str| fs::metadata(c.root.join(rel)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("etc/conf.d/a"), 0o644);
        assert_eq!(mode("etc/conf.d"), 0o755);
        assert_eq!(mode("usr/bin/tool"), 0o755);
        assert_eq!(fs::read_to_string(c.root.join("usr/bin/tool")).unwrap(), "t");
        assert_eq!(fs::read_link(c.root.join("usr/bin/link")).unwrap(), Path::new("../lib/x"));
        assert_eq!(provenance.get(Path::new("usr/bin/tool")), Some(&label(&c.overlay)));
    }

    #[test]
    fn a_link_that_climbs_out_is_refused() {
        let c = case();
        std::os::unix::fs::symlink("../../../etc/shadow", c.overlay.join("escape")).unwrap();
        let err = refused(&c);
        assert!(err.contains("escape: symlink to ../../../etc/shadow escapes the root"), "{err}");
    }

    #[test]
    fn special_files_are_refused() {
        let c = case();
        crate::util::cmd::cmd("mkfifo").arg(c.overlay.join("pipe")).run().unwrap();
        let err = refused(&c);
        assert!(err.contains("pipe: a device node, fifo or socket"), "{err}");
    }

    #[test]
    fn a_directory_over_a_file_and_a_file_over_a_directory_are_refused() {
        let c = case();
        fs::write(c.root.join("usr/bin/thing"), "").unwrap();
        fs::create_dir_all(c.overlay.join("usr/bin/thing")).unwrap();
        let err = refused(&c);
        assert!(err.contains("usr/bin/thing: a directory in the overlay, a file in the tree below it"), "{err}");

        let c = case();
        fs::create_dir_all(c.root.join("etc/dir")).unwrap();
        fs::create_dir_all(c.overlay.join("etc")).unwrap();
        fs::write(c.overlay.join("etc/dir"), "").unwrap();
        let err = refused(&c);
        assert!(err.contains("etc/dir: a file in the overlay, a directory in the tree below it"), "{err}");
    }

    #[test]
    fn a_missing_overlay_and_a_write_through_a_symlinked_directory_are_refused() {
        let c = case();
        let err = format!("{:#}", apply(&c.overlay.join("nope"), &c.root, &mut Provenance::new()).unwrap_err());
        assert!(err.contains("does not exist"), "{err}");

        std::os::unix::fs::symlink("/tmp", c.root.join("etc")).unwrap();
        fs::create_dir_all(c.overlay.join("etc")).unwrap();
        fs::write(c.overlay.join("etc/file"), "").unwrap();
        let err = refused(&c);
        assert!(err.contains("etc: a directory in the overlay, a file in the tree below it"), "{err}");
    }
}

//! Staging and publishing: a build writes every artifact into a staging directory beside
//! `out/<board>/` (`out/.<board>.staging-*`) and only a complete build publishes it, in one atomic
//! step: renameat2(2) with RENAME_EXCHANGE swaps the staging directory and `out/<board>/`, so a reader
//! (or a crash) sees either the whole previous build or the whole new one, never new artifacts beside
//! an old manifest. The previous directory is then removed with what was in it: its signatures (they
//! vouch for the old files) and its boot logs.

use super::manifest::Manifest;
use crate::spec::names::MANIFEST_FILE;
use crate::util::fs::ensure_dir;
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A staging directory beside an output directory; removed when dropped, and after publishing it
/// holds the previous output until then.
pub struct Staging {
    dir: tempfile::TempDir,
    out: PathBuf,
}

/// `.<board>.staging-`: the staging directories of `out`, beside it.
fn staging_prefix(out: &Path) -> Result<String> {
    let name = out.file_name().with_context(|| format!("{} has no directory name", out.display()))?;
    Ok(format!(".{}.staging-", name.to_string_lossy()))
}

impl Staging {
    /// Creates `out`'s parent if needed, removes staging directories a killed build of `out` left
    /// there (a failed build removes its own), and makes a new one.
    pub fn new(out: &Path) -> Result<Staging> {
        let parent = out.parent().with_context(|| format!("{} has no parent directory", out.display()))?;
        ensure_dir(parent)?;
        let prefix = staging_prefix(out)?;
        for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(parent)
            .with_context(|| format!("creating a staging directory in {}", parent.display()))?;
        // tempfile makes it 0700; the published directory is for everyone to read, like its files.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", dir.path().display()))?;
        Ok(Staging { dir, out: out.to_path_buf() })
    }

    /// The directory itself (the tests write into it as a build once did).
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Moves `file` into the staging directory under its name: a rename on one filesystem, else a
    /// copy (its mode kept) and the original removed.
    pub fn adopt(&self, file: &Path) -> Result<()> {
        let name = file.file_name().with_context(|| format!("{} has no file name", file.display()))?;
        let to = self.dir.path().join(name);
        if fs::rename(file, &to).is_ok() {
            return Ok(());
        }
        fs::copy(file, &to).with_context(|| format!("copying {} to {}", file.display(), to.display()))?;
        fs::remove_file(file).with_context(|| format!("removing {}", file.display()))
    }

    /// Writes manifest.json, removes the staging directory's work files (anything the manifest does
    /// not list), and exchanges the staging directory with the output directory in one rename (or
    /// renames it into place when there is none yet). The previous output goes with the staging
    /// directory when it is dropped.
    pub fn publish(self, manifest: &Manifest) -> Result<()> {
        let work = self.dir.path();
        fs::write(work.join(MANIFEST_FILE), manifest.to_json()?)
            .with_context(|| format!("writing {}", work.join(MANIFEST_FILE).display()))?;
        fs::set_permissions(work.join(MANIFEST_FILE), fs::Permissions::from_mode(0o644))?;
        let keep: Vec<&str> = manifest.artifacts.iter().map(|a| a.file.as_str()).chain([MANIFEST_FILE]).collect();
        for entry in fs::read_dir(work).with_context(|| format!("listing {}", work.display()))? {
            let entry = entry.with_context(|| format!("listing {}", work.display()))?;
            let name = entry.file_name();
            if keep.contains(&name.to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            match entry.file_type()?.is_dir() {
                true => fs::remove_dir_all(&path),
                false => fs::remove_file(&path),
            }
            .with_context(|| format!("removing the work file {}", path.display()))?;
        }
        for name in &keep {
            if !work.join(name).is_file() {
                bail!("{}: the manifest lists {name}, which the build did not write", work.display());
            }
        }
        if fs::symlink_metadata(&self.out).is_ok() {
            exchange(work, &self.out)?;
        } else {
            fs::rename(work, &self.out)
                .with_context(|| format!("publishing {} as {}", work.display(), self.out.display()))?;
            // The TempDir now names nothing; dropping it finds nothing to remove.
        }
        Ok(())
    }
}

/// Swaps `a` and `b` (both must exist) atomically: renameat2(2) with RENAME_EXCHANGE.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    let c =
        |p: &Path| CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} has a NUL byte", p.display()));
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the current directory.
    let rc =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| {
            format!(
                "exchanging {} with {} (renameat2 RENAME_EXCHANGE: both on one Linux filesystem)",
                a.display(),
                b.display()
            )
        });
    }
    Ok(())
}

/// Work directories named `<prefix>*` that killed builds left in `dir`. Builds can run side by side
/// on one cache, so only directories untouched for a day are taken for abandoned.
pub fn remove_abandoned(dir: &Path, prefix: &str) {
    let day = std::time::Duration::from_secs(24 * 60 * 60);
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(prefix)
            && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::Artifact;
    use crate::spec::Arch;

    fn manifest_of(files: &[&str]) -> Manifest {
        Manifest {
            image: "node".into(),
            version: "1".into(),
            arch: Arch::Amd64,
            board: "b".into(),
            source_date_epoch: 0,
            lock_sha256: String::new(),
            kernel: "k".into(),
            cmdline: String::new(),
            extensions: Vec::new(),
            on_demand_modules: 0,
            kernel_requirements: None,
            secure_boot: None,
            artifacts: files.iter().map(|f| Artifact { file: f.to_string(), size: 1, sha256: String::new() }).collect(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        crate::util::fs::sorted_names(dir).unwrap()
    }

    #[test]
    fn publishing_swaps_the_whole_directory_and_leaves_nothing_of_the_old_one_or_the_work() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("board");
        // The first build: no output directory yet.
        let staging = Staging::new(&out).unwrap();
        fs::write(staging.path().join("a.raw"), b"1").unwrap();
        staging.publish(&manifest_of(&["a.raw"])).unwrap();
        assert_eq!(names(&out), ["a.raw", "manifest.json"]);
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o755);
        // The old build was signed and booted; the new one has another file set and work files.
        for old in ["a.raw.minisig", "index.json", "boot-worker.log"] {
            fs::write(out.join(old), b"old").unwrap();
        }
        let held = fs::File::open(out.join("a.raw")).unwrap();
        let staging = Staging::new(&out).unwrap();
        fs::write(staging.path().join("b.raw"), b"2").unwrap();
        fs::create_dir(staging.path().join("esp-work")).unwrap();
        fs::write(staging.path().join("esp-work/x"), b"w").unwrap();
        staging.publish(&manifest_of(&["b.raw"])).unwrap();
        assert_eq!(names(&out), ["b.raw", "manifest.json"]);
        assert!(fs::read_to_string(out.join("manifest.json")).unwrap().contains("b.raw"));
        assert_eq!(names(parent.path()), ["board"], "a staging directory was left beside the output");
        drop(held);
    }

    #[test]
    fn a_failed_build_leaves_the_previous_output_untouched_and_a_killed_ones_staging_is_cleared() {
        let parent = tempfile::tempdir().unwrap();
        let out = parent.path().join("board");
        let staging = Staging::new(&out).unwrap();
        fs::write(staging.path().join("a.raw"), b"1").unwrap();
        staging.publish(&manifest_of(&["a.raw"])).unwrap();
        // A build that fails after writing: its staging directory goes when dropped.
        let staging = Staging::new(&out).unwrap();
        fs::write(staging.path().join("b.raw"), b"2").unwrap();
        drop(staging);
        assert_eq!(names(&out), ["a.raw", "manifest.json"]);
        assert_eq!(names(parent.path()), ["board"]);
        // A manifest naming a file the build did not write publishes nothing.
        let staging = Staging::new(&out).unwrap();
        let err = staging.publish(&manifest_of(&["missing.raw"])).unwrap_err();
        assert!(format!("{err:#}").contains("the manifest lists missing.raw"), "{err:#}");
        assert_eq!(names(&out), ["a.raw", "manifest.json"]);
        // A killed build's staging directory (never dropped) is removed by the next build.
        let killed = parent.path().join(".board.staging-killed");
        fs::create_dir(&killed).unwrap();
        let staging = Staging::new(&out).unwrap();
        assert!(!killed.exists());
        drop(staging);
    }
}

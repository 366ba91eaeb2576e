//! The root filesystem tree: the locked packages' files, the directories machined mounts over,
//! the image's identity in os-release, and the spec's overlays, assembled under a staging directory.

use crate::deb::{self, Provenance};
use crate::spec::{Arch, ImageSpec};
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mount points machined needs in the read-only root; they must exist because nothing can create them
/// at run time.
const MOUNT_POINTS: [&str; 8] = ["proc", "sys", "dev", "run", "tmp", "var", "mnt", "etc"];

/// A package to install: its name (for errors and provenance) and the verified .deb in the cache.
pub struct DebInput<'a> {
    pub name: &'a str,
    pub deb: &'a Path,
}

/// Builds the root tree at `root` (which must not exist yet) and returns which package wrote each file.
pub fn assemble(
    root: &Path,
    spec: &ImageSpec,
    arch: Arch,
    debs: &[DebInput],
    overlays_dir: &Path,
) -> Result<Provenance> {
    fs::create_dir(root).with_context(|| format!("creating {}", root.display()))?;
    // Modes are set outright wherever we create something: the umask of whoever builds must not reach the image.
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    deb::make_merged_usr(root, arch)?;
    let mut provenance = Provenance::new();
    let mut sorted: Vec<&DebInput> = debs.iter().collect();
    sorted.sort_by_key(|d| d.name);
    for input in sorted {
        deb::unpack(input.deb, input.name, root, &mut provenance)
            .with_context(|| format!("unpacking {} ({})", input.name, input.deb.display()))?;
    }
    for dir in MOUNT_POINTS {
        let path = root.join(dir);
        if !path.is_dir() {
            fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
    }
    // /tmp is a tmpfs at run time; the mount point keeps the usual sticky mode.
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    write_os_release(root, spec)?;
    for overlay in &spec.overlays {
        let dir = overlays_dir.join(overlay);
        apply_overlay(&dir, root, &mut provenance)
            .with_context(|| format!("applying overlay {overlay:?} ({})", dir.display()))?;
    }
    Ok(provenance)
}

/// os-release as the image reports itself; also the UKI's .osrel section.
pub fn os_release(spec: &ImageSpec) -> String {
    format!(
        "NAME=\"nodeimg\"\nID=nodeimg\nPRETTY_NAME=\"{name} {version} (nodeimg, Debian {suite} packages)\"\n\
         VERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n",
        name = spec.name,
        version = spec.version,
        suite = spec.suite
    )
}

fn write_os_release(root: &Path, spec: &ImageSpec) -> Result<()> {
    let usr_lib = root.join("usr/lib/os-release");
    let etc = root.join("etc/os-release");
    for path in [&usr_lib, &etc] {
        if fs::symlink_metadata(path).is_ok() {
            fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
        }
    }
    fs::write(&usr_lib, os_release(spec)).with_context(|| format!("writing {}", usr_lib.display()))?;
    fs::set_permissions(&usr_lib, fs::Permissions::from_mode(0o644))?;
    std::os::unix::fs::symlink("../usr/lib/os-release", &etc)?;
    Ok(())
}

/// Copies an overlay tree over the root. Its paths get the same checks as a package's.
fn apply_overlay(dir: &Path, root: &Path, provenance: &mut Provenance) -> Result<()> {
    if !dir.is_dir() {
        bail!("overlay directory {} does not exist", dir.display());
    }
    let label = format!("overlay {}", dir.display());
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        let rel_raw = entry.path().strip_prefix(dir)?;
        let rel: PathBuf =
            deb::normalise(rel_raw).map_err(|why| anyhow::anyhow!("{label}: {}: {why}", rel_raw.display()))?;
        let dest = root.join(&rel);
        let meta = entry.path().symlink_metadata()?;
        deb::ensure_parents(root, &rel).with_context(|| format!("{label}: {}", rel.display()))?;
        if meta.is_dir() {
            if !fs::symlink_metadata(&dest).map(|m| m.is_dir()).unwrap_or(false) {
                fs::create_dir(&dest).with_context(|| format!("{label}: creating {}", rel.display()))?;
            }
            let mode = crate::reproducible::checkout_mode(meta.permissions().mode(), true);
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(entry.path())?;
            if !deb::symlink_stays_inside(&rel, &target) {
                bail!("{label}: symlink {} -> {} escapes the root", rel.display(), target.display());
            }
            if fs::symlink_metadata(&dest).is_ok() {
                fs::remove_file(&dest)?;
            }
            std::os::unix::fs::symlink(&target, &dest)?;
            provenance.insert(rel, label.clone());
        } else if meta.is_file() {
            if fs::symlink_metadata(&dest).is_ok() {
                fs::remove_file(&dest).with_context(|| format!("replacing {}", dest.display()))?;
            }
            fs::copy(entry.path(), &dest).with_context(|| format!("copying {}", entry.path().display()))?;
            let mode = crate::reproducible::checkout_mode(meta.permissions().mode(), false);
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
            provenance.insert(rel, label.clone());
        } else {
            bail!("{label}: {} is a device node, fifo or socket", rel.display());
        }
    }
    Ok(())
}

//! The root filesystem tree: the locked packages' files, the directories machined mounts over,
//! the image's identity in os-release, and the spec's overlays, assembled under a work directory;
//! then the spec's `drop-files` and the no-shell policy.

use super::overlay;
use super::policy::{self, Policy};
use crate::archive::deb;
use crate::spec::protocol::{CNI_BIN_DIR, DEBIAN_CNI_PLUGINS, SYSTEM_DIR, WRITABLE_DIRS, WRITABLE_LIST};
use crate::spec::{Arch, ImageSpec};
use crate::util::fs::sorted_names;
use crate::util::progress;
use crate::util::tree::Provenance;
use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mount points machined needs in the read-only root; they must exist because nothing can create them
/// at run time. Besides these: /system (machined's tmpfs), the writable directories, and the file
/// machined binds itself over (protocol.rs).
const MOUNT_POINTS: [&str; 8] = ["proc", "sys", "dev", "run", "tmp", "var", "mnt", "etc"];

/// A package to install: its name (for errors and provenance) and the verified .deb in the cache.
pub struct DebInput<'a> {
    pub name: &'a str,
    pub deb: &'a Path,
}

/// Builds the root tree at `root` (which must not exist yet): [`assemble`], then the spec's
/// `drop-files`, then the no-shell policy and the content rules over the result.
pub fn build(
    root: &Path,
    spec: &ImageSpec,
    spec_path: &Path,
    arch: Arch,
    debs: &[DebInput],
    overlays_dir: &Path,
    policy: &Policy,
) -> Result<()> {
    let mut provenance = assemble(root, spec, arch, debs, overlays_dir)?;
    select_cni_plugins(
        root,
        &spec.cni_plugins,
        &mut provenance,
        &format!("{}, field `cni-plugins`", spec_path.display()),
    )?;
    policy::drop_files(
        root,
        &spec.drop_files,
        &mut provenance,
        &format!("{}, field `drop-files`", spec_path.display()),
    )?;
    for line in policy::normalise_directories(root, &provenance)? {
        progress::note(format!("the root filesystem: {line}"));
    }
    policy.check_tree(root, "the root filesystem", &provenance)?;
    policy::check_modes(root, "the root filesystem", &provenance)
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
    make_merged_usr(root, arch)?;
    let mut provenance = Provenance::new();
    let mut sorted: Vec<&DebInput> = debs.iter().collect();
    sorted.sort_by_key(|d| d.name);
    for input in sorted {
        deb::unpack(input.deb, input.name, root, &mut provenance)
            .with_context(|| format!("unpacking {} ({})", input.name, input.deb.display()))?;
    }
    for dir in MOUNT_POINTS.into_iter().chain([SYSTEM_DIR.trim_start_matches('/')]) {
        let path = root.join(dir);
        if !path.is_dir() {
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
    }
    // /tmp is a tmpfs at run time; the mount point keeps the usual sticky mode.
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    write_os_release(root, spec)?;
    for overlay in &spec.overlays {
        let dir = overlays_dir.join(overlay);
        overlay::apply(&dir, root, &mut provenance)
            .with_context(|| format!("applying the spec's overlay {overlay:?}"))?;
    }
    let writable: Vec<String> =
        WRITABLE_DIRS.iter().map(|d| d.to_string()).chain(spec.writable_paths.iter().cloned()).collect();
    write_writable_paths(root, &writable)?;
    link_cni_plugins(root)?;
    Ok(provenance)
}

/// Creates each writable path's directory (the overlay's mount point) and lists them for machined.
fn write_writable_paths(root: &Path, paths: &[String]) -> Result<()> {
    for dir in paths {
        let path = root.join(dir.trim_start_matches('/'));
        if !path.is_dir() {
            let mut made = root.to_path_buf();
            for part in Path::new(dir.trim_start_matches('/')).components() {
                made.push(part);
                if !made.exists() {
                    fs::create_dir(&made).with_context(|| format!("creating {}", made.display()))?;
                    fs::set_permissions(&made, fs::Permissions::from_mode(0o755))?;
                }
            }
        }
    }
    let list = root.join(WRITABLE_LIST.trim_start_matches('/'));
    let text: String = paths.iter().map(|p| format!("{p}\n")).collect();
    fs::create_dir_all(list.parent().context("WRITABLE_LIST has a parent")?)?;
    fs::set_permissions(list.parent().context("WRITABLE_LIST has a parent")?, fs::Permissions::from_mode(0o755))?;
    fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    fs::set_permissions(&list, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Links every CNI plugin Debian ships into CNI_BIN_DIR, where a CNI add-on adds its own.
fn link_cni_plugins(root: &Path) -> Result<()> {
    let plugins = root.join(DEBIAN_CNI_PLUGINS.trim_start_matches('/'));
    let Ok(entries) = fs::read_dir(&plugins) else { return Ok(()) };
    let bin_dir = root.join(CNI_BIN_DIR.trim_start_matches('/'));
    fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    for made in ["opt", "opt/cni", "opt/cni/bin"] {
        fs::set_permissions(root.join(made), fs::Permissions::from_mode(0o755))?;
    }
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect();
    names.sort();
    for name in names {
        let link = bin_dir.join(&name);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DEBIAN_CNI_PLUGINS}/{name}"), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(())
}

/// Keeps only the CNI plugins `keep` names (with their CNI_BIN_DIR links), and says which it left
/// out. Every name must be a plugin the packages ship: an error naming `origin` (file and field)
/// lists those that are.
fn select_cni_plugins(root: &Path, keep: &[String], provenance: &mut Provenance, origin: &str) -> Result<()> {
    let plugins = root.join(DEBIAN_CNI_PLUGINS.trim_start_matches('/'));
    let shipped = match plugins.is_dir() {
        true => sorted_names(&plugins)?,
        false => Vec::new(),
    };
    if let Some(missing) = keep.iter().find(|k| !shipped.contains(k)) {
        match shipped.is_empty() {
            true => bail!(
                "{origin}: {missing:?}: no package ships CNI plugins ({DEBIAN_CNI_PLUGINS} is missing; add \
                 containernetworking-plugins to `packages`, or set `cni-plugins = []`)"
            ),
            false => bail!(
                "{origin}: {missing:?} is not a CNI plugin the packages ship; {DEBIAN_CNI_PLUGINS} has: {}",
                shipped.join(", ")
            ),
        }
    }
    let dropped: Vec<&String> = shipped.iter().filter(|name| !keep.contains(name)).collect();
    for name in &dropped {
        for dir in [DEBIAN_CNI_PLUGINS, CNI_BIN_DIR] {
            let rel = Path::new(dir.trim_start_matches('/')).join(name.as_str());
            let path = root.join(&rel);
            if fs::symlink_metadata(&path).is_ok() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            provenance.retain(|recorded, _| recorded != &rel);
        }
    }
    if !dropped.is_empty() {
        let names: Vec<&str> = dropped.iter().map(|n| n.as_str()).collect();
        progress::note(format!(
            "the root filesystem: CNI plugins {} kept, {} left out (the spec's cni-plugins)",
            keep.join(", "),
            names.join(", ")
        ));
    }
    Ok(())
}

/// os-release as the image reports itself; also the UKI's .osrel section.
pub fn os_release(spec: &ImageSpec) -> String {
    format!(
        "NAME=\"nodeimg\"\nID=nodeimg\nPRETTY_NAME=\"{name} {version} (nodeimg, Debian {suite} packages)\"\n\
         VERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\n",
        name = spec.name,
        version = spec.version,
        suite = spec.release()
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

/// Creates the merged-/usr compatibility symlinks (bin → usr/bin, …) in a fresh root.
pub fn make_merged_usr(root: &Path, arch: Arch) -> Result<()> {
    for dir in ["bin", "sbin", "lib"] {
        fs::create_dir_all(root.join("usr").join(dir))?;
        // Set outright: the builder's umask must not decide the image's modes.
        for made in ["usr".to_string(), format!("usr/{dir}")] {
            fs::set_permissions(root.join(made), fs::Permissions::from_mode(0o755))?;
        }
        std::os::unix::fs::symlink(format!("usr/{dir}"), root.join(dir))
            .with_context(|| format!("creating /{dir} symlink in {}", root.display()))?;
    }
    if arch == Arch::Amd64 {
        fs::create_dir_all(root.join("usr/lib64"))?;
        fs::set_permissions(root.join("usr/lib64"), fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with Debian's plugin directory holding `names`, each linked from CNI_BIN_DIR.
    fn root_with_plugins(names: &[&str]) -> (tempfile::TempDir, Provenance) {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join(DEBIAN_CNI_PLUGINS.trim_start_matches('/'));
        fs::create_dir_all(&plugins).unwrap();
        let mut provenance = Provenance::new();
        for name in names {
            fs::write(plugins.join(name), b"\x7fELF").unwrap();
            provenance.insert(Path::new(DEBIAN_CNI_PLUGINS.trim_start_matches('/')).join(name), "cni".into());
        }
        link_cni_plugins(dir.path()).unwrap();
        (dir, provenance)
    }

    fn listing(dir: &Path) -> Vec<String> {
        sorted_names(dir).unwrap()
    }

    #[test]
    fn only_the_listed_cni_plugins_and_their_links_stay() {
        let (root, mut provenance) = root_with_plugins(&["bridge", "dhcp", "loopback", "vlan"]);
        let keep = ["bridge".to_string(), "loopback".to_string()];
        select_cni_plugins(root.path(), &keep, &mut provenance, "node.toml, field `cni-plugins`").unwrap();
        let plugins = root.path().join(DEBIAN_CNI_PLUGINS.trim_start_matches('/'));
        assert_eq!(listing(&plugins), ["bridge", "loopback"]);
        assert_eq!(listing(&root.path().join(CNI_BIN_DIR.trim_start_matches('/'))), ["bridge", "loopback"]);
        assert_eq!(provenance.len(), 2, "{provenance:?}");
    }

    #[test]
    fn a_cni_plugin_the_packages_do_not_ship_is_refused_naming_the_field_and_what_they_ship() {
        let (root, mut provenance) = root_with_plugins(&["bridge", "loopback"]);
        let origin = "node.toml, field `cni-plugins`";
        let err = select_cni_plugins(root.path(), &["flannel".to_string()], &mut provenance, origin).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains(origin) && err.contains("\"flannel\" is not a CNI plugin") && err.contains("bridge, loopback"),
            "{err}"
        );
        // Nothing was removed before the refusal.
        assert_eq!(listing(&root.path().join(DEBIAN_CNI_PLUGINS.trim_start_matches('/'))), ["bridge", "loopback"]);

        let empty = tempfile::tempdir().unwrap();
        let err = select_cni_plugins(empty.path(), &["bridge".to_string()], &mut provenance, origin).unwrap_err();
        assert!(format!("{err:#}").contains("no package ships CNI plugins"), "{err:#}");
        select_cni_plugins(empty.path(), &[], &mut provenance, origin).unwrap();
    }
}

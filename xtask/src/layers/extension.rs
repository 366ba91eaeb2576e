//! System extensions in Talos's format, baked into the image at build time.
//!
//! An extension is a directory `overlays/extensions/<name>/` holding Talos's `manifest.yaml`
//! (`version: v1alpha1` and metadata), `rootfs/` (files laid out as on the node) and, our addition, an
//! optional `packages.toml` (`packages`, `exclude-packages`, `drop-files`, `create-file`) naming Debian
//! packages. Those are locked as the set `extension:<name>` for each arch and unpacked, merged-/usr
//! and all, into the extension's own root `/usr/local/lib/containers/<name>/`, from which Talos (and
//! machined) run an extension's service. Contents are checked as Talos checks them (only its allowed
//! prefixes, nothing world-writable, no special files) plus no setuid/setgid bits and the no-shell
//! policy. Services (`rootfs/usr/local/etc/containers/<name>.yaml`) are translated for machined
//! (service.rs).

use super::manifest::{parse_manifest, TalosManifest, MANIFEST_FILE};
use super::service::{bind_path, line_value, parse_service, Service};
use super::yaml;
use crate::archive::deb;
use crate::archive::lock::ExtensionPackages;
use crate::archive::lockfile::LockedPackage;
use crate::rootfs::policy::{self, Policy};
use crate::rootfs::{overlay, tree::make_merged_usr};
use crate::spec::glob::path_glob;
use crate::spec::names::{PackageSet, EXTENSIONS_DIR};
use crate::spec::protocol::{SERVICE_ROOTS, SERVICE_SPECS, SERVICE_SUFFIX};
use crate::spec::{Arch, ImageSpec};
use crate::util::fs::{make_dir, write_new};
use crate::util::progress;
use crate::util::tree::{ensure_parents, normalise, origin, symlink_stays_inside, Provenance};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

const ROOTFS_DIR: &str = "rootfs";
const PACKAGES_FILE: &str = "packages.toml";

/// Talos's allowed prefixes (pkg/machinery/extensions `AllowedPaths`; the v1.14 docs list the same in
/// merged-/usr form), as our merged-/usr root has them. Left out on purpose: the glibc loaders,
/// /usr/bin/ldconfig and /etc/ld.so.conf, which Talos allows for its musl root; here they would
/// replace the root's own glibc files under every binary.
pub const ALLOWED_PREFIXES: [&str; 8] = [
    "etc/cri/conf.d",
    "etc/vulkan",
    "usr/lib/firmware",
    "usr/lib/modules",
    "usr/lib/udev/rules.d",
    "usr/local",
    "usr/share/egl",
    "usr/share/glvnd",
];

/// Mount points machined needs in a service's read-only root; nothing can create them at run time.
const CONTAINER_MOUNT_POINTS: [&str; 5] = ["dev", "proc", "run", "sys", "tmp"];

/// `packages.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PackagesFile {
    /// Debian packages unpacked into the extension's root, with their Depends closure.
    #[serde(default)]
    packages: Vec<String>,
    /// Packages never unpacked (added to the spec's own `exclude-packages`).
    #[serde(default)]
    exclude_packages: Vec<String>,
    /// Files removed from the extension's root after unpacking: absolute globs as the service sees them.
    #[serde(default)]
    drop_files: Vec<String>,
    /// Files machined writes on the node, when missing, before this extension's services start: values
    /// unique to each node (an iSCSI initiator name) cannot be baked into a shared image. In `content`,
    /// `{random}` becomes 32 random hex digits. Paths are under /var or /run, the writable places.
    #[serde(default)]
    create_file: Vec<CreateFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFile {
    path: String,
    content: String,
}

/// The packages an extension asks for.
#[derive(Clone, Debug, Default)]
pub struct PackageList {
    /// packages.toml, for errors (even when absent).
    pub path: PathBuf,
    pub packages: Vec<String>,
    pub exclude_packages: Vec<String>,
    pub drop_files: Vec<String>,
    /// `create-file=` lines for every service of the extension (see `PackagesFile::create_file`).
    pub create_files: Vec<String>,
}

/// An extension directory, loaded and checked (nothing unpacked yet).
#[derive(Clone, Debug)]
pub struct Extension {
    pub name: String,
    pub dir: PathBuf,
    pub manifest: TalosManifest,
    pub packages: PackageList,
    pub services: Vec<Service>,
}

impl Extension {
    pub fn label(&self) -> String {
        format!("extension {}", self.name)
    }

    /// What the lock needs to know of this extension.
    pub fn packages_request(&self) -> ExtensionPackages {
        ExtensionPackages {
            name: self.name.clone(),
            packages: self.packages.packages.clone(),
            exclude: self.packages.exclude_packages.clone(),
            origin: self.packages.path.clone(),
        }
    }
}

/// Loads every extension the spec names, in order, checking each before anything is fetched.
pub fn load(overlays_dir: &Path, spec: &ImageSpec) -> Result<Vec<Extension>> {
    spec.extensions.iter().map(|name| load_one(&overlays_dir.join(EXTENSIONS_DIR).join(name), name)).collect()
}

fn load_one(dir: &Path, name: &str) -> Result<Extension> {
    let label = format!("extension {name}");
    if !dir.is_dir() {
        bail!("{label}: {} does not exist (named in the spec's field `extensions`)", dir.display());
    }
    let mut has_manifest = false;
    for entry in fs::read_dir(dir).with_context(|| format!("{label}: listing {}", dir.display()))? {
        let entry = entry?;
        let file_name = entry.file_name();
        let kind = entry.file_type()?;
        match file_name.to_str() {
            Some(MANIFEST_FILE) if kind.is_file() => has_manifest = true,
            Some(PACKAGES_FILE) if kind.is_file() => {}
            Some(ROOTFS_DIR) if kind.is_dir() => {}
            _ => bail!(
                "{label}: {}: unexpected; an extension directory holds only {MANIFEST_FILE}, {ROOTFS_DIR}/ and \
                 {PACKAGES_FILE}",
                entry.path().display()
            ),
        }
    }
    if !has_manifest {
        bail!("{label}: {} is missing", dir.join(MANIFEST_FILE).display());
    }
    let manifest_path = dir.join(MANIFEST_FILE);
    let text =
        fs::read_to_string(&manifest_path).with_context(|| format!("{label}: reading {}", manifest_path.display()))?;
    let manifest = parse_manifest(&text, &manifest_path, &label)?;
    if manifest.metadata.name != name {
        bail!(
            "{label}: {}:{}: field `metadata.name` is {:?}, but the directory is {name:?}; they must agree",
            manifest_path.display(),
            yaml::line_of(&text, "name").unwrap_or(1),
            manifest.metadata.name
        );
    }

    let packages_path = dir.join(PACKAGES_FILE);
    let mut packages = PackageList { path: packages_path.clone(), ..PackageList::default() };
    if packages_path.exists() {
        let file: PackagesFile = crate::spec::load_toml(&packages_path).with_context(|| label.clone())?;
        for pattern in &file.drop_files {
            path_glob(pattern).with_context(|| format!("{label}: {}: field `drop-files`", packages_path.display()))?;
        }
        packages.packages = file.packages;
        packages.exclude_packages = file.exclude_packages;
        for create in &file.create_file {
            let at = || format!("{label}: {}: field `create-file`", packages_path.display());
            bind_path(&create.path, "path").with_context(at)?;
            if !(create.path.starts_with("/var/") || create.path.starts_with("/run/")) {
                bail!("{}: path {:?} must be under /var/ or /run/, the node's writable places", at(), create.path);
            }
            // One line in machined's format: backslashes and line breaks escaped.
            let content = create.content.replace('\\', "\\\\").replace('\n', "\\n");
            line_value(&content, "content").with_context(at)?;
            packages.create_files.push(format!("create-file={}:{content}", create.path));
        }
        packages.drop_files = file.drop_files;
    }

    let rootfs = dir.join(ROOTFS_DIR);
    let mut services = Vec::new();
    if rootfs.is_dir() {
        let overlay = overlay::label(&rootfs);
        let mut violations = Vec::new();
        for entry in walkdir::WalkDir::new(&rootfs).min_depth(1).sort_by_file_name() {
            let entry = entry.with_context(|| format!("{label}: walking {}", rootfs.display()))?;
            let raw = entry.path().strip_prefix(&rootfs)?;
            let rel = normalise(raw).map_err(|why| anyhow::anyhow!("{label}: {}: {why}", entry.path().display()))?;
            let meta = entry.path().symlink_metadata()?;
            if let Some(why) = talos_violation(&rel, &meta) {
                violations.push(format!("/{} ({overlay}): {why}", rel.display()));
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path())?;
                if !symlink_stays_inside(&rel, &target) {
                    violations.push(format!(
                        "/{} ({overlay}): symlink to {} escapes the root",
                        rel.display(),
                        target.display()
                    ));
                }
            }
            if rel.parent() == Some(Path::new(SERVICE_SPECS.trim_start_matches('/'))) && meta.is_file() {
                match rel.extension().and_then(|e| e.to_str()) {
                    Some("yaml") => {
                        let text = fs::read_to_string(entry.path())
                            .with_context(|| format!("{label}: reading {}", entry.path().display()))?;
                        services.push(parse_service(&text, entry.path(), &label)?);
                    }
                    Some(SERVICE_SUFFIX) => bail!(
                        "{label}: {}: .{SERVICE_SUFFIX} files are generated from the service's .yaml; remove it",
                        entry.path().display()
                    ),
                    _ => {}
                }
            }
        }
        report_violations(&label, &violations)?;
    }
    if !rootfs.is_dir() && packages.packages.is_empty() {
        bail!(
            "{label}: {} has neither {ROOTFS_DIR}/ nor packages in {PACKAGES_FILE}: it would be empty",
            dir.display()
        );
    }
    for service in &mut services {
        for line in &packages.create_files {
            service.machined.push_str(line);
            service.machined.push('\n');
        }
    }
    Ok(Extension { name: name.to_string(), dir: dir.to_path_buf(), manifest, packages, services })
}

/// What Talos refuses in an extension (plus setuid/setgid bits, which Talos's validation does not check
/// but a shell-less node has no use for), for one entry at `rel` in the layer.
fn talos_violation(rel: &Path, meta: &fs::Metadata) -> Option<String> {
    let kind = meta.file_type();
    if kind.is_block_device() || kind.is_char_device() {
        return Some("a device node: special files are not allowed in extensions".into());
    }
    if kind.is_fifo() {
        return Some("a fifo: special files are not allowed in extensions".into());
    }
    if kind.is_socket() {
        return Some("a socket: special files are not allowed in extensions".into());
    }
    if !kind.is_symlink() {
        let mode = meta.permissions().mode();
        if mode & 0o002 != 0 {
            return Some(format!("world-writable (mode {:o}): not allowed in extensions", mode & 0o7777));
        }
        if mode & 0o6000 != 0 {
            return Some(format!("setuid/setgid (mode {:o}): not allowed in extensions", mode & 0o7777));
        }
    }
    if !kind.is_dir() && !ALLOWED_PREFIXES.iter().any(|prefix| rel.starts_with(prefix)) {
        return Some(format!("outside the paths Talos allows in extensions (/{})", ALLOWED_PREFIXES.join(", /")));
    }
    None
}

fn report_violations(label: &str, violations: &[String]) -> Result<()> {
    if violations.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = violations.iter().take(20).map(String::as_str).collect();
    let more = violations.len().saturating_sub(shown.len());
    bail!(
        "{label}: {} problem{} with the extension's contents:\n  {}{}",
        violations.len(),
        if violations.len() == 1 { "" } else { "s" },
        shown.join("\n  "),
        if more > 0 { format!("\n  … and {more} more") } else { String::new() }
    )
}

/// Builds one extension's layer tree at `tree` (which must not exist yet): its packages in its own
/// root, its `rootfs/` overlay, the services' mount points and translations, then Talos's content
/// rules and the no-shell policy over the result.
pub fn build_tree(
    extension: &Extension,
    tree: &Path,
    arch: Arch,
    debs: &[(&LockedPackage, &Path)],
    policy: &Policy,
) -> Result<()> {
    let label = extension.label();
    make_dir(tree)?;
    let mut provenance = Provenance::new();

    let set = PackageSet::Extension(extension.name.clone());
    let mut members: Vec<&(&LockedPackage, &Path)> = debs.iter().filter(|(p, _)| p.set == set).collect();
    if !extension.packages.packages.is_empty() && members.is_empty() {
        bail!("{label}: the lock has no {set} packages for {arch}; run `cargo xtask lock`");
    }
    if !members.is_empty() {
        members.sort_by_key(|(p, _)| p.name.as_str());
        let root_rel = Path::new(SERVICE_ROOTS.trim_start_matches('/')).join(&extension.name);
        let root = tree.join(&root_rel);
        ensure_parents(tree, &root_rel)?;
        make_dir(&root)?;
        make_merged_usr(&root, arch)?;
        let mut inside = Provenance::new();
        for (package, path) in members {
            deb::unpack(path, &package.name, &root, &mut inside)
                .with_context(|| format!("{label}: unpacking {} ({})", package.name, path.display()))?;
        }
        policy::drop_files(
            &root,
            &extension.packages.drop_files,
            &mut inside,
            &format!("{label}: {}, field `drop-files`", extension.packages.path.display()),
        )?;
        provenance.extend(inside.into_iter().map(|(rel, origin)| (root_rel.join(rel), origin)));
    }

    let rootfs = extension.dir.join(ROOTFS_DIR);
    if rootfs.is_dir() {
        overlay::apply(&rootfs, tree, &mut provenance).with_context(|| label.clone())?;
    }

    for service in &extension.services {
        let context = || format!("{label}: service {} ({})", service.name, service.source.display());
        let root_rel = service.root();
        let root = tree.join(&root_rel);
        if !root.is_dir() {
            bail!(
                "{}: its root /{} is not in the extension: name the service after the extension whose packages \
                 it runs, or ship its root under {ROOTFS_DIR}/{}",
                context(),
                root_rel.display(),
                root_rel.display()
            );
        }
        check_entrypoint(&root, &service.entrypoint).with_context(context)?;
        for dir in CONTAINER_MOUNT_POINTS.iter().map(|d| format!("/{d}")).chain(service.destinations.iter().cloned()) {
            let rel = PathBuf::from(dir.trim_start_matches('/'));
            if fs::symlink_metadata(root.join(&rel)).is_err() {
                ensure_parents(&root, &rel)
                    .and_then(|()| make_dir(&root.join(&rel)))
                    .with_context(|| format!("{}: making the mount point {dir} in its root", context()))?;
            }
        }
        let generated =
            Path::new(SERVICE_SPECS.trim_start_matches('/')).join(format!("{}.{SERVICE_SUFFIX}", service.name));
        ensure_parents(tree, &generated)?;
        write_new(&tree.join(&generated), service.machined.as_bytes()).with_context(context)?;
        provenance.insert(generated, format!("overlay generated by xtask from {}", service.source.display()));
    }

    for line in policy::normalise_directories(tree, &provenance)? {
        progress::note(format!("{label}: {line}"));
    }
    let mut violations = Vec::new();
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("{label}: walking {}", tree.display()))?;
        let rel = entry.path().strip_prefix(tree)?;
        if let Some(why) = talos_violation(rel, &entry.path().symlink_metadata()?) {
            violations.push(format!("/{} ({}): {why}", rel.display(), origin(&provenance, rel)));
        }
    }
    report_violations(&label, &violations)?;
    policy.check_tree(tree, &label, &provenance)?;
    policy::check_modes(tree, &label, &provenance)
}

/// Follows `entrypoint` inside `root` as the service will see it (absolute symlinks resolve against
/// `root`) and checks it ends at an executable file.
fn check_entrypoint(root: &Path, entrypoint: &str) -> Result<()> {
    let mut pending: Vec<String> = entrypoint.split('/').filter(|p| !p.is_empty()).rev().map(String::from).collect();
    let mut here: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                here.pop();
                continue;
            }
            _ => here.push(part),
        }
        let path = here.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        let meta = fs::symlink_metadata(&path)
            .map_err(|_| anyhow::anyhow!("entrypoint {entrypoint}: /{} does not exist in its root", here.join("/")))?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                bail!("entrypoint {entrypoint}: too many levels of symbolic links");
            }
            let target = fs::read_link(&path)?;
            here.pop();
            if target.is_absolute() {
                here.clear();
            }
            let parts: Vec<String> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            pending.extend(parts.into_iter().rev());
        }
    }
    let path = here.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    let meta = fs::metadata(&path).with_context(|| format!("entrypoint {entrypoint}"))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("entrypoint {entrypoint}: /{} is not an executable file", here.join("/"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn talos_rules_for_contents() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, "").unwrap();
        let meta = |mode: u32| {
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
            fs::symlink_metadata(&file).unwrap()
        };
        assert!(talos_violation(Path::new("usr/local/bin/x"), &meta(0o755)).is_none());
        assert!(talos_violation(Path::new("usr/lib/firmware/x"), &meta(0o644)).is_none());
        assert!(talos_violation(Path::new("usr/localx/x"), &meta(0o644)).unwrap().contains("outside"));
        assert!(talos_violation(Path::new("etc/passwd"), &meta(0o644)).unwrap().contains("outside"));
        assert!(talos_violation(Path::new("usr/local/x"), &meta(0o666)).unwrap().contains("world-writable"));
        assert!(talos_violation(Path::new("usr/local/x"), &meta(0o4755)).unwrap().contains("setuid"));
    }

    #[test]
    fn create_files_reach_every_service_and_stay_in_writable_places() {
        let dir = tempfile::tempdir().unwrap();
        let ext = dir.path().join("svc");
        fs::create_dir_all(ext.join("rootfs/usr/local/etc/containers")).unwrap();
        fs::write(
            ext.join("manifest.yaml"),
            "version: v1alpha1\nmetadata:\n  name: svc\n  version: \"1\"\n  author: a\n  description: d\n  \
             compatibility:\n    talos:\n      version: \">= v1.0.0\"\n",
        )
        .unwrap();
        fs::write(
            ext.join("rootfs/usr/local/etc/containers/svc.yaml"),
            "name: svc\ncontainer:\n  entrypoint: /usr/sbin/svc\nrestart: always\n",
        )
        .unwrap();
        let with_create_file = |path: &str| {
            let toml = format!("[[create-file]]\npath = \"{path}\"\ncontent = \"id={{random}}\\n\"\n");
            fs::write(ext.join("packages.toml"), toml).unwrap();
            load_one(&ext, "svc")
        };
        let loaded = with_create_file("/var/lib/svc/id").unwrap();
        assert!(loaded.services[0].machined.ends_with("create-file=/var/lib/svc/id:id={random}\\n\n"));
        for bad in ["/etc/svc/id", "var/lib/svc/id", "/var/../etc/x"] {
            let err = format!("{:#}", with_create_file(bad).unwrap_err());
            assert!(err.contains("create-file") && err.contains("packages.toml"), "{bad}: {err}");
        }
    }
}

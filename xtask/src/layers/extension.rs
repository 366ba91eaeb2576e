//! System extensions in Talos's format, baked into the image at build time.
//!
//! An extension is a directory `overlays/extensions/<name>/` holding Talos's `manifest.yaml`
//! (`version: v1alpha1` and metadata), `rootfs/` (files laid out as on the node) and, our addition, an
//! optional `packages.toml` naming Debian packages (see [`PackagesFile`]). Those are locked as the set
//! `extension:<name>` for each arch and unpacked, merged-/usr and all, into a root under
//! `/usr/local/lib/containers/` (the extension's name, or `root =`), from which Talos (and machined) run
//! a service of that name. Contents are checked as Talos checks them (only its allowed prefixes,
//! nothing world-writable, no special files) plus no setuid/setgid bits and the no-shell policy.
//! Services (`rootfs/usr/local/etc/containers/<name>.yaml`) are parsed by machined's own parser
//! (service.rs) and shipped unchanged; machined reads them at boot.
//!
//! [`check`] is everything short of building, with every problem listed: the build's loader and
//! `cargo xtask check-extension` both use it, so they say the same.

use super::ldcache;
use super::manifest::{parse_manifest, TalosManifest, MANIFEST_FILE};
use super::service::{parse_service, plural, spec::clean_absolute, Service};
use super::yaml;
use crate::archive::deb;
use crate::archive::lock::ExtensionPackages;
use crate::archive::lockfile::LockedPackage;
use crate::rootfs::policy::{self, Policy};
use crate::rootfs::{overlay, tree::make_merged_usr};
use crate::spec::glob::path_glob;
use crate::spec::names::{PackageSet, EXTENSIONS_DIR};
use crate::spec::protocol::{CREATE_FILES, SERVICE_ROOTS, SERVICE_SPECS, WRITABLE_DIRS};
use crate::spec::{Arch, ImageSpec};
use crate::util::elf;
use crate::util::fs::{make_dir, write_new};
use crate::util::progress;
use crate::util::tree::{ensure_parents, normalise, origin, symlink_stays_inside, Provenance};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

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

/// `packages.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PackagesFile {
    /// Debian packages unpacked into the extension's package root, with their Depends closure.
    #[serde(default)]
    packages: Vec<String>,
    /// Packages never unpacked (added to the spec's own `exclude-packages`).
    #[serde(default)]
    exclude_packages: Vec<String>,
    /// The package root's name under /usr/local/lib/containers/ [default: the extension's name]: the
    /// root of the service of that name (Talos's iscsi-tools runs a service named iscsid).
    #[serde(default)]
    root: Option<String>,
    /// Files removed from the package root after unpacking: absolute globs as the service sees them.
    #[serde(default)]
    drop_files: Vec<String>,
    /// Symlinks on the node, to files of the package root: where an unchanged Talos spec expects a
    /// program (iscsid.yaml runs /usr/local/sbin/iscsid).
    #[serde(default)]
    link: Vec<Link>,
    /// Writes `<package root>/etc/ld.so.cache` naming the package root's shared libraries that the
    /// node's root lacks, by their node paths: for a service whose spec binds the node's /lib and
    /// /usr/lib over its own and reaches its libraries through a /usr/local/lib bind, as Talos's
    /// iscsid.yaml does (Talos's musl loader searches /usr/local/lib; glibc's reads its cache).
    #[serde(default)]
    library_cache: bool,
    /// Files machined writes on the node, when missing, before this extension's services start: values
    /// unique to each node (an iSCSI initiator name) cannot be baked into a shared image. In `content`,
    /// `{random}` becomes 32 random hex digits. Paths are under /var, /run or one of the root's
    /// writable directories (`WRITABLE_DIRS`, e.g. /etc/iscsi).
    #[serde(default)]
    create_file: Vec<CreateFile>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The link, as a path on the node.
    pub path: String,
    /// What it points at, an absolute path on the node.
    pub target: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateFile {
    pub path: String,
    pub content: String,
}

/// The packages an extension asks for, and what the build does with them.
#[derive(Clone, Debug, Default)]
pub struct PackageList {
    /// packages.toml, for errors (even when absent).
    pub path: PathBuf,
    pub packages: Vec<String>,
    pub exclude_packages: Vec<String>,
    /// The package root's name under /usr/local/lib/containers/.
    pub root: String,
    pub drop_files: Vec<String>,
    pub links: Vec<Link>,
    pub library_cache: bool,
    pub create_files: Vec<CreateFile>,
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

/// Loads every extension the spec names, in order, checking each before anything is fetched; a
/// service depending on another extension's service (`ext-<name>`) must find it among them.
pub fn load(overlays_dir: &Path, spec: &ImageSpec) -> Result<Vec<Extension>> {
    let mut extensions = Vec::new();
    for name in &spec.extensions {
        let checked = check(&overlays_dir.join(EXTENSIONS_DIR).join(name), Some(name));
        for warning in &checked.warnings {
            progress::note(format!("extension {name}: {warning}"));
        }
        extensions.push(checked.into_result()?);
    }
    let services: Vec<&str> = extensions.iter().flat_map(|e| e.services.iter().map(Service::name)).collect();
    for extension in &extensions {
        for service in &extension.services {
            for other in service.depends_on_extensions() {
                if !services.contains(&other) {
                    bail!(
                        "{}: {}: field `depends`: service ext-{other} is in none of the image's extensions ({})",
                        extension.label(),
                        service.source.display(),
                        spec.extensions.join(", ")
                    );
                }
            }
        }
    }
    Ok(extensions)
}

/// What checking an extension directory found.
pub struct Checked {
    /// The directory's name (the extension's, unless the manifest disagrees).
    pub name: String,
    pub dir: PathBuf,
    /// The extension, when nothing is wrong with it.
    pub extension: Option<Extension>,
    /// Every problem, one line each, naming the file (and line and field, where there is one).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Checked {
    /// The extension, or an error listing every problem.
    pub fn into_result(self) -> Result<Extension> {
        match self.extension {
            Some(extension) if self.problems.is_empty() => Ok(extension),
            _ => bail!(
                "extension {}: {} problem{} with the extension:\n  {}",
                self.name,
                self.problems.len(),
                plural(self.problems.len()),
                self.problems.join("\n  ")
            ),
        }
    }
}

/// Checks an extension directory without building it: its layout, manifest.yaml (whose name must be
/// `expected_name`, when given), packages.toml, every service spec, and Talos's rules for the
/// contents of rootfs/. Every problem found is listed.
pub fn check(dir: &Path, expected_name: Option<&str>) -> Checked {
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let name = expected_name.map_or(dir_name, str::to_string);
    let label = format!("extension {name}");
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    // Messages from the manifest parser start with the label, which the report puts in front once.
    let push = |problems: &mut Vec<String>, e: anyhow::Error| {
        let text = format!("{e:#}");
        problems.push(text.strip_prefix(&format!("{label}: ")).map(str::to_string).unwrap_or(text));
    };
    let finish = |extension: Option<Extension>, problems: Vec<String>, warnings: Vec<String>| Checked {
        name: name.clone(),
        dir: dir.to_path_buf(),
        extension,
        problems,
        warnings,
    };
    if !dir.is_dir() {
        let why = match expected_name {
            Some(_) => format!("{} does not exist (named in the spec's field `extensions`)", dir.display()),
            None => format!("{} is not a directory", dir.display()),
        };
        return finish(None, vec![why], warnings);
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return finish(None, vec![format!("listing {}: {e}", dir.display())], warnings),
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let is_file = entry.file_type().is_ok_and(|k| k.is_file());
        let is_dir = entry.file_type().is_ok_and(|k| k.is_dir());
        match file_name.to_str() {
            Some(MANIFEST_FILE) if is_file => {}
            Some(PACKAGES_FILE) if is_file => {}
            Some(ROOTFS_DIR) if is_dir => {}
            _ => problems.push(format!(
                "{}: unexpected; an extension directory holds only {MANIFEST_FILE}, {ROOTFS_DIR}/ and {PACKAGES_FILE}",
                entry.path().display()
            )),
        }
    }

    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = match fs::read_to_string(&manifest_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(format!("{} is missing", manifest_path.display()));
            None
        }
        Err(e) => {
            problems.push(format!("reading {}: {e}", manifest_path.display()));
            None
        }
        Ok(text) => match parse_manifest(&text, &manifest_path, &label) {
            Ok(manifest) if manifest.metadata.name != name => {
                problems.push(format!(
                    "{}:{}: field `metadata.name` is {:?}, but the directory is {name:?}; they must agree",
                    manifest_path.display(),
                    yaml::line_of(&text, "name").unwrap_or(1),
                    manifest.metadata.name
                ));
                None
            }
            Ok(manifest) => Some(manifest),
            Err(e) => {
                push(&mut problems, e);
                None
            }
        },
    };

    let packages_path = dir.join(PACKAGES_FILE);
    let mut packages = PackageList { path: packages_path.clone(), root: name.clone(), ..PackageList::default() };
    if packages_path.exists() {
        match crate::spec::load_toml::<PackagesFile>(&packages_path) {
            Ok(file) => packages_problems(file, &mut packages, &mut problems),
            Err(e) => push(&mut problems, e),
        }
    }

    let rootfs = dir.join(ROOTFS_DIR);
    let mut services = Vec::new();
    if rootfs.is_dir() {
        let overlay = overlay::label(&rootfs);
        for entry in walkdir::WalkDir::new(&rootfs).min_depth(1).sort_by_file_name() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    problems.push(format!("walking {}: {e}", rootfs.display()));
                    continue;
                }
            };
            let Ok(raw) = entry.path().strip_prefix(&rootfs) else { continue };
            let rel = match normalise(raw) {
                Ok(rel) => rel,
                Err(why) => {
                    problems.push(format!("{}: {why}", entry.path().display()));
                    continue;
                }
            };
            let Ok(meta) = entry.path().symlink_metadata() else { continue };
            if let Some(why) = talos_violation(&rel, &meta) {
                problems.push(format!("/{} ({overlay}): {why}", rel.display()));
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path()).unwrap_or_default();
                if !symlink_stays_inside(&rel, &target) {
                    problems.push(format!(
                        "/{} ({overlay}): symlink to {} escapes the root",
                        rel.display(),
                        target.display()
                    ));
                }
            }
            let in_specs = rel.parent() == Some(Path::new(SERVICE_SPECS.trim_start_matches('/')));
            if in_specs && meta.is_file() && rel.extension().is_some_and(|e| e == "yaml") {
                let parsed = fs::read_to_string(entry.path())
                    .map_err(|e| vec![format!("reading {}: {e}", entry.path().display())])
                    .and_then(|text| parse_service(&text, entry.path()));
                match parsed {
                    Ok(service) => {
                        warnings.extend(service.warnings.iter().cloned());
                        if services.iter().any(|s: &Service| s.name() == service.name()) {
                            problems.push(format!(
                                "{}: a second service named {} (Talos refuses the duplicate)",
                                entry.path().display(),
                                service.name()
                            ));
                        }
                        services.push(service);
                    }
                    Err(lines) => problems.extend(lines),
                }
            }
        }
    }
    if !rootfs.is_dir() && packages.packages.is_empty() {
        problems.push(format!(
            "{} has neither {ROOTFS_DIR}/ nor packages in {PACKAGES_FILE}: it would be empty",
            dir.display()
        ));
    }
    let extension =
        manifest.map(|manifest| Extension { name: name.clone(), dir: dir.to_path_buf(), manifest, packages, services });
    finish(extension, problems, warnings)
}

/// Checks packages.toml's values, moving them into `packages`.
fn packages_problems(file: PackagesFile, packages: &mut PackageList, problems: &mut Vec<String>) {
    let at = |field: &str| format!("{}: field `{field}`", packages.path.display());
    for pattern in &file.drop_files {
        if let Err(e) = path_glob(pattern) {
            problems.push(format!("{}: {e:#}", at("drop-files")));
        }
    }
    if let Some(root) = &file.root {
        if !super::service::spec::valid_name(root) {
            problems.push(format!("{}: {root:?} must be lowercase letters, digits, '-' and '_'", at("root")));
        }
    }
    for link in &file.link {
        let node_path = link.path.strip_prefix('/').map(Path::new);
        let allowed = node_path.is_some_and(|p| ALLOWED_PREFIXES.iter().any(|prefix| p.starts_with(prefix)));
        if !clean_absolute(&link.path) || !allowed {
            problems.push(format!(
                "{}: path {:?} must be a clean path under the prefixes Talos allows (/{})",
                at("link"),
                link.path,
                ALLOWED_PREFIXES.join(", /")
            ));
        }
        if !clean_absolute(&link.target) {
            problems.push(format!("{}: target {:?} must be a clean absolute path", at("link"), link.target));
        }
    }
    for create in &file.create_file {
        let writable = ["/var", "/run"]
            .iter()
            .chain(WRITABLE_DIRS.iter())
            .any(|d| create.path.strip_prefix(d).is_some_and(|rest| rest.starts_with('/') && rest.len() > 1));
        if !clean_absolute(&create.path) || !writable {
            problems.push(format!(
                "{}: path {:?} must be a clean path under /var/, /run/ or {}, the node's writable places",
                at("create-file"),
                create.path,
                WRITABLE_DIRS.map(|d| format!("{d}/")).join(", ")
            ));
        }
        if create.content.contains('\0') {
            problems.push(format!("{}: content of {} holds a NUL", at("create-file"), create.path));
        }
    }
    packages.packages = file.packages;
    packages.exclude_packages = file.exclude_packages;
    if let Some(root) = file.root {
        packages.root = root;
    }
    packages.drop_files = file.drop_files;
    packages.links = file.link;
    packages.library_cache = file.library_cache;
    packages.create_files = file.create_file;
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
        plural(violations.len()),
        shown.join("\n  "),
        if more > 0 { format!("\n  … and {more} more") } else { String::new() }
    )
}

/// Builds one extension's layer tree at `tree` (which must not exist yet): its packages in its
/// package root (with its ld.so.cache when asked), its `rootfs/` overlay, its links on the node, the
/// files machined creates at boot; then each service's root and entrypoint are checked as the service
/// will see them, and Talos's content rules and the no-shell policy run over the result.
pub fn build_tree(
    extension: &Extension,
    tree: &Path,
    arch: Arch,
    debs: &[(&LockedPackage, &Path)],
    policy: &Policy,
) -> Result<()> {
    let label = extension.label();
    let packages = &extension.packages;
    make_dir(tree)?;
    let mut provenance = Provenance::new();

    let set = PackageSet::Extension(extension.name.clone());
    let mut members: Vec<&(&LockedPackage, &Path)> = debs.iter().filter(|(p, _)| p.set == set).collect();
    if !packages.packages.is_empty() && members.is_empty() {
        bail!("{label}: the lock has no {set} packages for {arch}; run `cargo xtask lock`");
    }
    if !members.is_empty() {
        members.sort_by_key(|(p, _)| p.name.as_str());
        let root_rel = Path::new(SERVICE_ROOTS.trim_start_matches('/')).join(&packages.root);
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
            &packages.drop_files,
            &mut inside,
            &format!("{label}: {}, field `drop-files`", packages.path.display()),
        )?;
        if packages.library_cache {
            // What the node's root has, its loader finds in its default directories (bound in).
            let node_has: Vec<&str> =
                debs.iter().filter(|(p, _)| p.set == PackageSet::Rootfs).map(|(p, _)| p.name.as_str()).collect();
            let libraries = node_libraries(&root, &root_rel, arch, &inside, &node_has)
                .with_context(|| format!("{label}: {}, field `library-cache`", packages.path.display()))?;
            let cache = Path::new("etc/ld.so.cache");
            ensure_parents(&root, cache)?;
            write_new(&root.join(cache), &ldcache::write(arch, &libraries))?;
            inside.insert(cache.to_path_buf(), "overlay generated by xtask (library-cache)".to_string());
        }
        provenance.extend(inside.into_iter().map(|(rel, origin)| (root_rel.join(rel), origin)));
    }

    let rootfs = extension.dir.join(ROOTFS_DIR);
    if rootfs.is_dir() {
        overlay::apply(&rootfs, tree, &mut provenance).with_context(|| label.clone())?;
    }
    for link in &packages.links {
        let rel = PathBuf::from(link.path.trim_start_matches('/'));
        ensure_parents(tree, &rel)?;
        std::os::unix::fs::symlink(&link.target, tree.join(&rel))
            .with_context(|| format!("{label}: {}, field `link`: creating {}", packages.path.display(), link.path))?;
        provenance.insert(rel, format!("overlay generated by xtask ({}, field `link`)", packages.path.display()));
    }
    if !packages.create_files.is_empty() {
        let rel = Path::new(CREATE_FILES.trim_start_matches('/')).join(format!("{}.yaml", extension.name));
        let text = serde_yaml_ng::to_string(&packages.create_files).context("writing the create-file list")?;
        ensure_parents(tree, &rel)?;
        write_new(&tree.join(&rel), text.as_bytes())?;
        provenance
            .insert(rel, format!("overlay generated by xtask ({}, field `create-file`)", packages.path.display()));
    }

    for service in &extension.services {
        let context = || format!("{label}: service {} ({})", service.name(), service.source.display());
        let root_rel = Path::new(SERVICE_ROOTS.trim_start_matches('/')).join(service.name());
        if !tree.join(&root_rel).is_dir() {
            bail!(
                "{}: its root /{} is not in the extension: unpack the packages there (packages.toml `root = \"{}\"`), \
                 or ship it under {ROOTFS_DIR}/{}",
                context(),
                root_rel.display(),
                service.name(),
                root_rel.display()
            );
        }
        check_entrypoint(tree, &root_rel, service).with_context(context)?;
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

/// The shared libraries in the package root's library directories, as (soname, node path), leaving
/// out those of packages the node's root also has.
fn node_libraries(
    root: &Path,
    root_rel: &Path,
    arch: Arch,
    inside: &Provenance,
    node_has: &[&str],
) -> Result<Vec<(String, String)>> {
    let mut libraries = Vec::new();
    for dir in [format!("usr/lib/{}", arch.multiarch()), "usr/lib".to_string()] {
        let Ok(entries) = fs::read_dir(root.join(&dir)) else { continue };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let rel = file.strip_prefix(root)?.to_path_buf();
            let from_node = inside.get(&rel).is_some_and(|package| node_has.contains(&package.as_str()));
            let is_file = fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
            if from_node || !is_file || !file.file_name().is_some_and(|n| n.to_string_lossy().contains(".so")) {
                continue;
            }
            let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if !elf::is_elf64_le(&bytes) {
                continue;
            }
            if let Some(soname) = elf::soname(&bytes).with_context(|| format!("reading {}", file.display()))? {
                let node_path = format!("/{}/{dir}/{soname}", root_rel.display());
                libraries.push((soname, node_path));
            }
        }
    }
    if libraries.is_empty() {
        bail!("the packages hold no shared library the node's root lacks: nothing to put in the cache");
    }
    Ok(libraries)
}

/// How the service sees the node: its root, and its bind mounts (destination → node source).
struct View<'a> {
    tree: &'a Path,
    root: String,
    binds: Vec<(String, String)>,
}

impl View<'_> {
    /// The node path behind a path in the service's view.
    fn node_path(&self, inside: &str) -> String {
        let under = |dir: &str| inside == dir || inside.starts_with(&format!("{}/", dir.trim_end_matches('/')));
        match self.binds.iter().filter(|(dst, _)| under(dst)).max_by_key(|(dst, _)| dst.len()) {
            Some((dst, src)) => format!("{}{}", src.trim_end_matches('/'), &inside[dst.trim_end_matches('/').len()..]),
            None => format!("{}{inside}", self.root),
        }
    }
}

/// Follows the entrypoint as the service will see it (its root, with its bind mounts over it, absolute
/// symlinks resolved in that view) and checks it ends at an executable file of this extension. A path
/// that leads out of the extension, into a directory only the node's root provides, is not followed.
fn check_entrypoint(tree: &Path, root_rel: &Path, service: &Service) -> Result<()> {
    let entrypoint = &service.spec.container.entrypoint;
    let Some(start) = super::service::spec::entrypoint_in_root(entrypoint) else {
        // A bare name is looked up in the service's PATH at start; machined says so if it is not found.
        return Ok(());
    };
    let view = View {
        tree,
        root: format!("/{}", root_rel.display()),
        binds: service
            .spec
            .container
            .mounts
            .iter()
            .filter(|m| m.bind)
            .map(|m| (m.destination.clone(), m.source.clone()))
            .collect(),
    };
    let locate = |inside: &str| view.tree.join(view.node_path(inside).trim_start_matches('/'));
    let resolved =
        super::service::spec::follow_symlinks(&start, locate).with_context(|| format!("entrypoint {entrypoint}"))?;
    let node = view.node_path(&resolved);
    let path = locate(&resolved);
    let Ok(meta) = fs::metadata(&path) else {
        let rel = Path::new(node.trim_start_matches('/'));
        if !ALLOWED_PREFIXES.iter().any(|prefix| rel.starts_with(prefix)) {
            return Ok(()); // the node's root provides it: not this extension's to check
        }
        bail!("entrypoint {entrypoint}: {resolved} (on the node {node}) is not in the extension");
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!("entrypoint {entrypoint}: {resolved} (on the node {node}) is not an executable file");
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

    fn extension_dir(dir: &Path, packages_toml: &str) -> PathBuf {
        let ext = dir.join("svc");
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
        fs::write(ext.join("packages.toml"), packages_toml).unwrap();
        ext
    }

    #[test]
    fn create_files_stay_in_writable_places() {
        let dir = tempfile::tempdir().unwrap();
        let with_create_file = |path: &str| {
            let toml = format!("[[create-file]]\npath = \"{path}\"\ncontent = \"id={{random}}\\n\"\n");
            check(&extension_dir(dir.path(), &toml), Some("svc"))
        };
        for good in ["/var/lib/svc/id", "/run/svc/id", "/etc/iscsi/initiatorname.iscsi"] {
            let checked = with_create_file(good);
            assert!(checked.problems.is_empty(), "{good}: {:?}", checked.problems);
            let created = &checked.extension.unwrap().packages.create_files;
            assert_eq!(created, &[CreateFile { path: good.into(), content: "id={random}\n".into() }]);
        }
        for bad in ["/etc/svc/id", "var/lib/svc/id", "/var/../etc/x", "/etc/iscsi", "/etc/iscsix/y"] {
            let problems = with_create_file(bad).problems;
            assert!(
                problems.iter().any(|p| p.contains("create-file") && p.contains("packages.toml")),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_of_a_directory_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let ext = extension_dir(dir.path(), "root = \"Bad\"\n[[link]]\npath = \"/etc/x\"\ntarget = \"rel\"\n");
        fs::write(ext.join("rootfs/usr/local/etc/containers/svc.yaml"), "name: svc\ncontainer: {}\n").unwrap();
        fs::write(ext.join("stray.txt"), "").unwrap();
        let checked = check(&ext, None);
        let all = checked.problems.join("\n");
        for wanted in [
            "stray.txt: unexpected",
            "field `root`: \"Bad\"",
            "field `link`: path \"/etc/x\"",
            "field `link`: target \"rel\"",
            "svc.yaml:2: field `container`: no `entrypoint`",
            "svc.yaml: no `restart`",
        ] {
            assert!(all.contains(wanted), "{wanted:?} missing from:\n{all}");
        }
        let err = format!("{:#}", checked.into_result().unwrap_err());
        assert!(err.starts_with("extension svc: 6 problems with the extension:\n  "), "{err}");
    }

    #[test]
    fn entrypoints_are_followed_through_binds_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        let root_rel = Path::new("usr/local/lib/containers/svc");
        fs::create_dir_all(tree.join(root_rel).join("usr/sbin")).unwrap();
        fs::create_dir_all(tree.join("usr/local/sbin")).unwrap();
        let binary = tree.join(root_rel).join("usr/sbin/svc");
        fs::write(&binary, "").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/usr/local/lib/containers/svc/usr/sbin/svc", tree.join("usr/local/sbin/svc"))
            .unwrap();
        let service = |yaml: &str| parse_service(yaml, Path::new("svc.yaml")).unwrap();
        let binds = "  mounts:\n    - {source: /usr/local/sbin, destination: /usr/local/sbin, type: bind}\n    \
                     - {source: /usr/local/lib, destination: /usr/local/lib, type: bind}\n";
        let spec = |entrypoint: &str, mounts: &str| {
            service(&format!("name: svc\ncontainer:\n  entrypoint: {entrypoint}\n{mounts}restart: always\n"))
        };
        check_entrypoint(tree, root_rel, &spec("/usr/local/sbin/svc", binds)).unwrap();
        check_entrypoint(tree, root_rel, &spec("./usr/sbin/svc", "")).unwrap();
        let err = format!("{:#}", check_entrypoint(tree, root_rel, &spec("/usr/local/sbin/svc", "")).unwrap_err());
        assert!(err.contains("/usr/local/lib/containers/svc/usr/local/sbin/svc"), "{err}");
        let binds_sbin_only = "  mounts:\n    - {source: /usr/local/sbin, destination: /usr/local/sbin, type: bind}\n";
        let err = format!(
            "{:#}",
            check_entrypoint(tree, root_rel, &spec("/usr/local/sbin/svc", binds_sbin_only)).unwrap_err()
        );
        assert!(err.contains("is not in the extension"), "{err}");
        // A program of the node's root (outside what extensions may ship) is the root's business.
        check_entrypoint(
            tree,
            root_rel,
            &spec("/usr/bin/true", "  mounts:\n    - {source: /usr, destination: /usr, type: bind}\n"),
        )
        .unwrap();
    }
}

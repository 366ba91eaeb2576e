//! System extensions in Talos's format, baked into the image at build time.
//!
//! An extension is a directory `overlays/extensions/<name>/` holding Talos's `manifest.yaml`
//! (`version: v1alpha1` and metadata), `rootfs/` (files laid out as on the node) and, our addition, an
//! optional `packages.toml` (`packages`, `exclude-packages`, `drop-files`) naming Debian packages. Those
//! are locked as the set `extension:<name>` for each arch and unpacked, merged-/usr and all, into the
//! extension's own root `/usr/local/lib/containers/<name>/`, from which Talos (and machined) run an
//! extension's service. Contents are checked as Talos checks them (only its allowed prefixes, nothing
//! world-writable, no special files) plus no setuid/setgid bits and the no-shell policy.
//!
//! Services are Talos service specs in `rootfs/usr/local/etc/containers/<name>.yaml`. machined is
//! std-only and reads no YAML, so each is translated here into `<name>.machined` beside it, one
//! `key=value` per line: `name=`, `root=`, `entrypoint=`, `arg=` (one per argument), `depends-path=`
//! (one per path dependency), `restart=always|never`, `bind=<src>:<dst>[:rw]` (one per mount).
//!
//! Each extension becomes one squashfs layer. The layers, `/extensions.yaml` (Talos's format) and
//! `/etc/machined/extensions` (`<name> <version> /extensions/<name>.sqsh` per layer, in mount order) go
//! into a second cpio, zstd-compressed, appended to the initramfs, as Talos's imager does.

use crate::cpio::CpioWriter;
use crate::deb::{self, Provenance};
use crate::debian::lockfile::LockedPackage;
use crate::policy::{self, Policy};
use crate::spec::{Arch, ImageSpec};
use crate::{progress, Global};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Where extension directories live, under the overlays directory.
pub const EXTENSIONS_DIR: &str = "extensions";
const MANIFEST_FILE: &str = "manifest.yaml";
const ROOTFS_DIR: &str = "rootfs";
const PACKAGES_FILE: &str = "packages.toml";
/// Service containers' roots, one per service name (Talos: /usr/local/lib/containers/<name>).
pub const CONTAINERS: &str = "usr/local/lib/containers";
/// Service specs (Talos: /usr/local/etc/containers/<name>.yaml) and our translations.
const SERVICES: &str = "usr/local/etc/containers";
const MACHINED_SERVICE_SUFFIX: &str = "machined";
const TALOS_MANIFEST_VERSION: &str = "v1alpha1";

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

/// zstd level of the appended cpio. Its payload is squashfs, already compressed, so a higher level
/// buys nothing; one thread, because multi-threaded output differs (FACTS.md) and must not vary.
const CPIO_ZSTD_LEVEL: i32 = 3;

/// Extension and service names: Talos's service-name rule, which also keeps them safe in file names
/// and in machined's line formats.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_'))
}

/// The lock's package set for an extension.
pub fn set_name(extension: &str) -> String {
    format!("extension:{extension}")
}

// ---------------------------------------------------------------------------------------------
// Talos's manifest.yaml and extensions.yaml

/// `manifest.yaml`. Unknown keys are ignored, as Talos's own YAML decoder ignores them, so manifests
/// from newer Talos extensions still parse; `version` and `metadata.name`/`version` are required.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TalosManifest {
    #[serde(deserialize_with = "scalar")]
    pub version: String,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    #[serde(deserialize_with = "scalar")]
    pub name: String,
    #[serde(deserialize_with = "scalar")]
    pub version: String,
    #[serde(default, deserialize_with = "scalar")]
    pub author: String,
    #[serde(default, deserialize_with = "scalar")]
    pub description: String,
    #[serde(default)]
    pub compatibility: Compatibility,
    #[serde(rename = "extraInfo", default, deserialize_with = "scalar", skip_serializing_if = "String::is_empty")]
    pub extra_info: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Compatibility {
    #[serde(default)]
    pub talos: Constraint,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Constraint {
    #[serde(default, deserialize_with = "scalar")]
    pub version: String,
}

/// A YAML scalar read as text, as Go's decoder reads `version: 1.2` into a string field.
fn scalar<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<String, D::Error> {
    use serde_yaml_ng::Value;
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        _ => Err(serde::de::Error::custom("expected a string, found a list or mapping")),
    }
}

/// `/extensions.yaml` in the initramfs, Talos's `layers:` list.
#[derive(Serialize)]
struct ExtensionsConfig<'a> {
    layers: Vec<ConfigLayer<'a>>,
}

#[derive(Serialize)]
struct ConfigLayer<'a> {
    image: String,
    metadata: &'a Metadata,
}

/// An extension as manifest.json records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerRecord {
    pub name: String,
    pub version: String,
}

/// Parses a Talos manifest, checking what Talos and machined rely on. `label` names the extension.
pub fn parse_manifest(text: &str, path: &Path, label: &str) -> Result<TalosManifest> {
    let manifest: TalosManifest =
        serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("{label}: {}", yaml_error(path, &e)))?;
    let at = |key: &str| {
        format!("{label}: {}{}", path.display(), line_of(text, key).map_or(String::new(), |l| format!(":{l}")))
    };
    if manifest.version != TALOS_MANIFEST_VERSION {
        bail!(
            "{}: field `version`: {:?} is not a Talos extension manifest version (expected {TALOS_MANIFEST_VERSION})",
            at("version"),
            manifest.version
        );
    }
    let metadata = &manifest.metadata;
    if metadata.name.is_empty() {
        bail!("{}: field `metadata.name` must not be empty", at("name"));
    }
    if !valid_name(&metadata.name) {
        bail!(
            "{}: field `metadata.name`: {:?} must be lowercase letters, digits, '-' and '_'",
            at("name"),
            metadata.name
        );
    }
    if metadata.version.is_empty() || metadata.version.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{}: field `metadata.version`: {:?} must be non-empty, without spaces", at("version"), metadata.version);
    }
    Ok(manifest)
}

/// `path:line:column: message` for a YAML error.
fn yaml_error(path: &Path, e: &serde_yaml_ng::Error) -> String {
    let message = e.to_string();
    match e.location() {
        Some(at) => {
            // The message repeats the position; it is already in front.
            let suffix = format!(" at line {} column {}", at.line(), at.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            format!("{}:{}:{}: {message}", path.display(), at.line(), at.column())
        }
        None => format!("{}: {message}", path.display()),
    }
}

/// The 1-based line where `key:` first appears (for errors about values that parsed but are wrong).
fn line_of(text: &str, key: &str) -> Option<usize> {
    let wanted = format!("{key}:");
    text.lines().position(|line| line.trim_start().starts_with(&wanted)).map(|i| i + 1)
}

// ---------------------------------------------------------------------------------------------
// Talos service specs and their machined translation

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    container: ServiceContainer,
    #[serde(default)]
    depends: Vec<ServiceDependency>,
    restart: Option<String>,
}

/// The part of Talos's container spec machined can honour; anything else (environment, security
/// options) is refused by name rather than silently dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceContainer {
    entrypoint: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    mounts: Vec<ServiceMount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDependency {
    path: Option<String>,
    service: Option<String>,
    network: Option<serde_yaml_ng::Value>,
    time: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceMount {
    source: String,
    destination: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// Mount options that mean something for a bind mount machined makes; `rw` makes it writable.
const MOUNT_OPTIONS: [&str; 9] = ["bind", "rbind", "ro", "rw", "rshared", "rslave", "rprivate", "shared", "private"];

/// One extension service, checked and translated.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    /// The spec's source file, for errors.
    pub source: PathBuf,
    /// Absolute path of the entrypoint inside the service's root.
    pub entrypoint: String,
    /// Mount destinations inside the service's root (they must exist in the read-only layer).
    pub destinations: Vec<String>,
    /// The `<name>.machined` text.
    pub machined: String,
}

impl Service {
    /// The service's root inside the layer, relative: usr/local/lib/containers/<name>.
    pub fn root(&self) -> PathBuf {
        Path::new(CONTAINERS).join(&self.name)
    }
}

/// A value for machined's `key=value` lines: one line, no NUL.
fn line_value<'a>(value: &'a str, what: &str) -> Result<&'a str> {
    if value.contains(['\n', '\r', '\0']) {
        bail!("{what} {value:?} contains a line break or NUL");
    }
    Ok(value)
}

/// An absolute, `..`-free path usable in a `bind=src:dst` line.
fn bind_path<'a>(value: &'a str, what: &str) -> Result<&'a str> {
    line_value(value, what)?;
    if !value.starts_with('/') || value.contains(':') || value.split('/').any(|p| p == "..") {
        bail!("{what} {value:?} must be an absolute path without ':' or '..'");
    }
    Ok(value)
}

/// Parses a Talos service spec and translates it for machined. `label` names the extension.
pub fn parse_service(text: &str, path: &Path, label: &str) -> Result<Service> {
    let spec: ServiceSpec = serde_yaml_ng::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "{label}: {} (machined runs the subset of Talos's service spec it can honour)",
            yaml_error(path, &e)
        )
    })?;
    let at = |key: &str| {
        format!("{label}: {}{}", path.display(), line_of(text, key).map_or(String::new(), |l| format!(":{l}")))
    };
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if !valid_name(&spec.name) || spec.name != stem {
        bail!(
            "{}: field `name`: {:?} must be the file's name ({stem:?}), lowercase letters, digits, '-' and '_'",
            at("name"),
            spec.name
        );
    }
    let mut lines = vec![format!("name={}", spec.name), format!("root=/{CONTAINERS}/{}", spec.name)];

    // Talos resolves the entrypoint against the container's root; machined gets it absolute.
    let raw = spec.container.entrypoint.trim();
    let relative = raw.trim_start_matches("./").trim_start_matches('/');
    if relative.is_empty() || relative.split('/').any(|p| p == ".." || p.is_empty()) {
        bail!("{}: field `container.entrypoint`: {raw:?} must be a path inside the service's root", at("entrypoint"));
    }
    let entrypoint = format!("/{relative}");
    lines.push(format!(
        "entrypoint={}",
        line_value(&entrypoint, "container.entrypoint").with_context(|| at("entrypoint"))?
    ));
    for arg in &spec.container.args {
        lines.push(format!("arg={}", line_value(arg, "an argument").with_context(|| at("args"))?));
    }
    for dependency in &spec.depends {
        match dependency {
            ServiceDependency { path: Some(dep), service: None, network: None, time: None } => {
                bind_path(dep, "depends path").with_context(|| at("depends"))?;
                lines.push(format!("depends-path={dep}"));
            }
            ServiceDependency { path: None, service: Some(other), .. } => bail!(
                "{}: field `depends`: a dependency on service {other:?} is not supported by machined, which \
                 starts extension services side by side; depend on a path the other service creates",
                at("depends")
            ),
            ServiceDependency { path: None, service: None, network: Some(_), time: None } => bail!(
                "{}: field `depends`: network dependencies are not supported by machined; depend on a path",
                at("depends")
            ),
            ServiceDependency { path: None, service: None, network: None, time: Some(_) } => bail!(
                "{}: field `depends`: time dependencies are not supported by machined; depend on a path",
                at("depends")
            ),
            _ => bail!(
                "{}: field `depends`: each entry names exactly one of path, service, network, time",
                at("depends")
            ),
        }
    }
    let restart = match spec.restart.as_deref() {
        Some("always") => "always",
        Some("never") => "never",
        Some(other) => {
            bail!("{}: field `restart`: {other:?} is not supported by machined (always or never)", at("restart"))
        }
        None => bail!("{}: field `restart` is required (always or never)", at("container")),
    };
    lines.push(format!("restart={restart}"));
    let mut destinations = Vec::new();
    for mount in &spec.container.mounts {
        let what = format!("mount {} -> {}", mount.source, mount.destination);
        if mount.kind.as_deref().is_some_and(|k| k != "bind") {
            bail!("{}: {what}: type {:?}: machined makes bind mounts only", at("mounts"), mount.kind);
        }
        if let Some(unknown) = mount.options.iter().find(|o| !MOUNT_OPTIONS.contains(&o.as_str())) {
            bail!(
                "{}: {what}: option {unknown:?} is not supported by machined (known: {})",
                at("mounts"),
                MOUNT_OPTIONS.join(", ")
            );
        }
        let writable = mount.options.iter().any(|o| o == "rw");
        if writable && mount.options.iter().any(|o| o == "ro") {
            bail!("{}: {what}: options say both ro and rw", at("mounts"));
        }
        let source = bind_path(&mount.source, "mount source").with_context(|| at("mounts"))?;
        let destination = bind_path(&mount.destination, "mount destination").with_context(|| at("mounts"))?;
        lines.push(format!("bind={source}:{destination}{}", if writable { ":rw" } else { "" }));
        destinations.push(destination.to_string());
    }
    let mut machined = lines.join("\n");
    machined.push('\n');
    Ok(Service { name: spec.name, source: path.to_path_buf(), entrypoint, destinations, machined })
}

// ---------------------------------------------------------------------------------------------
// Loading and checking extension directories

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
    fn label(&self) -> String {
        format!("extension {}", self.name)
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
            line_of(&text, "name").unwrap_or(1),
            manifest.metadata.name
        );
    }

    let packages_path = dir.join(PACKAGES_FILE);
    let mut packages = PackageList { path: packages_path.clone(), ..PackageList::default() };
    if packages_path.exists() {
        let file: PackagesFile = crate::spec::load_toml(&packages_path).with_context(|| label.clone())?;
        for pattern in &file.drop_files {
            policy::path_glob(pattern)
                .with_context(|| format!("{label}: {}: field `drop-files`", packages_path.display()))?;
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
        let overlay = overlay_label(dir);
        let mut violations = Vec::new();
        for entry in walkdir::WalkDir::new(&rootfs).min_depth(1).sort_by_file_name() {
            let entry = entry.with_context(|| format!("{label}: walking {}", rootfs.display()))?;
            let raw = entry.path().strip_prefix(&rootfs)?;
            let rel =
                deb::normalise(raw).map_err(|why| anyhow::anyhow!("{label}: {}: {why}", entry.path().display()))?;
            let meta = entry.path().symlink_metadata()?;
            if let Some(why) = talos_violation(&rel, &meta) {
                violations.push(format!("/{} ({overlay}): {why}", rel.display()));
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path())?;
                if !deb::symlink_stays_inside(&rel, &target) {
                    violations.push(format!(
                        "/{} ({overlay}): symlink to {} escapes the root",
                        rel.display(),
                        target.display()
                    ));
                }
            }
            if rel.parent() == Some(Path::new(SERVICES)) && meta.is_file() {
                match rel.extension().and_then(|e| e.to_str()) {
                    Some("yaml") => {
                        let text = fs::read_to_string(entry.path())
                            .with_context(|| format!("{label}: reading {}", entry.path().display()))?;
                        services.push(parse_service(&text, entry.path(), &label)?);
                    }
                    Some(MACHINED_SERVICE_SUFFIX) => bail!(
                        "{label}: {}: .{MACHINED_SERVICE_SUFFIX} files are generated from the service's .yaml; remove it",
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

fn overlay_label(dir: &Path) -> String {
    format!("overlay {}", dir.join(ROOTFS_DIR).display())
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

// ---------------------------------------------------------------------------------------------
// Assembling and checking the trees (root and extensions) before out/ is touched

const TREES_PREFIX: &str = "trees-";

/// The root tree and one tree per extension, assembled and checked in a work directory in the cache
/// (not in out/, so a refused build leaves out/ exactly as it was).
pub struct Trees {
    _work: tempfile::TempDir,
    pub rootfs: PathBuf,
    pub layers: Vec<LayerTree>,
}

pub struct LayerTree {
    pub metadata: Metadata,
    pub tree: PathBuf,
}

/// Assembles the root tree (packages, overlays, `drop-files`) and every extension's tree, checking
/// each against Talos's rules and the no-shell policy.
pub fn prepare(
    global: &Global,
    spec: &ImageSpec,
    spec_path: &Path,
    arch: Arch,
    debs: &[(&LockedPackage, &Path)],
    extensions: &[Extension],
) -> Result<Trees> {
    let policy = Policy::from_spec(spec).with_context(|| format!("{}", spec_path.display()))?;
    let cache = global.cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    remove_stale_trees(&cache);
    let work = tempfile::Builder::new()
        .prefix(TREES_PREFIX)
        .tempdir_in(&cache)
        .with_context(|| format!("creating a work directory in {}", cache.display()))?;

    let step = progress::step("unpacking the root filesystem");
    let rootfs = work.path().join("rootfs");
    let inputs: Vec<crate::rootfs::DebInput> = debs
        .iter()
        .filter(|(p, _)| p.set == "rootfs")
        .map(|(p, path)| crate::rootfs::DebInput { name: &p.name, deb: path })
        .collect();
    let mut provenance = crate::rootfs::assemble(&rootfs, spec, arch, &inputs, &global.overlays_dir())?;
    policy::drop_files(
        &rootfs,
        &spec.drop_files,
        &mut provenance,
        &format!("{}, field `drop-files`", spec_path.display()),
    )?;
    step.done();
    policy.check_tree(&rootfs, "the root filesystem", &provenance)?;

    let mut layers = Vec::new();
    for extension in extensions {
        let step = progress::step(format!("assembling extension {}", extension.name));
        let tree = work.path().join(format!("extension-{}", extension.name));
        let provenance = assemble_extension(extension, &tree, arch, debs)?;
        step.done();
        policy.check_tree(&tree, &extension.label(), &provenance)?;
        layers.push(LayerTree { metadata: extension.manifest.metadata.clone(), tree });
    }
    Ok(Trees { _work: work, rootfs, layers })
}

/// Work directories left by killed builds (a finished or failed build removes its own). Builds can run
/// side by side on one cache, so only directories untouched for a day are taken for abandoned.
fn remove_stale_trees(cache: &Path) {
    let day = std::time::Duration::from_secs(24 * 60 * 60);
    for entry in fs::read_dir(cache).into_iter().flatten().flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(TREES_PREFIX)
            && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > day));
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Builds one extension's layer tree at `tree` and returns who put each file there.
fn assemble_extension(
    extension: &Extension,
    tree: &Path,
    arch: Arch,
    debs: &[(&LockedPackage, &Path)],
) -> Result<Provenance> {
    let label = extension.label();
    make_dir(tree)?;
    let mut provenance = Provenance::new();

    let set = set_name(&extension.name);
    let mut members: Vec<&(&LockedPackage, &Path)> = debs.iter().filter(|(p, _)| p.set == set).collect();
    if !extension.packages.packages.is_empty() && members.is_empty() {
        bail!("{label}: the lock has no {set:?} packages for {arch}; run `cargo xtask lock`");
    }
    if !members.is_empty() {
        members.sort_by_key(|(p, _)| p.name.as_str());
        let root_rel = Path::new(CONTAINERS).join(&extension.name);
        let root = tree.join(&root_rel);
        deb::ensure_parents(tree, &root_rel)?;
        make_dir(&root)?;
        deb::make_merged_usr(&root, arch)?;
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
        copy_overlay(&rootfs, tree, &overlay_label(&extension.dir), &mut provenance)
            .with_context(|| format!("{label}: copying {}", rootfs.display()))?;
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
                deb::ensure_parents(&root, &rel)
                    .and_then(|()| make_dir(&root.join(&rel)))
                    .with_context(|| format!("{}: making the mount point {dir} in its root", context()))?;
            }
        }
        let generated = Path::new(SERVICES).join(format!("{}.{MACHINED_SERVICE_SUFFIX}", service.name));
        deb::ensure_parents(tree, &generated)?;
        write_new(&tree.join(&generated), service.machined.as_bytes()).with_context(context)?;
        provenance.insert(generated, format!("overlay generated by xtask from {}", service.source.display()));
    }

    let mut violations = Vec::new();
    for entry in walkdir::WalkDir::new(tree).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("{label}: walking {}", tree.display()))?;
        let rel = entry.path().strip_prefix(tree)?;
        if let Some(why) = talos_violation(rel, &entry.path().symlink_metadata()?) {
            let origin = match provenance.get(rel) {
                Some(o) if o.starts_with("overlay ") => o.clone(),
                Some(package) => format!("package {package}"),
                None => "made by xtask".into(),
            };
            violations.push(format!("/{} ({origin}): {why}", rel.display()));
        }
    }
    report_violations(&label, &violations)?;
    Ok(provenance)
}

/// A directory with mode 0755 whatever the umask (a group- or world-writable one would fail the checks).
fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {}", path.display()))
}

/// Writes a file that must not exist yet.
fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).with_context(|| format!("chmod {}", path.display()))
}

/// Copies an extension's rootfs/ over its tree (already checked by [`load`]); merged-/usr paths
/// are redirected as for packages. Modes become what git records (755 or 644), as for the root's
/// overlays, so the checkout's umask does not reach the image.
fn copy_overlay(source: &Path, tree: &Path, label: &str, provenance: &mut Provenance) -> Result<()> {
    for entry in walkdir::WalkDir::new(source).min_depth(1).sort_by_file_name() {
        let entry = entry?;
        let raw = entry.path().strip_prefix(source)?;
        let rel = deb::normalise(raw).map_err(|why| anyhow::anyhow!("{}: {why}", raw.display()))?;
        let dest = tree.join(&rel);
        deb::ensure_parents(tree, &rel).with_context(|| format!("{}", rel.display()))?;
        let meta = entry.path().symlink_metadata()?;
        let existing = fs::symlink_metadata(&dest).ok();
        if meta.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => bail!("{}: a directory in the overlay, a file in the packages", rel.display()),
                None => fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?,
            }
            let mode = crate::reproducible::checkout_mode(meta.permissions().mode(), true);
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
            continue;
        }
        match existing {
            Some(m) if m.is_dir() => bail!("{}: a file in the overlay, a directory in the packages", rel.display()),
            Some(_) => fs::remove_file(&dest).with_context(|| format!("replacing {}", dest.display()))?,
            None => {}
        }
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &dest)
                .with_context(|| format!("creating {}", dest.display()))?;
        } else {
            fs::copy(entry.path(), &dest).with_context(|| format!("copying {}", entry.path().display()))?;
            let mode = crate::reproducible::checkout_mode(meta.permissions().mode(), false);
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        }
        provenance.insert(rel, label.to_string());
    }
    Ok(())
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

// ---------------------------------------------------------------------------------------------
// Layers and the initramfs

/// One extension's finished layer.
pub struct Layer {
    pub metadata: Metadata,
    pub sqsh: PathBuf,
}

/// The artifact name of an extension's layer, e.g. node-arm64.ext-iscsi-tools.sqsh.
pub fn artifact_name(base: &str, extension: &str) -> String {
    format!("{base}.ext-{extension}.sqsh")
}

/// Makes every extension's squashfs in `dir`, named as published.
pub fn make_layers(trees: &Trees, dir: &Path, base: &str, epoch: i64) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    for tree in &trees.layers {
        let sqsh = dir.join(artifact_name(base, &tree.metadata.name));
        crate::squashfs::make(&tree.tree, &sqsh, epoch).with_context(|| format!("extension {}", tree.metadata.name))?;
        layers.push(Layer { metadata: tree.metadata.clone(), sqsh });
    }
    Ok(layers)
}

pub fn records(layers: &[Layer]) -> Vec<LayerRecord> {
    layers.iter().map(|l| LayerRecord { name: l.metadata.name.clone(), version: l.metadata.version.clone() }).collect()
}

/// `/extensions.yaml`: Talos's layer list.
pub fn extensions_yaml(layers: &[Layer]) -> Result<String> {
    let config = ExtensionsConfig {
        layers: layers
            .iter()
            .map(|l| ConfigLayer { image: format!("{}.sqsh", l.metadata.name), metadata: &l.metadata })
            .collect(),
    };
    serde_yaml_ng::to_string(&config).context("writing extensions.yaml")
}

/// `/etc/machined/extensions`: one `<name> <version> /extensions/<name>.sqsh` line per layer, in
/// mount order.
pub fn machined_list(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| format!("{} {} /{EXTENSIONS_DIR}/{}.sqsh\n", l.metadata.name, l.metadata.version, l.metadata.name))
        .collect()
}

/// Appends the extensions cpio (zstd) to `initramfs`: /extensions.yaml, /extensions/<name>.sqsh and
/// /etc/machined/extensions. The kernel unpacks concatenated archives one after the other, each with
/// its own compression. Nothing is appended when there are no layers.
pub fn append_to_initramfs(initramfs: &Path, layers: &[Layer], epoch: i64) -> Result<()> {
    if layers.is_empty() {
        return Ok(());
    }
    let yaml = extensions_yaml(layers)?;
    let list = machined_list(layers);
    enum Entry<'a> {
        Dir,
        Bytes(&'a [u8]),
        File(&'a Path),
    }
    // Sorted, parents first, like the first archive.
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert("etc".into(), Entry::Dir);
    entries.insert("etc/machined".into(), Entry::Dir);
    entries.insert("etc/machined/extensions".into(), Entry::Bytes(list.as_bytes()));
    entries.insert("extensions.yaml".into(), Entry::Bytes(yaml.as_bytes()));
    entries.insert(EXTENSIONS_DIR.into(), Entry::Dir);
    for layer in layers {
        entries.insert(format!("{EXTENSIONS_DIR}/{}.sqsh", layer.metadata.name), Entry::File(&layer.sqsh));
    }
    let file = fs::OpenOptions::new()
        .append(true)
        .open(initramfs)
        .with_context(|| format!("opening {} to append the extensions", initramfs.display()))?;
    let encoder = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), CPIO_ZSTD_LEVEL)
        .context("starting the zstd encoder")?;
    let mut cpio = CpioWriter::new(encoder, epoch)?;
    for (path, entry) in &entries {
        match entry {
            Entry::Dir => cpio.add_dir(path, 0o755)?,
            Entry::Bytes(data) => cpio.add_file(path, 0o644, data)?,
            Entry::File(source) => cpio.add_file_from_path(path, 0o644, source)?,
        }
    }
    let mut out = cpio.finish()?.finish().context("finishing the zstd stream")?;
    out.flush().with_context(|| format!("writing {}", initramfs.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TALOS_ISCSI_TOOLS: &str = include_str!("../../tests/fixtures/talos-iscsi-tools/manifest.yaml");

    #[test]
    fn a_real_talos_manifest_parses() {
        let manifest = parse_manifest(TALOS_ISCSI_TOOLS, Path::new("manifest.yaml"), "extension iscsi-tools").unwrap();
        assert_eq!(manifest.metadata.name, "iscsi-tools");
        assert_eq!(manifest.metadata.author, "Sidero Labs");
        assert_eq!(manifest.metadata.compatibility.talos.version, ">= v1.1.0");
    }

    #[test]
    fn extra_info_and_unknown_keys_are_accepted() {
        let text = "version: v1alpha1\nmetadata:\n  name: x\n  version: 1.2\n  extraInfo: more\n  \
                    futureKey: [1, 2]\nanotherTopLevel: {a: b}\n";
        let manifest = parse_manifest(text, Path::new("m.yaml"), "extension x").unwrap();
        assert_eq!(manifest.metadata.version, "1.2");
        assert_eq!(manifest.metadata.extra_info, "more");
    }

    #[test]
    fn wrong_version_and_missing_name_are_named() {
        let err =
            parse_manifest("version: v1\nmetadata:\n  name: x\n  version: '1'\n", Path::new("m.yaml"), "extension x")
                .unwrap_err()
                .to_string();
        assert!(err.contains("extension x: m.yaml:1: field `version`") && err.contains("v1alpha1"), "{err}");
        let err = parse_manifest("version: v1alpha1\nmetadata:\n  version: '1'\n", Path::new("m.yaml"), "extension x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extension x: m.yaml:") && err.contains("missing field `name`"), "{err}");
    }

    #[test]
    fn services_translate_to_machined_lines() {
        let text = "name: agent\ndepends:\n  - path: /dev/virtio-ports/x\ncontainer:\n  entrypoint: ./usr/sbin/agent\n  \
                    args: [--a, -b=1]\n  mounts:\n    - source: /dev\n      destination: /dev\n      type: bind\n      \
                    options: [rbind, rshared, rw]\n    - source: /lib\n      destination: /lib\n      options: [bind, ro]\n\
                    restart: always\n";
        let service = parse_service(text, Path::new("agent.yaml"), "extension e").unwrap();
        assert_eq!(
            service.machined,
            "name=agent\nroot=/usr/local/lib/containers/agent\nentrypoint=/usr/sbin/agent\narg=--a\narg=-b=1\n\
             depends-path=/dev/virtio-ports/x\nrestart=always\nbind=/dev:/dev:rw\nbind=/lib:/lib\n"
        );
        let refused = |text: &str| parse_service(text, Path::new("agent.yaml"), "extension e").unwrap_err().to_string();
        let base = "name: agent\ncontainer:\n  entrypoint: /x\n";
        assert!(refused(&format!("{base}restart: untilSuccess\n")).contains("field `restart`"));
        assert!(refused(base).contains("field `restart` is required"));
        assert!(
            refused(&format!("{base}  environment: [A=1]\nrestart: always\n")).contains("unknown field `environment`")
        );
        assert!(refused(&format!("{base}depends:\n  - service: cri\nrestart: always\n")).contains("service \"cri\""));
        assert!(refused("name: other\ncontainer:\n  entrypoint: /x\nrestart: always\n").contains("field `name`"));
    }

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

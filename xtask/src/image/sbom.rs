//! The image's software bill of materials: `<image>-<arch>.spdx.json`, an SPDX 2.3 JSON document listing
//! every package in the image: each Debian package the lock pins for the arch (the base root
//! filesystem, the kernel, the EFI stub and each system extension's set), and machined, the PID 1 we
//! compile. It is an artifact like the others: listed in manifest.json, hashed into SHA256SUMS, signed.
//!
//! Everything in it is derived from the build's inputs, so it is reproducible: the creation time is
//! SOURCE_DATE_EPOCH, the namespace is a digest of the document's own content, packages are in a fixed
//! order, and no mirror host is written (a package's origin is its pool path and a `pkg:deb` purl).
//! Declared licenses come from each package's /usr/share/doc/<package>/copyright when it is in the
//! machine-readable format (DEP-5): its `License:` short names, mapped to SPDX identifiers where one
//! exists and to `LicenseRef-Debian-<name>` (described in hasExtractedLicensingInfos) where none does.

use crate::archive::deb;
use crate::archive::lockfile::LockedPackage;
use crate::spec::names::PackageSet;
use crate::spec::{Arch, ImageSpec};
use crate::util::deb822;
use crate::util::digest::hex;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const SPDX_VERSION: &str = "SPDX-2.3";
pub const CREATOR: &str = "Tool: nodeimg-xtask";
/// SPDX's recommended namespace prefix for documents that have no home of their own.
pub const NAMESPACE_PREFIX: &str = "https://spdx.org/spdxdocs/";
const NOASSERTION: &str = "NOASSERTION";
/// Marks each package's part of the image in a machine-readable annotation: `nodeimg:part=<part>`,
/// where part is `image`, `machined`, or the lock set the package came from (`rootfs`, `kernel`,
/// `efi-stub`, `extension:<name>`).
pub const PART_ANNOTATION_PREFIX: &str = "nodeimg:part=";
/// A copyright file larger than this is not read (the largest in Debian are a few hundred KiB).
const COPYRIGHT_MAX_BYTES: u64 = 8 << 20;

/// What the SBOM is made from: the build's spec, arch, time and lock, the verified .debs of every set
/// for the arch, and the machined binary that goes into the initramfs.
pub struct Input<'a> {
    pub spec: &'a ImageSpec,
    pub arch: Arch,
    pub epoch: i64,
    pub lock_sha256: &'a str,
    pub debs: &'a [(&'a LockedPackage, &'a Path)],
    pub machined: &'a Path,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    comment: String,
    packages: Vec<Package>,
    relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicense>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Package {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    version_info: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_file_name: Option<String>,
    supplier: String,
    download_location: &'static str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    license_concluded: &'static str,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    comment: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
    annotations: Vec<Annotation>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Annotation {
    annotation_date: String,
    annotation_type: &'static str,
    annotator: &'static str,
    comment: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicense {
    license_id: String,
    name: String,
    extracted_text: String,
}

/// Writes the SBOM for `input` to `out` (through a temporary file, so `out` is whole or absent, and
/// 0644 like every other artifact).
pub fn write(out: &Path, input: &Input) -> Result<()> {
    let text = document_json(input).with_context(|| format!("making the SBOM {}", out.display()))?;
    crate::util::fs::write_atomic(out, text.as_bytes())
}

/// The SBOM's text: pretty-printed JSON with a final newline.
pub fn document_json(input: &Input) -> Result<String> {
    let mut document = document(input)?;
    // The namespace must be unique per document and stable per build: a digest of everything else.
    let body = serde_json::to_vec(&document).context("serializing the SBOM")?;
    document.document_namespace = format!("{NAMESPACE_PREFIX}{}-{}", document.name, hex(&Sha256::digest(&body)));
    Ok(serde_json::to_string_pretty(&document).context("serializing the SBOM")? + "\n")
}

fn document(input: &Input) -> Result<Document> {
    let spec = input.spec;
    let arch = input.arch;
    let created = rfc3339_utc(input.epoch);
    let annotation = |part: &str| Annotation {
        annotation_date: created.clone(),
        annotation_type: "OTHER",
        annotator: CREATOR,
        comment: format!("{PART_ANNOTATION_PREFIX}{part}"),
    };
    let mut ids = SpdxIds::default();
    let mut licenses = LicenseRefs::default();
    let mut packages = Vec::new();

    let image_id = ids.make("image");
    packages.push(Package {
        spdx_id: image_id.clone(),
        name: spec.name.clone(),
        version_info: spec.version.clone(),
        package_file_name: None,
        supplier: NOASSERTION.to_string(),
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: Vec::new(),
        source_info: None,
        license_concluded: NOASSERTION,
        license_declared: NOASSERTION.to_string(),
        copyright_text: NOASSERTION,
        primary_package_purpose: Some("OPERATING-SYSTEM"),
        comment: format!(
            "The nodeimg image {} {} for {arch}: a UEFI disk whose unified kernel image holds the kernel, an \
             initramfs with machined as PID 1, the root squashfs and the system extension layers. Its Debian \
             packages are pinned by the lock with sha256 {}.",
            spec.name, spec.version, input.lock_sha256
        ),
        external_refs: Vec::new(),
        annotations: vec![annotation("image")],
    });

    let machined = machined_package(input, &mut ids, &annotation)?;
    packages.push(machined);

    let copyrights = read_copyrights(input.debs)?;
    let by_name: BTreeMap<&str, &str> = input.debs.iter().map(|(p, _)| (p.name.as_str(), p.sha256.as_str())).collect();
    let mut debs: Vec<&LockedPackage> = input.debs.iter().map(|(p, _)| *p).collect();
    debs.sort_by(|a, b| (set_rank(&a.set), &a.set, &a.name).cmp(&(set_rank(&b.set), &b.set, &b.name)));
    debs.dedup_by(|a, b| a.set == b.set && a.name == b.name);
    for package in debs {
        let doc = copyrights.get(package.sha256.as_str());
        // A doc directory that is a symlink to a sibling package's (Debian policy allows it within one
        // source package) shares that package's copyright file.
        let copyright = match doc.and_then(|d| d.copyright.as_deref()) {
            Some(text) => Some((package.name.as_str(), text)),
            None => doc
                .and_then(|d| d.doc_link.as_deref())
                .and_then(|target| Some((target, copyrights.get(*by_name.get(target)?)?.copyright.as_deref()?))),
        };
        let declared = copyright
            .and_then(|(owner, text)| declared_license(&String::from_utf8_lossy(text), owner, &mut licenses))
            .unwrap_or_else(|| NOASSERTION.to_string());
        let file_name = package.filename.rsplit('/').next().unwrap_or(&package.filename).to_string();
        packages.push(Package {
            spdx_id: ids.make(&format!("deb-{}-{}", package.set, package.name)),
            name: package.name.clone(),
            version_info: package.version.clone(),
            package_file_name: Some(file_name),
            supplier: "Organization: Debian".to_string(),
            download_location: NOASSERTION,
            files_analyzed: false,
            checksums: vec![Checksum { algorithm: "SHA256", checksum_value: package.sha256.clone() }],
            source_info: Some(format!(
                "Debian {} archive, {} (the same path on every mirror of it)",
                package.suite, package.filename
            )),
            license_concluded: NOASSERTION,
            license_declared: declared,
            copyright_text: NOASSERTION,
            primary_package_purpose: purpose(&package.set),
            comment: format!("Debian package ({}) in {}.", package.arch, describe_set(&package.set)),
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER",
                reference_type: "purl",
                reference_locator: purl(package, spec.release()),
            }],
            annotations: vec![annotation(&package.set.name())],
        });
    }

    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".to_string(),
        relationship_type: "DESCRIBES",
        related_spdx_element: image_id.clone(),
    }];
    relationships.extend(packages.iter().skip(1).map(|p| Relationship {
        spdx_element_id: image_id.clone(),
        relationship_type: "CONTAINS",
        related_spdx_element: p.spdx_id.clone(),
    }));

    let name = format!("{}-{}-{arch}", spec.name, spec.version);
    Ok(Document {
        spdx_version: SPDX_VERSION,
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        document_namespace: String::new(),
        comment: format!(
            "Software bill of materials of {name}: every Debian package the lock (sha256 {}) pins for {arch}, \
             and machined. Created from SOURCE_DATE_EPOCH {}.",
            input.lock_sha256, input.epoch
        ),
        name,
        creation_info: CreationInfo { created, creators: vec![CREATOR] },
        packages,
        relationships,
        has_extracted_licensing_infos: licenses.into_extracted(),
    })
}

/// machined: version and license from its Cargo.toml (the workspace's license when it inherits it),
/// SHA256 of the binary in the initramfs.
fn machined_package(input: &Input, ids: &mut SpdxIds, annotation: &dyn Fn(&str) -> Annotation) -> Result<Package> {
    let crate_dir = crate::initramfs::machined::crate_dir();
    let manifest_path = crate_dir.join("Cargo.toml");
    let manifest = read_toml(&manifest_path)?;
    let package = manifest.get("package").with_context(|| format!("{}: no [package]", manifest_path.display()))?;
    let inherited = |field: &str| -> Result<Option<String>> {
        match package.get(field) {
            Some(toml::Value::String(value)) => Ok(Some(value.clone())),
            Some(toml::Value::Table(t)) if t.get("workspace").and_then(toml::Value::as_bool) == Some(true) => {
                let root = crate_dir.parent().unwrap_or(Path::new(".")).join("Cargo.toml");
                let workspace = read_toml(&root)?;
                Ok(workspace
                    .get("workspace")
                    .and_then(|w| w.get("package"))
                    .and_then(|p| p.get(field))
                    .and_then(toml::Value::as_str)
                    .map(str::to_string))
            }
            Some(_) => bail!("{}: field `package.{field}` is neither a string nor inherited", manifest_path.display()),
            None => Ok(None),
        }
    };
    let version = inherited("version")?
        .with_context(|| format!("{}: field `package.version` is missing", manifest_path.display()))?;
    let license = inherited("license")?.unwrap_or_else(|| NOASSERTION.to_string());
    let sha256 = crate::util::digest::sha256_file(input.machined)?;
    Ok(Package {
        spdx_id: ids.make("machined"),
        name: "machined".to_string(),
        version_info: version,
        package_file_name: None,
        supplier: NOASSERTION.to_string(),
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: vec![Checksum { algorithm: "SHA256", checksum_value: sha256 }],
        source_info: Some("built from the machined/ crate of the nodeimg repository with Debian's rustc".to_string()),
        license_concluded: NOASSERTION,
        license_declared: license,
        copyright_text: NOASSERTION,
        primary_package_purpose: Some("APPLICATION"),
        comment: format!(
            "PID 1 of the image (/init in the initramfs), a static {} executable.",
            input.arch.rust_target()
        ),
        external_refs: Vec::new(),
        annotations: vec![annotation("machined")],
    })
}

fn read_toml(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Sets in the order the image is described: the base, the kernel, the stub, then extensions by name.
fn set_rank(set: &PackageSet) -> u8 {
    match set {
        PackageSet::Rootfs => 0,
        PackageSet::Kernel => 1,
        PackageSet::EfiStub => 2,
        PackageSet::Extension(_) => 3,
    }
}

fn describe_set(set: &PackageSet) -> String {
    match set {
        PackageSet::Rootfs => format!("the base root filesystem (lock set {set})"),
        PackageSet::Kernel => format!("the kernel set: the kernel image and its boot modules (lock set {set})"),
        PackageSet::EfiStub => format!("the EFI stub set: systemd-stub of the unified kernel image (lock set {set})"),
        PackageSet::Extension(name) => format!("the system extension {name} (lock set {set})"),
    }
}

fn purpose(set: &PackageSet) -> Option<&'static str> {
    match set {
        PackageSet::Kernel => Some("OPERATING-SYSTEM"),
        PackageSet::EfiStub => Some("FIRMWARE"),
        PackageSet::Rootfs | PackageSet::Extension(_) => None,
    }
}

/// `pkg:deb/debian/<name>@<version>?arch=<arch>&distro=<suite>`, the version percent-encoded.
fn purl(package: &LockedPackage, suite: &str) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}&distro={}",
        percent_encode(&package.name),
        percent_encode(&package.version),
        percent_encode(&package.arch),
        percent_encode(suite)
    )
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Unique SPDX element ids (`SPDXRef-` + letters, digits, `.` and `-`), in the order they are asked for.
#[derive(Default)]
struct SpdxIds(BTreeSet<String>);

impl SpdxIds {
    fn make(&mut self, label: &str) -> String {
        let base = format!("SPDXRef-{}", id_chars(label));
        let mut id = base.clone();
        let mut n = 2;
        while !self.0.insert(id.clone()) {
            id = format!("{base}-{n}");
            n += 1;
        }
        id
    }
}

/// What SPDX ids allow: letters, digits, `.` and `-`; `+` (as in libstdc++6) is spelled out.
fn id_chars(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => c.to_string(),
            '+' => "plus".to_string(),
            _ => "-".to_string(),
        })
        .collect()
}

/// What a .deb says about its documentation directory.
#[derive(Default)]
struct DocInfo {
    /// usr/share/doc/<package>/copyright, when it is a regular file.
    copyright: Option<Vec<u8>>,
    /// The target of usr/share/doc/<package>, when that is a symlink to a sibling directory.
    doc_link: Option<String>,
}

/// What [`read_ahead`] threads found, by .deb sha256: a .deb's digest fixes its content, so an entry is
/// right for any build that uses that .deb.
type DocInfos = BTreeMap<String, DocInfo>;

static READ_AHEAD: std::sync::Mutex<Vec<std::thread::JoinHandle<DocInfos>>> = std::sync::Mutex::new(Vec::new());

/// Starts reading the copyright files of `debs` on another thread, so the seconds of xz decompression
/// that takes overlap the rest of the build; [`write`] takes what it found and reads anything it did
/// not (reporting any error then).
pub fn read_ahead(debs: &[(&LockedPackage, &Path)]) {
    let work: Vec<(String, String, PathBuf)> = unique_debs(debs)
        .into_iter()
        .map(|(sha, name, path)| (sha.to_string(), name.to_string(), path.to_path_buf()))
        .collect();
    let handle = std::thread::spawn(move || {
        let mut found = DocInfos::new();
        for (sha, name, path) in work {
            if let Ok(info) = read_doc_info(&path, &name) {
                found.insert(sha, info);
            }
        }
        found
    });
    READ_AHEAD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(handle);
}

/// Each distinct .deb once: (sha256, package name, path).
fn unique_debs<'a>(debs: &[(&'a LockedPackage, &'a Path)]) -> Vec<(&'a str, &'a str, &'a Path)> {
    let mut unique: BTreeMap<&str, (&str, &Path)> = BTreeMap::new();
    for (package, path) in debs {
        unique.entry(package.sha256.as_str()).or_insert((package.name.as_str(), path));
    }
    unique.into_iter().map(|(sha, (name, path))| (sha, name, path)).collect()
}

/// Each distinct .deb's copyright file: from the read-ahead threads, the rest read here on all cores.
fn read_copyrights(debs: &[(&LockedPackage, &Path)]) -> Result<DocInfos> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let mut out = DocInfos::new();
    let pending = std::mem::take(&mut *READ_AHEAD.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    for handle in pending {
        // A read-ahead thread that died leaves its debs to be read (and any error reported) below.
        if let Ok(found) = handle.join() {
            out.extend(found);
        }
    }
    let work: Vec<(&str, &str, &Path)> =
        unique_debs(debs).into_iter().filter(|(sha, _, _)| !out.contains_key(*sha)).collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, Result<DocInfo>)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8).min(work.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((sha, name, path)) = work.get(i) else { break };
                let result = read_doc_info(path, name)
                    .with_context(|| format!("reading the copyright file of {name} from {}", path.display()));
                results.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((sha.to_string(), result));
            });
        }
    });
    for (sha, result) in results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
        out.insert(sha, result?);
    }
    Ok(out)
}

/// Scans a .deb's data.tar for usr/share/doc/<package>/copyright (or the doc directory's symlink).
fn read_doc_info(deb: &Path, package: &str) -> Result<DocInfo> {
    let (member, data) = deb::ar_member(deb, "data.tar")?;
    let mut archive = tar::Archive::new(deb::decompress(&member, &data)?);
    let doc_dir = PathBuf::from("usr/share/doc").join(package);
    let copyright_path = doc_dir.join("copyright");
    let mut info = DocInfo::default();
    for entry in archive.entries().with_context(|| format!("reading {member}"))? {
        let mut entry = entry.with_context(|| format!("reading {member}"))?;
        let Ok(rel) = crate::util::tree::normalise(&entry.path()?) else { continue };
        let kind = entry.header().entry_type();
        if rel == copyright_path && kind.is_file() {
            let size = entry.header().size()?;
            if size > COPYRIGHT_MAX_BYTES {
                return Ok(info);
            }
            let mut bytes = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut bytes).with_context(|| format!("reading {}", rel.display()))?;
            info.copyright = Some(bytes);
            return Ok(info);
        }
        if rel == doc_dir && kind.is_symlink() {
            if let Some(target) = entry.link_name()? {
                let target = target.to_string_lossy().trim_end_matches('/').to_string();
                if !target.is_empty() && !target.contains('/') && target != "." && target != ".." {
                    info.doc_link = Some(target);
                }
            }
        }
    }
    Ok(info)
}

/// The SPDX expression for a machine-readable copyright file's `License:` names (each field's
/// expression, distinct and sorted, joined with AND), or None if the file is not machine-readable or
/// names no license.
pub fn declared_license(copyright: &str, package: &str, refs: &mut LicenseRefs) -> Option<String> {
    let names = dep5_license_names(copyright)?;
    let mut expressions = BTreeSet::new();
    for name in names {
        match debian_to_spdx(&name, package, refs) {
            // All of them apply: each is one more license of the package.
            Some(e) if !e.contains(" OR ") && !e.contains('(') => {
                expressions.extend(e.split(" AND ").map(str::to_string));
            }
            Some(e) => {
                expressions.insert(e);
            }
            None => {}
        }
    }
    if expressions.is_empty() {
        return None;
    }
    let many = expressions.len() > 1;
    Some(
        expressions
            .into_iter()
            .map(|e| if many && is_compound(&e) { format!("({e})") } else { e })
            .collect::<Vec<_>>()
            .join(" AND "),
    )
}

/// The first line of every `License:` field of a DEP-5 copyright file, or None if the file does
/// not start with a `Format:` paragraph naming the copyright format.
pub fn dep5_license_names(text: &str) -> Option<Vec<String>> {
    let paragraphs = deb822::paragraphs(text);
    let format = paragraphs.first()?.get("Format")?.to_ascii_lowercase();
    if !(format.contains("copyright-format") || format.contains("dep5") || format.contains("dep-5")) {
        return None;
    }
    let names = paragraphs
        .iter()
        .flat_map(|p| &p.fields)
        .filter(|f| f.name.eq_ignore_ascii_case("License"))
        .filter_map(|f| f.value.lines().next().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string))
        .collect();
    Some(names)
}

fn is_compound(expression: &str) -> bool {
    expression.contains(" OR ") || expression.contains(" AND ")
}

/// One DEP-5 license expression (`GPL-2+ or Artistic, and BSD-3-clause`; `GPL-2 with
/// Linux-syscall-note exception`) as an SPDX expression. DEP-5 binds `and` tighter than `or`, as SPDX
/// does, except across a comma, which closes what precedes it.
pub fn debian_to_spdx(expression: &str, package: &str, refs: &mut LicenseRefs) -> Option<String> {
    let mut result: Option<String> = None;
    for chunk in expression.split(',') {
        let mut words: Vec<&str> = chunk.split_whitespace().collect();
        let mut joiner = "AND";
        if let Some(first) = words.first() {
            if first.eq_ignore_ascii_case("and") || first.eq_ignore_ascii_case("or") {
                joiner = if first.eq_ignore_ascii_case("or") { "OR" } else { "AND" };
                words.remove(0);
            }
        }
        let Some(part) = chunk_to_spdx(&words, package, refs) else { continue };
        result = Some(match result {
            None => part,
            Some(before) => {
                let wrap = |e: String| if is_compound(&e) { format!("({e})") } else { e };
                format!("{} {joiner} {}", wrap(before), wrap(part))
            }
        });
    }
    result
}

fn chunk_to_spdx(words: &[&str], package: &str, refs: &mut LicenseRefs) -> Option<String> {
    // Terms (SPDX expressions) and the operators between them.
    let mut terms: Vec<String> = Vec::new();
    let mut ops: Vec<&str> = Vec::new();
    let mut term: Vec<&str> = Vec::new();
    for word in words.iter().copied().chain([","]) {
        let op = match word {
            w if w.eq_ignore_ascii_case("and") => Some("AND"),
            w if w.eq_ignore_ascii_case("or") => Some("OR"),
            "," => Some(","),
            _ => None,
        };
        let Some(op) = op else {
            term.push(word);
            continue;
        };
        if !term.is_empty() {
            // Two terms with no operator between them (a stray one was dropped) are both required.
            if ops.len() < terms.len() {
                ops.push("AND");
            }
            terms.push(term_to_spdx(&term, package, refs));
            term.clear();
        }
        // An operator needs a term on its left; a stray one is dropped.
        if op != "," && ops.len() < terms.len() {
            ops.push(op);
        }
    }
    ops.truncate(terms.len().saturating_sub(1));
    match terms.len() {
        0 => None,
        1 => terms.pop(),
        _ => {
            let mut out = String::new();
            for (i, t) in terms.iter().enumerate() {
                if i > 0 {
                    out.push_str(&format!(" {} ", ops[i - 1]));
                }
                out.push_str(&if is_compound(t) { format!("({t})") } else { t.clone() });
            }
            Some(out)
        }
    }
}

/// One license term: a short name, or `NAME with EXCEPTION exception`.
fn term_to_spdx(words: &[&str], package: &str, refs: &mut LicenseRefs) -> String {
    if let [name] = words {
        return spdx_id(name).unwrap_or_else(|| refs.add(name, package));
    }
    if words.len() >= 3 && words[1].eq_ignore_ascii_case("with") {
        let mut exception = &words[2..];
        if exception.len() > 1 && exception.last().is_some_and(|w| w.eq_ignore_ascii_case("exception")) {
            exception = &exception[..exception.len() - 1];
        }
        if let ([exception], Some(base)) = (exception, spdx_id(words[0]).filter(|b| !is_compound(b))) {
            // `Apache-2.0 with LLVM exception` names SPDX's LLVM-exception.
            let suffixed = format!("{exception}-exception");
            let known =
                SPDX_EXCEPTIONS.iter().find(|e| e.eq_ignore_ascii_case(exception) || e.eq_ignore_ascii_case(&suffixed));
            if let Some(known) = known {
                return format!("{base} WITH {known}");
            }
        }
    }
    refs.add(&words.join(" "), package)
}

/// The SPDX identifier (or expression) for a Debian short name, if there is one.
pub fn spdx_id(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    if let Some(id) = gnu_id(&lower) {
        return Some(id);
    }
    let alias = match lower.as_str() {
        "expat" => Some("MIT"),
        "apache-2" => Some("Apache-2.0"),
        "artistic" => Some("Artistic-1.0"),
        "cc0" => Some("CC0-1.0"),
        "mpl-2" => Some("MPL-2.0"),
        "zope-2.1" => Some("ZPL-2.1"),
        "psf-2" => Some("PSF-2.0"),
        "perl" => Some("Artistic-1.0-Perl OR GPL-1.0-or-later"),
        _ => None,
    };
    if let Some(alias) = alias {
        return Some(alias.to_string());
    }
    SPDX_LICENSES.iter().find(|id| id.eq_ignore_ascii_case(name)).map(|id| id.to_string())
}

/// GPL, LGPL, AGPL and GFDL names: `GPL-2`, `GPL-2+`, `LGPL-2.1`, `GPL-2.0-or-later`, ….
fn gnu_id(lower: &str) -> Option<String> {
    let (base, later) = if let Some(b) = lower.strip_suffix('+') {
        (b, true)
    } else if let Some(b) = lower.strip_suffix("-or-later") {
        (b, true)
    } else if let Some(b) = lower.strip_suffix("-only") {
        (b, false)
    } else {
        (lower, false)
    };
    for (family, spdx, versions) in [
        ("agpl-", "AGPL", &["3"][..]),
        ("lgpl-", "LGPL", &["2", "2.1", "3"][..]),
        ("gpl-", "GPL", &["1", "2", "3"][..]),
        ("gfdl-", "GFDL", &["1.1", "1.2", "1.3"][..]),
    ] {
        if let Some(version) = base.strip_prefix(family) {
            let version = version.strip_suffix(".0").unwrap_or(version);
            if versions.contains(&version) {
                let version = if version.contains('.') { version.to_string() } else { format!("{version}.0") };
                return Some(format!("{spdx}-{version}-{}", if later { "or-later" } else { "only" }));
            }
            return None;
        }
    }
    None
}

/// Licenses without an SPDX identifier, as `LicenseRef-Debian-<name>`, with the packages naming them.
#[derive(Default)]
pub struct LicenseRefs(BTreeMap<String, (String, BTreeSet<String>)>);

impl LicenseRefs {
    fn add(&mut self, name: &str, package: &str) -> String {
        let id = format!("LicenseRef-Debian-{}", id_chars(name));
        self.0.entry(id.clone()).or_insert_with(|| (name.to_string(), BTreeSet::new())).1.insert(package.to_string());
        id
    }

    fn into_extracted(self) -> Vec<ExtractedLicense> {
        self.0
            .into_iter()
            .map(|(id, (name, packages))| {
                let files: Vec<String> =
                    packages.iter().map(|p| format!("usr/share/doc/{p}/copyright of package {p}")).collect();
                ExtractedLicense {
                    license_id: id,
                    extracted_text: format!(
                        "License short name \"{name}\" of the Debian machine-readable copyright format, which has \
                         no SPDX identifier; its terms are given in {}.",
                        files.join(", ")
                    ),
                    name,
                }
            })
            .collect()
    }
}

/// SPDX license identifiers a Debian copyright file is likely to name with the same spelling (matched
/// regardless of case). GNU licenses are handled by [`gnu_id`].
const SPDX_LICENSES: &[&str] = &[
    "0BSD",
    "AFL-1.1",
    "AFL-1.2",
    "AFL-2.0",
    "AFL-2.1",
    "AFL-3.0",
    "Apache-1.0",
    "Apache-1.1",
    "Apache-2.0",
    "APSL-2.0",
    "Artistic-1.0",
    "Artistic-1.0-Perl",
    "Artistic-2.0",
    "Beerware",
    "BSD-1-Clause",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSD-4-Clause",
    "BSL-1.0",
    "bzip2-1.0.6",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC0-1.0",
    "CDDL-1.0",
    "CDDL-1.1",
    "CPL-1.0",
    "curl",
    "ECL-2.0",
    "EPL-1.0",
    "EPL-2.0",
    "EUPL-1.1",
    "EUPL-1.2",
    "FSFAP",
    "FSFUL",
    "FSFULLR",
    "FTL",
    "HPND",
    "ICU",
    "IJG",
    "Info-ZIP",
    "ISC",
    "Libpng",
    "libpng-2.0",
    "LPPL-1.3c",
    "MirOS",
    "MIT",
    "MIT-0",
    "MPL-1.0",
    "MPL-1.1",
    "MPL-2.0",
    "MS-PL",
    "NCSA",
    "NTP",
    "OFL-1.0",
    "OFL-1.1",
    "OpenSSL",
    "PHP-3.01",
    "PostgreSQL",
    "PSF-2.0",
    "Python-2.0",
    "Ruby",
    "Sleepycat",
    "TCL",
    "Unicode-DFS-2016",
    "Unlicense",
    "UPL-1.0",
    "Vim",
    "W3C",
    "WTFPL",
    "X11",
    "Zlib",
    "ZPL-2.0",
    "ZPL-2.1",
];

/// SPDX license exception identifiers.
const SPDX_EXCEPTIONS: &[&str] = &[
    "Autoconf-exception-2.0",
    "Autoconf-exception-3.0",
    "Bison-exception-2.2",
    "Classpath-exception-2.0",
    "eCos-exception-2.0",
    "FLTK-exception",
    "Font-exception-2.0",
    "GCC-exception-2.0",
    "GCC-exception-3.1",
    "Libtool-exception",
    "Linux-syscall-note",
    "LLVM-exception",
    "OCaml-LGPL-linking-exception",
    "openvpn-openssl-exception",
    "Qt-LGPL-exception-1.1",
    "u-boot-exception-2.0",
    "WxWindows-exception-3.1",
];

/// Seconds since 1970 (UTC) as RFC 3339, `YYYY-MM-DDThh:mm:ssZ`, as SPDX wants its dates.
pub fn rfc3339_utc(epoch: i64) -> String {
    let (days, secs) = (epoch.div_euclid(86_400), epoch.rem_euclid(86_400));
    let (year, month, day) = crate::util::epoch::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spdx(expression: &str) -> String {
        debian_to_spdx(expression, "p", &mut LicenseRefs::default()).unwrap()
    }

    #[test]
    fn debian_names_map_to_spdx() {
        assert_eq!(spdx("GPL-2"), "GPL-2.0-only");
        assert_eq!(spdx("GPL-2+"), "GPL-2.0-or-later");
        assert_eq!(spdx("LGPL-2.1+"), "LGPL-2.1-or-later");
        assert_eq!(spdx("lgpl-2.1"), "LGPL-2.1-only");
        assert_eq!(spdx("GPL-3.0-or-later"), "GPL-3.0-or-later");
        assert_eq!(spdx("Expat"), "MIT");
        assert_eq!(spdx("BSD-3-clause"), "BSD-3-Clause");
        assert_eq!(spdx("public-domain"), "LicenseRef-Debian-public-domain");
        assert_eq!(spdx("GPL-2+-or-X11"), "LicenseRef-Debian-GPL-2plus-or-X11");
        assert_eq!(spdx("GPL-2 or BSD-2-clause"), "GPL-2.0-only OR BSD-2-Clause");
        assert_eq!(spdx("GPL-2 with Linux-syscall-note exception"), "GPL-2.0-only WITH Linux-syscall-note");
        assert_eq!(spdx("GPL-2+ with OpenSSL exception"), "LicenseRef-Debian-GPL-2plus-with-OpenSSL-exception");
        assert_eq!(spdx("Apache-2.0 with LLVM exception"), "Apache-2.0 WITH LLVM-exception");
        assert_eq!(spdx("GPL-2+ or Artistic, and BSD-3-clause"), "(GPL-2.0-or-later OR Artistic-1.0) AND BSD-3-Clause");
        assert_eq!(spdx("GPL-1+ or Perl"), "GPL-1.0-or-later OR (Artistic-1.0-Perl OR GPL-1.0-or-later)");
        assert_eq!(spdx("Perl"), "Artistic-1.0-Perl OR GPL-1.0-or-later");
        assert_eq!(spdx("GPL-9"), "LicenseRef-Debian-GPL-9");
    }

    #[test]
    fn dep5_files_give_their_license_names() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
                    Upstream-Name: x\n\nFiles: *\nCopyright: 2020 A\nLicense: GPL-2+\n\n\
                    Files: debian/*\nCopyright: 2021 B\nLicense: public-domain\n Anyone may use it.\n .\n More.\n\n\
                    License: GPL-2+\n This program is free software\n";
        assert_eq!(dep5_license_names(text).unwrap(), ["GPL-2+", "public-domain", "GPL-2+"]);
        let mut refs = LicenseRefs::default();
        assert_eq!(
            declared_license(text, "x", &mut refs).unwrap(),
            "GPL-2.0-or-later AND LicenseRef-Debian-public-domain"
        );
        let extracted = refs.into_extracted();
        assert_eq!(extracted.len(), 1);
        assert!(extracted[0].extracted_text.contains("usr/share/doc/x/copyright of package x"));
        assert!(dep5_license_names("This is the Debian prepackaged version of x.\n\nLicense: GPL\n").is_none());
        let mut refs = LicenseRefs::default();
        let or = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
                  Files: *\nLicense: GPL-2 or BSD-2-clause\n\nFiles: a\nLicense: ISC\n";
        assert_eq!(declared_license(or, "y", &mut refs).unwrap(), "(GPL-2.0-only OR BSD-2-Clause) AND ISC");
        let and = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
                   Files: *\nLicense: Apache-2.0 and Go\n\nFiles: b\nLicense: Apache-2.0\n";
        assert_eq!(declared_license(and, "z", &mut refs).unwrap(), "Apache-2.0 AND LicenseRef-Debian-Go");
    }

    #[test]
    fn times_ids_and_purls() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        let mut ids = SpdxIds::default();
        assert_eq!(ids.make("deb-extension:x-libstdc++6"), "SPDXRef-deb-extension-x-libstdcplusplus6");
        assert_eq!(ids.make("deb-extension:x-libstdc++6"), "SPDXRef-deb-extension-x-libstdcplusplus6-2");
        let package = LockedPackage {
            set: PackageSet::Rootfs,
            name: "base-files".into(),
            version: "1:12.4+deb12u5".into(),
            suite: "bookworm".into(),
            arch: "arm64".into(),
            target_arch: Arch::Arm64,
            filename: "pool/main/b/base-files/base-files_12.4+deb12u5_arm64.deb".into(),
            size: 1,
            sha256: "00".repeat(32),
        };
        assert_eq!(
            purl(&package, "bookworm"),
            "pkg:deb/debian/base-files@1%3A12.4%2Bdeb12u5?arch=arm64&distro=bookworm"
        );
    }
}

//! `cargo xtask lock`: resolves every package set of the image against the signed Debian archive and
//! pins the result in `image-spec/<name>.lock`. Builds read only the lock ([`load_checked`]), so an
//! image is made from exactly the debs that were reviewed, whatever the archive does later.

pub use crate::debian::lockfile::{Lock, LockedPackage, LockedSet};
pub use crate::debian::resolve::Follow;

use crate::debian::packages::Index;
use crate::debian::resolve::{self, Dropped, Root};
use crate::debian::{mirror, release};
use crate::extensions::Extension;
use crate::fetch::Cache;
use crate::spec::{Arch, Board, ImageSpec};
use crate::{progress, Global};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

/// One group of packages resolved on its own, for one arch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageSet {
    pub name: String,
    pub arch: Arch,
    /// Sorted and deduplicated, so reordering the spec does not make the lock stale.
    pub roots: Vec<String>,
    pub exclude: Vec<String>,
    pub follow: Follow,
}

impl PackageSet {
    fn locked(&self) -> LockedSet {
        LockedSet {
            name: self.name.clone(),
            arch: self.arch,
            roots: self.roots.clone(),
            exclude: self.exclude.clone(),
            follow: self.follow,
        }
    }
}

/// The debian package that carries systemd-stub (linuxx64.efi.stub / linuxaa64.efi.stub).
pub const EFI_STUB_PACKAGE: &str = "systemd-boot-efi";

fn sorted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// Every package set the image needs, per arch: "rootfs" (the spec's packages, full closure),
/// "kernel" (the boards' kernel packages, followed only to linux-image-*), "efi-stub" (systemd-boot-efi
/// alone), and "extension:<name>" for each of the spec's extensions that names packages (their full
/// closure, excluding the spec's excludes and the extension's own). A set with no roots (no board for
/// that arch) is left out.
pub fn package_sets(spec: &ImageSpec, boards: &[Board], extensions: &[Extension]) -> Vec<PackageSet> {
    let mut sets = Vec::new();
    for arch in Arch::ALL {
        sets.push(PackageSet {
            name: "rootfs".to_string(),
            arch,
            roots: sorted(spec.packages.iter().cloned()),
            exclude: sorted(spec.exclude_packages.iter().cloned()),
            follow: Follow::All,
        });
        let kernels = sorted(boards.iter().filter(|b| b.arch() == arch).map(|b| b.file.kernel_package.clone()));
        if !kernels.is_empty() {
            sets.push(PackageSet {
                name: "kernel".to_string(),
                arch,
                roots: kernels,
                exclude: Vec::new(),
                follow: Follow::KernelOnly,
            });
        }
        sets.push(PackageSet {
            name: "efi-stub".to_string(),
            arch,
            roots: vec![EFI_STUB_PACKAGE.to_string()],
            exclude: Vec::new(),
            follow: Follow::None,
        });
        for extension in extensions.iter().filter(|e| !e.packages.packages.is_empty()) {
            sets.push(PackageSet {
                name: crate::extensions::set_name(&extension.name),
                arch,
                roots: sorted(extension.packages.packages.iter().cloned()),
                exclude: sorted(spec.exclude_packages.iter().chain(&extension.packages.exclude_packages).cloned()),
                follow: Follow::All,
            });
        }
    }
    sets
}

/// Where a set's root was asked for, for "unknown package" errors.
fn root_origin(set: &PackageSet, root: &str, spec_path: &Path, boards: &[Board], extensions: &[Extension]) -> String {
    if let Some(extension) = extensions.iter().find(|e| crate::extensions::set_name(&e.name) == set.name) {
        return format!("{}, field `packages`", extension.packages.path.display());
    }
    match set.name.as_str() {
        "rootfs" => format!("{}, field `packages`", spec_path.display()),
        "kernel" => boards
            .iter()
            .filter(|b| b.arch() == set.arch && b.file.kernel_package == root)
            .map(|b| format!("{}, field `kernel-package`", b.path.display()))
            .collect::<Vec<_>>()
            .join("; "),
        "efi-stub" => "the UKI stub package xtask always needs".to_string(),
        other => format!("package set {other:?}"),
    }
}

/// Loads the lock beside the spec and checks it was made from the current spec and boards.
pub fn load_checked(global: &Global, spec: &ImageSpec, boards: &[Board]) -> Result<Lock> {
    let lock_path = global.lock_path();
    let spec_path = global.spec_path();
    if !lock_path.exists() {
        bail!(
            "no lockfile {} for {}: run `cargo xtask lock` to resolve and pin the packages",
            lock_path.display(),
            spec_path.display()
        );
    }
    let lock = Lock::load(&lock_path)?;
    let extensions = crate::extensions::load(&global.overlays_dir(), spec)?;
    let differences = differences(&lock, spec, boards, &extensions);
    if !differences.is_empty() {
        bail!(
            "{} is stale: it no longer matches {} and the boards in {}:\n  {}\nrun `cargo xtask lock` to update it",
            lock_path.display(),
            spec_path.display(),
            global.boards_dir().display(),
            differences.join("\n  ")
        );
    }
    Ok(lock)
}

/// What changed between the inputs recorded in the lock and the current ones, one line each.
fn differences(lock: &Lock, spec: &ImageSpec, boards: &[Board], extensions: &[Extension]) -> Vec<String> {
    let mut out = Vec::new();
    if lock.suite != spec.suite {
        out.push(format!("spec suite is {:?}, the lock has {:?}", spec.suite, lock.suite));
    }
    if lock.components != spec.components {
        out.push(format!("spec components are {:?}, the lock has {:?}", spec.components, lock.components));
    }
    let wanted = package_sets(spec, boards, extensions);
    for set in &wanted {
        let (source, adds, removes) = match set.name.as_str() {
            "rootfs" => ("spec", "spec adds", "spec removes"),
            "kernel" => ("boards", "boards add", "boards remove"),
            name if name.starts_with("extension:") => ("the extension", "extension adds", "extension removes"),
            _ => ("xtask", "xtask adds", "xtask removes"),
        };
        let Some(locked) = lock.set(set.arch, &set.name) else {
            out.push(format!("{}/{}: the lock has no such set ({source} adds it)", set.name, set.arch));
            continue;
        };
        let prefix = format!("{}/{}", set.name, set.arch);
        for (field, now, then) in
            [("package", &set.roots, &locked.roots), ("excluded package", &set.exclude, &locked.exclude)]
        {
            for added in now.iter().filter(|name| !then.contains(name)) {
                out.push(format!("{prefix}: {adds} {field} {added}"));
            }
            for removed in then.iter().filter(|name| !now.contains(name)) {
                out.push(format!("{prefix}: {removes} {field} {removed}"));
            }
        }
        if set.follow != locked.follow {
            out.push(format!(
                "{prefix}: follow is {:?}, the lock has {:?}",
                set.follow.as_str(),
                locked.follow.as_str()
            ));
        }
    }
    for locked in &lock.sets {
        if !wanted.iter().any(|set| set.name == locked.name && set.arch == locked.arch) {
            out.push(format!("{}/{}: the lock has this set, the current inputs do not", locked.name, locked.arch));
        }
    }
    out
}

#[derive(Serialize)]
struct SetSummary {
    name: String,
    packages: usize,
    download_bytes: u64,
    /// Dependencies left out because only excluded packages satisfy them: "pkg: dep".
    dropped: Vec<String>,
}

#[derive(Serialize)]
struct ArchSummary {
    arch: Arch,
    /// Distinct debs across the arch's sets.
    packages: usize,
    download_bytes: u64,
    sets: Vec<SetSummary>,
}

#[derive(Serialize)]
struct Summary<'a> {
    lock: &'a Path,
    suite: &'a str,
    release_date: &'a str,
    changed: bool,
    sha256: String,
    arches: Vec<ArchSummary>,
}

/// Downloads and parses every component's Packages index for one arch.
fn load_index(mirror: &str, release: &release::Release, spec: &ImageSpec, arch: Arch, cache: &Cache) -> Result<Index> {
    let label = format!("{} {}/binary-{arch} (mirror {mirror})", spec.suite, spec.components.join("+"));
    let mut index = Index::new(label);
    for component in &spec.components {
        release::load_packages(release, component, arch.debian(), cache, &mut index)
            .with_context(|| format!("loading the {component} package index for {arch}"))?;
    }
    Ok(index)
}

/// The `cargo xtask lock` task.
pub fn run(global: &Global) -> Result<()> {
    let spec_path = global.spec_path();
    let spec = crate::spec::load_spec(&spec_path)?;
    let boards = crate::spec::load_boards(&global.boards_dir())?;
    let extensions = crate::extensions::load(&global.overlays_dir(), &spec)?;
    let sets = package_sets(&spec, &boards, &extensions);
    crate::hosttools::ensure(&crate::hosttools::for_archive())?;
    let mirror = mirror::resolve(global.mirror.as_deref(), &spec.suite)?;
    let cache = Cache::new(global);

    let step = progress::step(format!("reading {}/dists/{}/InRelease", mirror, spec.suite));
    let release = release::fetch(&mirror, &spec.suite)
        .with_context(|| format!("reading suite {:?} ({}, field `suite`)", spec.suite, spec_path.display()))?;
    step.done();

    let step = progress::step("loading package indexes");
    // The two arches' indexes are independent; decompressing and parsing them is the slow part.
    let (mirror_ref, release_ref, spec_ref, cache_ref) = (&mirror, &release, &spec, &cache);
    let indexes: Vec<(Arch, Result<Index>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = Arch::ALL
            .into_iter()
            .map(|arch| (arch, scope.spawn(move || load_index(mirror_ref, release_ref, spec_ref, arch, cache_ref))))
            .collect();
        handles
            .into_iter()
            .map(|(arch, handle)| {
                (arch, handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("index loader thread panicked"))))
            })
            .collect()
    });
    let mut by_arch = BTreeMap::new();
    for (arch, index) in indexes {
        by_arch.insert(arch, index?);
    }
    step.done();

    let mut packages = Vec::new();
    let mut dropped: BTreeMap<(Arch, String), Vec<Dropped>> = BTreeMap::new();
    for set in &sets {
        let index = by_arch.get(&set.arch).with_context(|| format!("no package index for {}", set.arch))?;
        let roots: Vec<Root> = set
            .roots
            .iter()
            .map(|name| Root { name: name.clone(), origin: root_origin(set, name, &spec_path, &boards, &extensions) })
            .collect();
        let resolution = resolve::resolve(index, &roots, &set.exclude, set.follow)
            .with_context(|| format!("resolving package set {:?} for {}", set.name, set.arch))?;
        dropped.insert((set.arch, set.name.clone()), resolution.dropped);
        packages.extend(resolution.packages.into_iter().map(|p| LockedPackage {
            set: set.name.clone(),
            name: p.name,
            version: p.version,
            arch: p.architecture,
            target_arch: set.arch,
            filename: p.filename,
            size: p.size,
            sha256: p.sha256,
        }));
    }
    let lock =
        Lock::new(spec.suite.clone(), spec.components.clone(), sets.iter().map(PackageSet::locked).collect(), packages);
    let lock_path = global.lock_path();
    let changed = lock.write(&lock_path)?;

    let arches = Arch::ALL
        .into_iter()
        .map(|arch| {
            let all = lock.packages_for(arch);
            let distinct: BTreeMap<&str, u64> = all.iter().map(|p| (p.sha256.as_str(), p.size)).collect();
            let sets = lock
                .sets
                .iter()
                .filter(|set| set.arch == arch)
                .map(|set| {
                    let members = lock.packages_in(arch, &set.name);
                    SetSummary {
                        name: set.name.clone(),
                        packages: members.len(),
                        download_bytes: members.iter().map(|p| p.size).sum(),
                        dropped: dropped
                            .get(&(arch, set.name.clone()))
                            .into_iter()
                            .flatten()
                            .map(|d| format!("{}: {}", d.package, d.dependency))
                            .collect(),
                    }
                })
                .collect();
            ArchSummary { arch, packages: distinct.len(), download_bytes: distinct.values().sum(), sets }
        })
        .collect::<Vec<_>>();
    let summary = Summary {
        lock: &lock_path,
        suite: &spec.suite,
        release_date: &release.date,
        changed,
        sha256: lock.sha256()?,
        arches,
    };
    if global.json {
        let json = serde_json::to_string_pretty(&summary).context("serializing the lock summary")?;
        writeln!(std::io::stdout(), "{json}").context("writing to stdout")?;
    } else {
        print_summary(&summary, &spec.components).context("writing to stdout")?;
    }
    Ok(())
}

fn print_summary(summary: &Summary, components: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} ({} {}, released {})",
        if summary.changed { "wrote" } else { "unchanged:" },
        summary.lock.display(),
        summary.suite,
        components.join(" "),
        summary.release_date
    )?;
    for arch in &summary.arches {
        let sets: Vec<String> = arch.sets.iter().map(|s| format!("{} {}", s.name, s.packages)).collect();
        writeln!(
            out,
            "  {}: {} packages, {:.1} MB to download ({})",
            arch.arch,
            arch.packages,
            arch.download_bytes as f64 / 1e6,
            sets.join(", ")
        )?;
        for set in &arch.sets {
            for line in &set.dropped {
                writeln!(out, "    {} dropped (only excluded packages satisfy it): {line}", set.name)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(packages: &[&str]) -> ImageSpec {
        let text = format!(
            "name = \"node\"\nversion = \"1\"\nsuite = \"bookworm\"\npackages = {packages:?}\nexclude-packages = [\"debconf\"]\n"
        );
        toml::from_str(&text).unwrap()
    }

    fn board(name: &str, arch: &str, kernel: &str) -> Board {
        let text = format!(
            "arch = \"{arch}\"\nkernel-package = \"{kernel}\"\nconsole = \"ttyS0\"\nboot-modules = []\n\
             [firmware]\npackage = \"f\"\ncode = \"/c\"\nvars = \"/v\"\n\
             [qemu]\nbinary = \"q\"\npackage = \"q\"\nmachine = \"m\"\nmemory-mib = 1\nsmp = 1\nboot-timeout-secs = 1\n\
             [disk]\nsize-mib = 1\nformats = [\"raw\"]\n"
        );
        Board { name: name.into(), path: format!("boards/{name}.toml").into(), file: toml::from_str(&text).unwrap() }
    }

    #[test]
    fn sets_per_arch_with_deduplicated_kernels() {
        let boards = [board("a", "amd64", "linux-image-cloud-amd64"), board("b", "amd64", "linux-image-cloud-amd64")];
        let sets = package_sets(&spec(&["tzdata", "base-files", "tzdata"]), &boards, &[]);
        let names: Vec<String> = sets.iter().map(|s| format!("{}/{}", s.name, s.arch)).collect();
        assert_eq!(names, ["rootfs/amd64", "kernel/amd64", "efi-stub/amd64", "rootfs/arm64", "efi-stub/arm64"]);
        assert_eq!(sets[0].roots, ["base-files", "tzdata"]);
        assert_eq!(sets[1].roots, ["linux-image-cloud-amd64"]);
        assert_eq!(sets[1].follow, Follow::KernelOnly);
        assert_eq!(sets[2].follow, Follow::None);
    }

    #[test]
    fn differences_name_set_and_package() {
        let boards = [board("a", "amd64", "linux-image-cloud-amd64")];
        let old = package_sets(&spec(&["base-files"]), &boards, &[]);
        let lock =
            Lock::new("bookworm".into(), vec!["main".into()], old.iter().map(PackageSet::locked).collect(), vec![]);
        assert!(differences(&lock, &spec(&["base-files"]), &boards, &[]).is_empty());
        let found = differences(&lock, &spec(&["base-files", "foo"]), &boards, &[]);
        assert!(found.contains(&"rootfs/amd64: spec adds package foo".to_string()), "{found:?}");
        let found = differences(&lock, &spec(&["base-files"]), &[board("a", "amd64", "linux-image-amd64")], &[]);
        assert!(found.contains(&"kernel/amd64: boards add package linux-image-amd64".to_string()), "{found:?}");
    }
}

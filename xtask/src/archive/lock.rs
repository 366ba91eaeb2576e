//! Locking: every package set of the image resolved against the signed Debian archive, and the check
//! that a lock still matches the inputs it was made from. Builds read only the lock
//! ([`LockInputs::load_checked`]), so an image is made from exactly the debs that were reviewed,
//! whatever the archive does later.

use super::cache::Cache;
use super::lockfile::{Lock, LockedPackage, LockedSet};
use super::mirror::Mirrors;
use super::packages::Index;
use super::release;
use super::resolve::{self, Dropped, Follow, Root};
use crate::spec::names::{PackageSet, EFI_STUB_PACKAGE};
use crate::spec::{Arch, Board, ImageSpec};
use crate::util::progress;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What one set is resolved from, for one arch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInputs {
    pub set: PackageSet,
    pub arch: Arch,
    /// Sorted and deduplicated, so reordering the spec does not make the lock stale.
    pub roots: Vec<String>,
    pub exclude: Vec<String>,
    pub follow: Follow,
}

impl SetInputs {
    fn locked(&self) -> LockedSet {
        LockedSet {
            name: self.set.clone(),
            arch: self.arch,
            roots: self.roots.clone(),
            exclude: self.exclude.clone(),
            follow: self.follow,
        }
    }
}

/// The packages an extension asks for (its packages.toml), as the lock sees them.
#[derive(Clone, Debug)]
pub struct ExtensionPackages {
    pub name: String,
    pub packages: Vec<String>,
    pub exclude: Vec<String>,
    /// The packages.toml they come from, for errors.
    pub origin: PathBuf,
}

/// Everything a lock is made from: the spec, the boards (their kernels) and the extensions' packages.
pub struct LockInputs<'a> {
    pub spec_path: &'a Path,
    pub spec: &'a ImageSpec,
    pub boards_dir: &'a Path,
    pub boards: &'a [Board],
    pub extensions: &'a [ExtensionPackages],
}

fn sorted(items: impl IntoIterator<Item = String>) -> Vec<String> {
    items.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// What `lock` resolved: the lock, the date of the suite's Release, and per set the dependencies
/// left out because only excluded packages satisfy them.
pub struct Resolved {
    pub lock: Lock,
    pub release_date: String,
    pub dropped: BTreeMap<(Arch, PackageSet), Vec<Dropped>>,
}

impl LockInputs<'_> {
    /// Every package set the image needs, per arch: the rootfs (the spec's packages, full closure),
    /// the kernel (the boards' kernel packages, followed only to linux-image-*), the EFI stub
    /// (systemd-boot-efi alone), and one set per extension that names packages (their full closure,
    /// excluding the spec's excludes and the extension's own). A set with no roots (no board for that
    /// arch) is left out.
    pub fn sets(&self) -> Vec<SetInputs> {
        let mut sets = Vec::new();
        for arch in Arch::ALL {
            sets.push(SetInputs {
                set: PackageSet::Rootfs,
                arch,
                roots: sorted(self.spec.packages.iter().cloned()),
                exclude: sorted(self.spec.exclude_packages.iter().cloned()),
                follow: Follow::All,
            });
            let kernels =
                sorted(self.boards.iter().filter(|b| b.arch() == arch).map(|b| b.file.kernel_package.clone()));
            if !kernels.is_empty() {
                sets.push(SetInputs {
                    set: PackageSet::Kernel,
                    arch,
                    roots: kernels,
                    exclude: Vec::new(),
                    follow: Follow::KernelOnly,
                });
            }
            sets.push(SetInputs {
                set: PackageSet::EfiStub,
                arch,
                roots: vec![EFI_STUB_PACKAGE.to_string()],
                exclude: Vec::new(),
                follow: Follow::None,
            });
            for extension in self.extensions.iter().filter(|e| !e.packages.is_empty()) {
                sets.push(SetInputs {
                    set: PackageSet::Extension(extension.name.clone()),
                    arch,
                    roots: sorted(extension.packages.iter().cloned()),
                    exclude: sorted(self.spec.exclude_packages.iter().chain(&extension.exclude).cloned()),
                    follow: Follow::All,
                });
            }
        }
        sets
    }

    /// Where a set's root was asked for, for "unknown package" errors.
    fn root_origin(&self, set: &SetInputs, root: &str) -> String {
        match &set.set {
            PackageSet::Rootfs => format!("{}, field `packages`", self.spec_path.display()),
            PackageSet::Kernel => self
                .boards
                .iter()
                .filter(|b| b.arch() == set.arch && b.file.kernel_package == root)
                .map(|b| format!("{}, field `kernel-package`", b.path.display()))
                .collect::<Vec<_>>()
                .join("; "),
            PackageSet::EfiStub => "the UKI stub package xtask always needs".to_string(),
            PackageSet::Extension(name) => match self.extensions.iter().find(|e| &e.name == name) {
                Some(extension) => format!("{}, field `packages`", extension.origin.display()),
                None => format!("package set {}", set.set),
            },
        }
    }

    /// Loads the lock at `lock_path` and checks it was made from these inputs.
    pub fn load_checked(&self, lock_path: &Path) -> Result<Lock> {
        if !lock_path.exists() {
            bail!(
                "no lockfile {} for {}: run `cargo xtask lock` to resolve and pin the packages",
                lock_path.display(),
                self.spec_path.display()
            );
        }
        let lock = Lock::load(lock_path)?;
        let differences = self.differences(&lock);
        if !differences.is_empty() {
            bail!(
                "{} is stale: it no longer matches {} and the boards in {}:\n  {}\nrun `cargo xtask lock` to update it",
                lock_path.display(),
                self.spec_path.display(),
                self.boards_dir.display(),
                differences.join("\n  ")
            );
        }
        Ok(lock)
    }

    /// What changed between the inputs recorded in the lock and the current ones, one line each.
    fn differences(&self, lock: &Lock) -> Vec<String> {
        let mut out = Vec::new();
        if lock.suites != self.spec.suites {
            out.push(format!("spec suites are {:?}, the lock has {:?}", self.spec.suites, lock.suites));
        }
        if lock.components != self.spec.components {
            out.push(format!("spec components are {:?}, the lock has {:?}", self.spec.components, lock.components));
        }
        let wanted = self.sets();
        for set in &wanted {
            let (source, adds, removes) = match set.set {
                PackageSet::Rootfs => ("spec", "spec adds", "spec removes"),
                PackageSet::Kernel => ("boards", "boards add", "boards remove"),
                PackageSet::Extension(_) => ("the extension", "extension adds", "extension removes"),
                PackageSet::EfiStub => ("xtask", "xtask adds", "xtask removes"),
            };
            let prefix = format!("{}/{}", set.set, set.arch);
            let Some(locked) = lock.set(set.arch, &set.set) else {
                out.push(format!("{prefix}: the lock has no such set ({source} adds it)"));
                continue;
            };
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
            if !wanted.iter().any(|set| set.set == locked.name && set.arch == locked.arch) {
                out.push(format!("{}/{}: the lock has this set, the current inputs do not", locked.name, locked.arch));
            }
        }
        out
    }

    /// Resolves every set against the archive: each suite's InRelease (signature checked), both
    /// arches' Packages indexes of every suite (checked against it), and each set's closure, the newest
    /// version of a package across the suites winning.
    pub fn resolve(&self, mirrors: &Mirrors, cache: &Cache) -> Result<Resolved> {
        let spec = self.spec;
        let mut releases = Vec::new();
        for suite in &spec.suites {
            let at = || format!("suite {suite:?} ({}, field `suites`)", self.spec_path.display());
            let mirror = mirrors.uri(suite).with_context(at)?;
            let step = progress::step(format!("reading {mirror}/dists/{suite}/InRelease"));
            releases.push(release::fetch(&mirror, suite).with_context(|| format!("reading {}", at()))?);
            step.done();
        }

        let step = progress::step("loading package indexes");
        // The two arches' indexes are independent; decompressing and parsing them is the slow part.
        let releases_ref = &releases;
        let indexes: Vec<(Arch, Result<Index>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = Arch::ALL
                .into_iter()
                .map(|arch| (arch, scope.spawn(move || load_index(releases_ref, spec, arch, cache))))
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

        let sets = self.sets();
        let mut packages = Vec::new();
        let mut dropped = BTreeMap::new();
        for set in &sets {
            let index = by_arch.get(&set.arch).with_context(|| format!("no package index for {}", set.arch))?;
            let roots: Vec<Root> =
                set.roots.iter().map(|name| Root { name: name.clone(), origin: self.root_origin(set, name) }).collect();
            let resolution = resolve::resolve(index, &roots, &set.exclude, set.follow)
                .with_context(|| format!("resolving package set {} for {}", set.set, set.arch))?;
            dropped.insert((set.arch, set.set.clone()), resolution.dropped);
            packages.extend(resolution.packages.into_iter().map(|p| LockedPackage {
                set: set.set.clone(),
                suite: index.suite_of(&p).to_string(),
                name: p.name,
                version: p.version,
                arch: p.architecture,
                target_arch: set.arch,
                filename: p.filename,
                size: p.size,
                sha256: p.sha256,
            }));
        }
        let lock = Lock::new(
            spec.suites.clone(),
            spec.components.clone(),
            sets.iter().map(SetInputs::locked).collect(),
            packages,
        );
        let release_date = releases.first().map(|r| r.date.clone()).unwrap_or_default();
        Ok(Resolved { lock, release_date, dropped })
    }
}

/// Downloads and parses every suite's and component's Packages index for one arch, in the spec's
/// suite order.
fn load_index(releases: &[release::Release], spec: &ImageSpec, arch: Arch, cache: &Cache) -> Result<Index> {
    let label = format!("{} {}/binary-{arch}", spec.suites.join("+"), spec.components.join("+"));
    let mut index = Index::new(label);
    for release in releases {
        for component in &spec.components {
            release::load_packages(release, component, arch.debian(), cache, &mut index).with_context(|| {
                format!("loading the {component} package index of suite {:?} for {arch}", release.name)
            })?;
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(packages: &[&str]) -> ImageSpec {
        let text = format!(
            "name = \"node\"\nversion = \"1\"\nsuites = [\"bookworm\"]\npackages = {packages:?}\nexclude-packages = [\"debconf\"]\n"
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

    fn inputs<'a>(spec: &'a ImageSpec, boards: &'a [Board]) -> LockInputs<'a> {
        LockInputs { spec_path: Path::new("node.toml"), spec, boards_dir: Path::new("boards"), boards, extensions: &[] }
    }

    #[test]
    fn sets_per_arch_with_deduplicated_kernels() {
        let boards = [board("a", "amd64", "linux-image-cloud-amd64"), board("b", "amd64", "linux-image-cloud-amd64")];
        let spec = spec(&["tzdata", "base-files", "tzdata"]);
        let sets = inputs(&spec, &boards).sets();
        let names: Vec<String> = sets.iter().map(|s| format!("{}/{}", s.set, s.arch)).collect();
        assert_eq!(names, ["rootfs/amd64", "kernel/amd64", "efi-stub/amd64", "rootfs/arm64", "efi-stub/arm64"]);
        assert_eq!(sets[0].roots, ["base-files", "tzdata"]);
        assert_eq!(sets[1].roots, ["linux-image-cloud-amd64"]);
        assert_eq!(sets[1].follow, Follow::KernelOnly);
        assert_eq!(sets[2].follow, Follow::None);
    }

    #[test]
    fn differences_name_set_and_package() {
        let boards = [board("a", "amd64", "linux-image-cloud-amd64")];
        let base = spec(&["base-files"]);
        let old = inputs(&base, &boards).sets();
        let lock = Lock::new(
            vec!["bookworm".into()],
            vec!["main".into()],
            old.iter().map(SetInputs::locked).collect(),
            vec![],
        );
        assert!(inputs(&base, &boards).differences(&lock).is_empty());
        let more = spec(&["base-files", "foo"]);
        let found = inputs(&more, &boards).differences(&lock);
        assert!(found.contains(&"rootfs/amd64: spec adds package foo".to_string()), "{found:?}");
        let other = [board("a", "amd64", "linux-image-amd64")];
        let found = inputs(&base, &other).differences(&lock);
        assert!(found.contains(&"kernel/amd64: boards add package linux-image-amd64".to_string()), "{found:?}");
    }
}

//! Which packages a set of roots needs: the closure over Depends and Pre-Depends, choosing among
//! alternatives, virtual packages and versions deterministically, and leaving out what the image
//! excludes. Recommends and Suggests are never followed: the image has no use for "usually wanted".

use super::packages::{parse_relations, Atom, Group, Index, Package};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};

/// How far to follow dependencies from the roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Follow {
    /// The full Depends + Pre-Depends closure.
    All,
    /// Only dependencies named `linux-image-*`: a kernel metapackage leads to the real kernel
    /// package, which is mined for vmlinuz and modules, so its userland deps (kmod,
    /// initramfs-tools, linux-base) are not wanted.
    KernelOnly,
    /// The roots alone.
    None,
}

impl Follow {
    pub fn as_str(self) -> &'static str {
        match self {
            Follow::All => "all",
            Follow::KernelOnly => "kernel-only",
            Follow::None => "none",
        }
    }
}

/// A root package and where it was asked for ("image-spec/node.toml, field `packages`").
#[derive(Clone, Debug)]
pub struct Root {
    pub name: String,
    pub origin: String,
}

/// A dependency left out because only excluded packages satisfy it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub package: String,
    pub dependency: String,
}

#[derive(Debug)]
pub struct Resolution {
    /// One version per package name, sorted by name.
    pub packages: Vec<Package>,
    pub dropped: Vec<Dropped>,
}

/// What an atom could be satisfied by.
struct Candidates {
    best: Option<usize>,
    /// Something would satisfy it but is excluded.
    blocked_by_exclude: bool,
}

struct Resolver<'a> {
    index: &'a Index,
    exclude: HashSet<&'a str>,
    /// Selected package name → its index in `index.packages`.
    selected: HashMap<String, usize>,
    /// Which selected package pulled each one in (None for roots), for error messages.
    parent: HashMap<usize, Option<usize>>,
    queue: VecDeque<usize>,
    dropped: Vec<Dropped>,
}

pub fn resolve(index: &Index, roots: &[Root], exclude: &[String], follow: Follow) -> Result<Resolution> {
    let mut resolver = Resolver {
        index,
        exclude: exclude.iter().map(String::as_str).collect(),
        selected: HashMap::new(),
        parent: HashMap::new(),
        queue: VecDeque::new(),
        dropped: Vec::new(),
    };
    for root in roots {
        if resolver.exclude.contains(root.name.as_str()) {
            bail!("package {:?} ({}) is also excluded; remove it from one of the two lists", root.name, root.origin);
        }
        if !index.knows(&root.name) {
            bail!("unknown package {:?} ({}): it is not in {}", root.name, root.origin, index.label);
        }
        let atom = Atom { name: root.name.clone(), constraint: None };
        if resolver.satisfied_by_selected(&atom) {
            continue;
        }
        let candidates = resolver.candidates(&atom);
        match candidates.best {
            Some(chosen) => resolver.select(chosen, None),
            None if candidates.blocked_by_exclude => {
                bail!("package {:?} ({}) is only provided by excluded packages", root.name, root.origin)
            }
            None => bail!("package {:?} ({}) cannot be installed from {}", root.name, root.origin, index.label),
        }
    }
    if follow != Follow::None {
        while let Some(current) = resolver.queue.pop_front() {
            resolver.follow_dependencies(current, follow)?;
        }
    }
    let mut packages: Vec<Package> = resolver.selected.values().map(|&i| index.packages[i].clone()).collect();
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Resolution { packages, dropped: resolver.dropped })
}

impl Resolver<'_> {
    fn select(&mut self, chosen: usize, parent: Option<usize>) {
        let name = self.index.packages[chosen].name.clone();
        if self.selected.insert(name, chosen).is_none() {
            self.parent.insert(chosen, parent);
            self.queue.push_back(chosen);
        }
    }

    /// "c ← b ← a": the package and the chain of packages that pulled it in.
    fn chain(&self, mut current: usize) -> String {
        let mut names = vec![self.index.packages[current].name.clone()];
        while let Some(Some(parent)) = self.parent.get(&current) {
            names.push(self.index.packages[*parent].name.clone());
            current = *parent;
        }
        names.join(" ← ")
    }

    fn follow_dependencies(&mut self, current: usize, follow: Follow) -> Result<()> {
        let package = &self.index.packages[current];
        let mut groups = Vec::new();
        for (field, text) in [("Pre-Depends", &package.pre_depends), ("Depends", &package.depends)] {
            let parsed = parse_relations(text).with_context(|| {
                format!("{}: package {} {}: field `{field}`", self.index.origin(package), package.name, package.version)
            })?;
            groups.extend(parsed);
        }
        for group in groups {
            let group: Group = match follow {
                Follow::KernelOnly => group.into_iter().filter(|atom| atom.name.starts_with("linux-image-")).collect(),
                Follow::All | Follow::None => group,
            };
            if group.is_empty() || group.iter().any(|atom| self.satisfied_by_selected(atom)) {
                continue;
            }
            let mut blocked = false;
            let mut chosen = None;
            for atom in &group {
                let candidates = self.candidates(atom);
                blocked |= candidates.blocked_by_exclude;
                if candidates.best.is_some() {
                    chosen = candidates.best;
                    break;
                }
            }
            let text = group.iter().map(Atom::to_string).collect::<Vec<_>>().join(" | ");
            match chosen {
                Some(chosen) => self.select(chosen, Some(current)),
                None if blocked => {
                    self.dropped.push(Dropped { package: package.name.clone(), dependency: text });
                }
                None => bail!(
                    "{} {} ({}) depends on `{text}`, which nothing in {} satisfies{}",
                    package.name,
                    package.version,
                    self.chain(current),
                    self.index.label,
                    self.conflict_hint(&group)
                ),
            }
        }
        Ok(())
    }

    /// Explains an unsatisfiable group whose package is already selected at another version.
    fn conflict_hint(&self, group: &Group) -> String {
        group
            .iter()
            .filter_map(|atom| self.selected.get(&atom.name).map(|&i| (atom, &self.index.packages[i])))
            .map(|(atom, package)| format!("; {} is already selected at version {}", atom.name, package.version))
            .collect()
    }

    fn satisfied_by_selected(&self, atom: &Atom) -> bool {
        let real =
            self.selected.get(&atom.name).is_some_and(|&i| version_matches(atom, &self.index.packages[i].version));
        real || self.index.providers(&atom.name).any(|(i, package, provided)| {
            self.selected.get(&package.name) == Some(&i) && provided_matches(atom, provided)
        })
    }

    /// The package to install for `atom`: the highest satisfying version of the real package of that
    /// name, across every suite of the index, else a provider (highest Priority, then name, then
    /// version).
    fn candidates(&self, atom: &Atom) -> Candidates {
        if self.exclude.contains(atom.name.as_str()) {
            return Candidates { best: None, blocked_by_exclude: true };
        }
        // A name already selected cannot be installed at a second version.
        let installable = |i: usize, package: &Package| self.selected.get(&package.name).is_none_or(|&s| s == i);
        let real = self
            .index
            .versions(&atom.name)
            .filter(|(i, package)| installable(*i, package) && version_matches(atom, &package.version))
            // The same version in two suites: the one added first (the earlier suite) wins.
            .max_by(|(ia, a), (ib, b)| super::version::compare(&a.version, &b.version).then(ib.cmp(ia)));
        if let Some((i, _)) = real {
            return Candidates { best: Some(i), blocked_by_exclude: false };
        }
        let mut blocked_by_exclude = false;
        let mut best: Option<(usize, &Package)> = None;
        for (i, package, provided) in self.index.providers(&atom.name) {
            if !provided_matches(atom, provided) || !installable(i, package) {
                continue;
            }
            if self.exclude.contains(package.name.as_str()) {
                blocked_by_exclude = true;
                continue;
            }
            let better = match best {
                None => true,
                Some((_, current)) => {
                    (package.priority, &package.name).cmp(&(current.priority, &current.name)).then_with(|| {
                        // Same package name: the higher version wins.
                        super::version::compare(&current.version, &package.version)
                    }) == std::cmp::Ordering::Less
                }
            };
            if better {
                best = Some((i, package));
            }
        }
        Candidates { best: best.map(|(i, _)| i), blocked_by_exclude }
    }
}

fn version_matches(atom: &Atom, version: &str) -> bool {
    atom.constraint.as_ref().is_none_or(|(relation, wanted)| relation.holds(version, wanted))
}

/// An unversioned Provides satisfies only unversioned dependencies (Debian policy 7.5).
fn provided_matches(atom: &Atom, provided: Option<&str>) -> bool {
    match (&atom.constraint, provided) {
        (None, _) => true,
        (Some((relation, wanted)), Some(version)) => relation.holds(version, wanted),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an index from compact paragraphs; Filename/Size/SHA256 are filled in.
    fn index(text: &str) -> Index {
        let mut full = String::new();
        for paragraph in text.trim().split("\n\n") {
            full.push_str(paragraph.trim());
            full.push_str("\nArchitecture: amd64\nFilename: pool/x.deb\nSize: 1\nSHA256: ");
            full.push_str(&"0".repeat(64));
            full.push_str("\n\n");
        }
        let mut index = Index::new("testing main binary-amd64");
        index.add_packages_file(&full, "Packages", "testing").unwrap();
        index
    }

    fn roots(names: &[&str]) -> Vec<Root> {
        names.iter().map(|n| Root { name: n.to_string(), origin: "spec.toml, field `packages`".into() }).collect()
    }

    fn names(resolution: &Resolution) -> Vec<String> {
        resolution.packages.iter().map(|p| format!("{}={}", p.name, p.version)).collect()
    }

    fn run(text: &str, wanted: &[&str], exclude: &[&str], follow: Follow) -> Result<Resolution> {
        let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
        resolve(&index(text), &roots(wanted), &exclude, follow)
    }

    const BASIC: &str = "
Package: app
Version: 1
Pre-Depends: libc (>= 2)
Depends: libfoo:any (>= 1.5), mta | mail-transport-agent, debconf (>= 0.5) | debconf-2.0

Package: libc
Version: 1

Package: libc
Version: 2.36

Package: libc
Version: 3~rc1

Package: libfoo
Version: 1.2

Package: libfoo
Version: 1.10

Package: exim
Version: 4
Priority: standard
Provides: mail-transport-agent

Package: postfix
Version: 3
Priority: optional
Provides: mail-transport-agent

Package: debconf
Version: 1.5

Package: cdebconf
Version: 0.2
Provides: debconf-2.0
";

    #[test]
    fn closure_versions_alternatives_and_virtuals() {
        let result = run(BASIC, &["app"], &[], Follow::All).unwrap();
        // Highest libc (3~rc1 > 2.36), libfoo 1.10 > 1.5 (numeric), exim by priority, debconf first alternative.
        assert_eq!(names(&result), ["app=1", "debconf=1.5", "exim=4", "libc=3~rc1", "libfoo=1.10"]);
        assert!(result.dropped.is_empty());
    }

    #[test]
    fn the_newest_version_across_suites_wins_and_a_tie_goes_to_the_earlier_suite() {
        let paragraph = |name: &str, version: &str, sha: char| {
            format!(
                "Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/{name}.deb\nSize: 1\nSHA256: {}\n\n",
                sha.to_string().repeat(64)
            )
        };
        let mut index = Index::new("trixie main binary-amd64");
        let release = paragraph("tzdata", "2026f", 'a') + &paragraph("runc", "1.1.15+ds1-2+b4", 'b');
        index.add_packages_file(&release, "trixie/Packages", "trixie").unwrap();
        let updates = paragraph("tzdata", "2026f", 'a') + &paragraph("qemu", "1:10.0.2", 'c');
        index.add_packages_file(&updates, "trixie-updates/Packages", "trixie-updates").unwrap();
        let security = paragraph("runc", "1.1.15+ds1-2+deb13u1", 'd') + &paragraph("qemu", "1:10.0.1", 'e');
        index.add_packages_file(&security, "trixie-security/Packages", "trixie-security").unwrap();
        let result = resolve(&index, &roots(&["tzdata", "runc", "qemu"]), &[], Follow::All).unwrap();
        let chosen: Vec<(String, &str)> =
            result.packages.iter().map(|p| (format!("{}={}", p.name, p.version), index.suite_of(p))).collect();
        assert_eq!(
            chosen,
            [
                ("qemu=1:10.0.2".to_string(), "trixie-updates"),
                ("runc=1.1.15+ds1-2+deb13u1".to_string(), "trixie-security"),
                ("tzdata=2026f".to_string(), "trixie"),
            ]
        );
    }

    #[test]
    fn already_selected_alternative_and_provider_win() {
        let result = run(BASIC, &["postfix", "cdebconf", "app"], &[], Follow::All).unwrap();
        assert_eq!(names(&result), ["app=1", "cdebconf=0.2", "libc=3~rc1", "libfoo=1.10", "postfix=3"]);
    }

    #[test]
    fn excluded_alternatives_are_dropped() {
        let result = run(BASIC, &["app"], &["debconf", "debconf-2.0", "cdebconf"], Follow::All).unwrap();
        assert_eq!(names(&result), ["app=1", "exim=4", "libc=3~rc1", "libfoo=1.10"]);
        assert_eq!(
            result.dropped,
            [Dropped { package: "app".into(), dependency: "debconf (>= 0.5) | debconf-2.0".into() }]
        );
        // An excluded provider leaves the other one.
        let result = run(BASIC, &["app"], &["exim"], Follow::All).unwrap();
        assert!(names(&result).contains(&"postfix=3".to_string()));
    }

    #[test]
    fn version_constraints_pick_the_highest_satisfying() {
        let text = "
Package: a
Version: 1
Depends: b (<< 2), c (= 1.0-1), d (>> 1)

Package: b
Version: 1.9

Package: b
Version: 2.0

Package: c
Version: 1.0-1

Package: c
Version: 1.0-2

Package: d
Version: 1:0.1

Package: d
Version: 5
";
        let result = run(text, &["a"], &[], Follow::All).unwrap();
        assert_eq!(names(&result), ["a=1", "b=1.9", "c=1.0-1", "d=1:0.1"]);
    }

    #[test]
    fn versioned_provides() {
        let text = "
Package: a
Version: 1
Depends: virt (>= 2)

Package: old
Version: 9
Provides: virt (= 1)

Package: plain
Version: 9
Priority: required
Provides: virt

Package: new
Version: 1
Provides: virt (= 2.5)
";
        let result = run(text, &["a"], &[], Follow::All).unwrap();
        assert_eq!(names(&result), ["a=1", "new=1"]);
    }

    #[test]
    fn unsatisfiable_dependency_names_chain_and_index() {
        let text = "
Package: a
Version: 1
Depends: b

Package: b
Version: 1
Depends: missing (>= 1)
";
        let err = format!("{:#}", run(text, &["a"], &[], Follow::All).unwrap_err());
        assert!(
            err.contains("missing (>= 1)") && err.contains("b ← a") && err.contains("testing main binary-amd64"),
            "{err}"
        );
    }

    #[test]
    fn unknown_or_excluded_root_is_an_error() {
        let err = format!("{:#}", run(BASIC, &["nope"], &[], Follow::All).unwrap_err());
        assert!(
            err.contains("\"nope\"")
                && err.contains("spec.toml, field `packages`")
                && err.contains("testing main binary-amd64"),
            "{err}"
        );
        let err = format!("{:#}", run(BASIC, &["app"], &["app"], Follow::All).unwrap_err());
        assert!(err.contains("also excluded"), "{err}");
    }

    #[test]
    fn kernel_only_follows_linux_image_only() {
        let text = "
Package: linux-image-cloud-amd64
Version: 6.1
Depends: linux-image-6.1.0-37-cloud-amd64 (= 6.1)

Package: linux-image-6.1.0-37-cloud-amd64
Version: 6.1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools | linux-initramfs-tool

Package: kmod
Version: 30
";
        let result = run(text, &["linux-image-cloud-amd64"], &[], Follow::KernelOnly).unwrap();
        assert_eq!(names(&result), ["linux-image-6.1.0-37-cloud-amd64=6.1", "linux-image-cloud-amd64=6.1"]);
        let result = run(text, &["linux-image-cloud-amd64"], &[], Follow::None).unwrap();
        assert_eq!(names(&result), ["linux-image-cloud-amd64=6.1"]);
    }
}

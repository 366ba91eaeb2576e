//! What a lock is behind: the lock compared with a fresh resolution of the same inputs against the
//! archive as it is now. A package whose newer version comes from a security suite is a security
//! update, which a scheduled CI job can rebuild and release for.

use super::lockfile::{Lock, LockedPackage};
use super::mirror::SuiteKind;
use super::version;
use crate::spec::names::PackageSet;
use crate::spec::Arch;
use serde::Serialize;
use std::collections::BTreeMap;

/// How a package differs between the lock and the archive now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// The lock pins an older version.
    Newer,
    /// The fresh resolution needs a package the lock lacks (a kernel's new ABI package, a new dependency).
    Added,
    /// The lock pins a package the fresh resolution no longer needs.
    Removed,
}

#[derive(Clone, Debug, Serialize)]
pub struct Behind {
    pub arch: Arch,
    pub set: PackageSet,
    pub name: String,
    pub change: Change,
    pub locked_version: Option<String>,
    pub locked_suite: Option<String>,
    pub available_version: Option<String>,
    pub available_suite: Option<String>,
    /// The available version comes from a security suite.
    pub security: bool,
}

type Key<'a> = (Arch, &'a PackageSet, &'a str);

fn by_key(lock: &Lock) -> BTreeMap<Key<'_>, &LockedPackage> {
    lock.packages.iter().map(|p| ((p.target_arch, &p.set, p.name.as_str()), p)).collect()
}

/// Every way `locked` is behind `fresh`, sorted by arch, set and name. Packages the lock pins at a
/// newer version than the archive now has (a lock made from a later snapshot) are not behind.
pub fn compare(locked: &Lock, fresh: &Lock) -> Vec<Behind> {
    let (old, new) = (by_key(locked), by_key(fresh));
    let mut out = Vec::new();
    let security = |p: &LockedPackage| SuiteKind::of(&p.suite) == SuiteKind::Security;
    for (key, now) in &new {
        let (arch, set, name) = *key;
        let entry = |change, then: Option<&LockedPackage>| Behind {
            arch,
            set: set.clone(),
            name: name.to_string(),
            change,
            locked_version: then.map(|p| p.version.clone()),
            locked_suite: then.map(|p| p.suite.clone()),
            available_version: Some(now.version.clone()),
            available_suite: Some(now.suite.clone()),
            security: security(now),
        };
        match old.get(key) {
            None => out.push(entry(Change::Added, None)),
            Some(then) if version::compare(&then.version, &now.version).is_lt() => {
                out.push(entry(Change::Newer, Some(then)))
            }
            Some(_) => {}
        }
    }
    for (key, then) in &old {
        if !new.contains_key(key) {
            let (arch, set, name) = *key;
            out.push(Behind {
                arch,
                set: set.clone(),
                name: name.to_string(),
                change: Change::Removed,
                locked_version: Some(then.version.clone()),
                locked_suite: Some(then.suite.clone()),
                available_version: None,
                available_suite: None,
                security: false,
            });
        }
    }
    out.sort_by(|a, b| (a.arch, &a.set, &a.name).cmp(&(b.arch, &b.set, &b.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::lockfile::LockedSet;
    use crate::archive::resolve::Follow;

    fn package(name: &str, version: &str, suite: &str) -> LockedPackage {
        LockedPackage {
            set: PackageSet::Rootfs,
            name: name.into(),
            version: version.into(),
            suite: suite.into(),
            arch: "amd64".into(),
            target_arch: Arch::Amd64,
            filename: format!("pool/{name}.deb"),
            size: 1,
            sha256: "ab".repeat(32),
        }
    }

    fn lock(packages: Vec<LockedPackage>) -> Lock {
        let set = LockedSet {
            name: PackageSet::Rootfs,
            arch: Arch::Amd64,
            roots: vec![],
            exclude: vec![],
            follow: Follow::All,
        };
        let suites = vec!["trixie".into(), "trixie-updates".into(), "trixie-security".into()];
        Lock::new(suites, vec!["main".into()], vec![set], packages)
    }

    #[test]
    fn newer_added_and_removed_packages_with_security_marked() {
        let locked = lock(vec![
            package("runc", "1.1.15+ds1-2+b4", "trixie"),
            package("tzdata", "2026f-0+deb13u1", "trixie"),
            package("linux-image-6.12.117+deb13-cloud-amd64", "6.12.117-1", "trixie"),
            package("base-files", "13.9", "trixie"),
        ]);
        let fresh = lock(vec![
            package("runc", "1.1.15+ds1-2+deb13u1", "trixie-security"),
            package("tzdata", "2026f-0+deb13u1", "trixie"),
            package("linux-image-6.12.118+deb13-cloud-amd64", "6.12.118-1", "trixie-security"),
            package("base-files", "13.8", "trixie"),
            package("tzdata-legacy", "2026g", "trixie-updates"),
        ]);
        let behind = compare(&locked, &fresh);
        let shown: Vec<(String, Change, bool)> =
            behind.iter().map(|b| (b.name.clone(), b.change, b.security)).collect();
        assert_eq!(
            shown,
            [
                ("linux-image-6.12.117+deb13-cloud-amd64".to_string(), Change::Removed, false),
                ("linux-image-6.12.118+deb13-cloud-amd64".to_string(), Change::Added, true),
                ("runc".to_string(), Change::Newer, true),
                ("tzdata-legacy".to_string(), Change::Added, false),
            ]
        );
        assert_eq!(behind[2].locked_version.as_deref(), Some("1.1.15+ds1-2+b4"));
        assert_eq!(behind[2].available_suite.as_deref(), Some("trixie-security"));
        assert!(compare(&fresh, &fresh).is_empty());
    }
}

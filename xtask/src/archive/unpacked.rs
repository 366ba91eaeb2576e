//! Package sets unpacked once into the cache (`<cache>/unpacked/<digest of the set's debs>`): the
//! kernel (100 MB of xz, seconds to unpack) and the EFI stub, which every build reads but never
//! changes. A digest of every file is kept beside the tree and each file a build reads is checked
//! against it, so a damaged tree is caught, not used.

use crate::archive::lockfile::LockedPackage;
use crate::spec::names::PackageSet;
use crate::util::digest::{hex, sha256_file};
use crate::util::tree::Provenance;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Bumped when unpacking changes in a way the debs' digests would not show.
const UNPACK_VERSION: &str = "unpacked/2";

/// Unpacks a package set once into the cache and returns its directory; later builds reuse it.
pub fn unpacked_set(cache_dir: &Path, debs: &[(&LockedPackage, &Path)], set: &PackageSet) -> Result<PathBuf> {
    let members: Vec<&(&LockedPackage, &Path)> = debs.iter().filter(|(p, _)| &p.set == set).collect();
    if members.is_empty() {
        bail!("the lock has no {set} packages for this arch");
    }
    let mut key = Sha256::new();
    key.update(format!("{UNPACK_VERSION}\n"));
    for (package, _) in &members {
        key.update(format!("{} {}\n", package.name, package.sha256));
    }
    let base = cache_dir.join("unpacked");
    let dir = base.join(hex(&key.finalize()));
    if dir.join(UNPACKED_DIGESTS).exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let temp = tempfile::Builder::new().prefix(".unpacking-").tempdir_in(&base)?;
    let mut provenance = Provenance::new();
    for (package, deb) in &members {
        super::deb::unpack(deb, &package.name, temp.path(), &mut provenance)?;
    }
    let mut digests = BTreeMap::new();
    for rel in provenance.keys() {
        let path = temp.path().join(rel);
        if fs::symlink_metadata(&path)?.is_file() {
            digests.insert(rel.to_string_lossy().into_owned(), sha256_file(&path)?);
        }
    }
    fs::write(temp.path().join(UNPACKED_DIGESTS), serde_json::to_vec(&digests)?)?;
    let temp = temp.keep();
    if fs::rename(&temp, &dir).is_err() {
        // Another build unpacked the same set meanwhile; theirs is as good as ours.
        let _ = fs::remove_dir_all(&temp);
    }
    Ok(dir)
}

const UNPACKED_DIGESTS: &str = ".sha256sums.json";

/// Checks that files read from an unpacked tree in the cache still have their recorded digests.
pub fn verify_unpacked(dir: &Path, rels: &[PathBuf]) -> Result<()> {
    let index = dir.join(UNPACKED_DIGESTS);
    let digests: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(&index)?).with_context(|| format!("reading {}", index.display()))?;
    for rel in rels {
        let recorded = digests
            .get(rel.to_string_lossy().as_ref())
            .with_context(|| format!("{} is not part of the unpacked packages in {}", rel.display(), dir.display()))?;
        if &sha256_file(&dir.join(rel))? != recorded {
            bail!(
                "{} in the cache is damaged (its sha256 no longer matches); delete {} and build again",
                rel.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

//! Fetching what the lock pins: every deb checked in the content-addressed cache, the missing ones
//! downloaded from the mirror with a few threads, each checked against its pinned size and digest.

use super::cache::{Cache, Entry};
use super::http;
use super::lockfile::LockedPackage;
use super::mirror::Mirrors;
use crate::spec::workspace::Workspace;
use crate::util::progress;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Parallel downloads: enough to hide per-request latency on many small debs.
const DOWNLOAD_THREADS: usize = 4;

/// What a fetch did.
#[derive(Debug, Default, Serialize)]
pub struct FetchReport {
    /// Cache paths of the requested packages, in the order asked for.
    pub paths: Vec<PathBuf>,
    /// Distinct files downloaded (including re-downloaded corrupt ones).
    pub downloaded: usize,
    pub downloaded_bytes: u64,
    /// Distinct files found intact in the cache.
    pub cached: usize,
    /// Packages whose cache entry was corrupt and was fetched again.
    pub refetched_corrupt: Vec<String>,
}

/// Makes sure every package in `packages` is in the cache and intact, downloading what is not.
/// The mirror is only looked up if something has to be downloaded.
pub fn fetch(ws: &Workspace, packages: &[&LockedPackage]) -> Result<FetchReport> {
    let cache = Cache::new(ws);
    let lock_path = ws.lock_path();
    let mut report = FetchReport::default();
    let mut seen = HashSet::new();
    let mut missing: Vec<&LockedPackage> = Vec::new();
    for package in packages {
        // The same deb can be in several sets; check and fetch it once.
        if !seen.insert(package.sha256.as_str()) {
            continue;
        }
        match cache.check(&package.sha256, package.size)? {
            Entry::Valid(_) => report.cached += 1,
            Entry::Missing => missing.push(package),
            Entry::Corrupt { path, actual_sha256, actual_size } => {
                progress::note(format!(
                    "cache entry for {} {} is corrupt ({}: {actual_size} bytes, sha256 {actual_sha256}; \
                     expected {} bytes, sha256 {}); downloading it again",
                    package.name,
                    package.version,
                    path.display(),
                    package.size,
                    package.sha256
                ));
                report.refetched_corrupt.push(package.name.clone());
                missing.push(package);
            }
        }
    }
    if !missing.is_empty() {
        // Each package comes from its suite's archive; a suite's archive is looked up only if
        // something of it must be downloaded.
        let mirrors = Mirrors::of(ws)?;
        let mut archives: BTreeMap<&str, String> = BTreeMap::new();
        for package in &missing {
            if !archives.contains_key(package.suite.as_str()) {
                let uri = mirrors.uri(&package.suite).with_context(|| {
                    format!(
                        "{} package(s) are not in the cache {} and must be downloaded",
                        missing.len(),
                        cache.dir().display()
                    )
                })?;
                archives.insert(&package.suite, uri);
            }
        }
        download_all(&cache, &archives, &lock_path, &missing)?;
        report.downloaded = missing.len();
        report.downloaded_bytes = missing.iter().map(|p| p.size).sum();
    }
    report.paths = packages.iter().map(|p| cache.entry_path(&p.sha256)).collect();
    Ok(report)
}

/// Downloads `packages` with a few threads; the first failure (in package order) is the error.
fn download_all(
    cache: &Cache,
    archives: &BTreeMap<&str, String>,
    lock_path: &Path,
    packages: &[&LockedPackage],
) -> Result<()> {
    let total = packages.iter().map(|p| p.size).sum();
    let bar = progress::bytes(format!("downloading {} debs", packages.len()), total);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors: Mutex<Vec<(usize, anyhow::Error)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..DOWNLOAD_THREADS.min(packages.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= packages.len() || failed.load(Ordering::SeqCst) {
                    break;
                }
                let archive = archives.get(packages[i].suite.as_str()).map_or("", String::as_str);
                if let Err(err) = download_one(cache, archive, lock_path, packages[i], &bar) {
                    failed.store(true, Ordering::SeqCst);
                    errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((i, err));
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut errors = errors.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    match errors.into_iter().next() {
        Some((_, err)) => Err(err),
        None => Ok(()),
    }
}

fn download_one(
    cache: &Cache,
    archive: &str,
    lock_path: &Path,
    package: &LockedPackage,
    bar: &ProgressBar,
) -> Result<()> {
    let url = format!("{archive}/{}", package.filename);
    match cache.download(&url, &package.sha256, package.size, bar) {
        Ok(_) => Ok(()),
        Err(err) if err.downcast_ref::<http::NotFound>().is_some() => bail!(
            "{} {} ({}, suite {}) is pinned in {} but {url} is gone ({err}). The archive has moved on since \
             the lock was made: run `cargo xtask lock` to re-pin to what it has now, or point --suite-mirror \
             {}=URL (or --mirror) at a mirror or snapshot that still has it",
            package.name,
            package.version,
            package.filename,
            package.suite,
            lock_path.display(),
            package.suite
        ),
        Err(err) => Err(err).with_context(|| {
            format!(
                "fetching {} {} ({}) from the archive of suite {} ({archive})",
                package.name, package.version, package.filename, package.suite
            )
        }),
    }
}

//! `cargo xtask fetch`: downloads the debs the lockfile pins into a content-addressed cache
//! (`<cache>/sha256/<hex>`). Entries are re-hashed before every use, so a corrupted cache heals
//! instead of poisoning an image, and a warm cache needs neither network nor a mirror.

use crate::debian::http;
use crate::debian::lockfile::{Lock, LockedPackage};
use crate::digest::sha256_reader;
use crate::spec::Arch;
use crate::{progress, Global};
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::Serialize;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Parallel downloads: enough to hide per-request latency on many small debs.
const DOWNLOAD_THREADS: usize = 4;

/// What a cache entry turned out to be.
pub enum Entry {
    Missing,
    Valid(PathBuf),
    Corrupt { path: PathBuf, actual_sha256: String, actual_size: u64 },
}

/// The content-addressed download cache.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache under `--cache-dir` (or its default).
    pub fn new(global: &Global) -> Cache {
        Cache::at(global.cache_dir())
    }

    pub fn at(root: impl Into<PathBuf>) -> Cache {
        Cache { dir: root.into().join("sha256") }
    }

    /// Where the file with this digest lives (whether or not it is there yet).
    pub fn entry_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Re-hashes the entry for `sha256` and says whether it is there and intact.
    pub fn check(&self, sha256: &str, size: u64) -> Result<Entry> {
        let path = self.entry_path(sha256);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Entry::Missing),
            Err(err) => return Err(err).with_context(|| format!("opening cache entry {}", path.display())),
        };
        let (actual_sha256, actual_size) =
            sha256_reader(file).with_context(|| format!("hashing cache entry {}", path.display()))?;
        if actual_sha256 == sha256 && actual_size == size {
            Ok(Entry::Valid(path))
        } else {
            Ok(Entry::Corrupt { path, actual_sha256, actual_size })
        }
    }

    /// The entry's path if it is there and intact; a corrupt entry is reported and treated as missing.
    pub fn verified(&self, sha256: &str, size: u64) -> Result<Option<PathBuf>> {
        match self.check(sha256, size)? {
            Entry::Valid(path) => Ok(Some(path)),
            Entry::Missing => Ok(None),
            Entry::Corrupt { path, .. } => {
                progress::note(format!("cache entry {} is corrupt; downloading it again", path.display()));
                Ok(None)
            }
        }
    }

    /// Downloads `url` into a temporary file beside the entries, checks size and digest, and only
    /// then renames it into place, so an entry is never half-written or wrong.
    pub fn download(&self, url: &str, sha256: &str, size: u64, bar: &ProgressBar) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache directory {}", self.dir.display()))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".download-")
            .tempfile_in(&self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        let written = http::download_to_file(url, temp.as_file_mut(), size, bar)?;
        if written != size {
            bail!("downloaded {url}: got {written} bytes, expected {size}");
        }
        temp.as_file_mut().sync_all().with_context(|| format!("writing {}", temp.path().display()))?;
        let (actual, _) = sha256_reader(
            std::fs::File::open(temp.path()).with_context(|| format!("reopening {}", temp.path().display()))?,
        )
        .with_context(|| format!("hashing {}", temp.path().display()))?;
        if actual != sha256 {
            bail!("downloaded {url}: sha256 is {actual}, expected {sha256}");
        }
        set_readable(temp.path())?;
        let path = self.entry_path(sha256);
        temp.persist(&path).with_context(|| format!("moving the download into {}", path.display()))?;
        Ok(path)
    }
}

/// Temporary files are created 0600; cache entries and lockfiles are ordinary 0644 files.
pub fn set_readable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

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
pub fn fetch(
    global: &Global,
    mirror: Option<&str>,
    lock: &Lock,
    lock_path: &Path,
    packages: &[&LockedPackage],
) -> Result<FetchReport> {
    let cache = Cache::new(global);
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
        let mirror = crate::debian::mirror::resolve(mirror, &lock.suite).with_context(|| {
            format!("{} package(s) are not in the cache {} and must be downloaded", missing.len(), cache.dir.display())
        })?;
        download_all(&cache, &mirror, lock_path, &missing)?;
        report.downloaded = missing.len();
        report.downloaded_bytes = missing.iter().map(|p| p.size).sum();
    }
    report.paths = packages.iter().map(|p| cache.entry_path(&p.sha256)).collect();
    Ok(report)
}

/// Downloads `packages` with a few threads; the first failure (in package order) is the error.
fn download_all(cache: &Cache, mirror: &str, lock_path: &Path, packages: &[&LockedPackage]) -> Result<()> {
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
                if let Err(err) = download_one(cache, mirror, lock_path, packages[i], &bar) {
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
    mirror: &str,
    lock_path: &Path,
    package: &LockedPackage,
    bar: &ProgressBar,
) -> Result<()> {
    let url = format!("{mirror}/{}", package.filename);
    match cache.download(&url, &package.sha256, package.size, bar) {
        Ok(_) => Ok(()),
        Err(err) if err.downcast_ref::<http::NotFound>().is_some() => bail!(
            "{} {} ({}) is pinned in {} but {url} is gone ({err}). The archive has moved on since the lock \
             was made: run `cargo xtask lock` to re-pin to what the mirror has now, or point --mirror / \
             XTASK_DEBIAN_MIRROR at a mirror or snapshot that still has it",
            package.name,
            package.version,
            package.filename,
            lock_path.display()
        ),
        Err(err) => {
            Err(err).with_context(|| format!("fetching {} {} ({})", package.name, package.version, package.filename))
        }
    }
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Fetch what the lock pins for this arch (all its package sets)
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Fetch for this board's arch (a name in the boards directory or a path to a .toml)
    #[arg(long)]
    pub board: Option<String>,
}

/// The `cargo xtask fetch` task: everything the lock names for one arch.
pub fn run(global: &Global, args: &FetchArgs) -> Result<()> {
    let arch = match (args.arch, args.board.as_deref()) {
        (Some(arch), None) => arch,
        (arch, board) => crate::spec::select_board(&global.boards_dir(), board, arch)?.arch(),
    };
    let spec_path = global.spec_path();
    let spec = crate::spec::load_spec(&spec_path)?;
    let boards = crate::spec::load_boards(&global.boards_dir())?;
    let lock = crate::lock::load_checked(global, &spec, &boards)?;
    let lock_path = global.lock_path();
    let packages = lock.packages_for(arch);
    let report = fetch(global, global.mirror.as_deref(), &lock, &lock_path, &packages)?;
    if global.json {
        #[derive(Serialize)]
        struct Output<'a> {
            arch: Arch,
            lock: &'a Path,
            #[serde(flatten)]
            report: &'a FetchReport,
        }
        let output = Output { arch, lock: &lock_path, report: &report };
        let json = serde_json::to_string_pretty(&output).context("serializing the fetch report")?;
        writeln!(std::io::stdout(), "{json}").context("writing to stdout")?;
    } else {
        writeln!(
            std::io::stdout(),
            "{arch}: downloaded {} packages ({:.1} MB), {} already cached{}",
            report.downloaded,
            report.downloaded_bytes as f64 / 1e6,
            report.cached,
            if report.refetched_corrupt.is_empty() {
                String::new()
            } else {
                format!("; re-downloaded corrupt cache entries of {}", report.refetched_corrupt.join(", "))
            }
        )
        .context("writing to stdout")?;
    }
    Ok(())
}

//! The stage cache: each build stage's outputs stored under the digest of everything that decides
//! them (its [`Key`]), locally and, when configured, in object storage shared between CI runners.
//!
//! The image is bit-for-bit reproducible, which is what makes this safe: equal inputs give equal
//! bytes, so a stored output is as good as a rebuilt one. A key covers the stage's input digests,
//! the spec and board fields it reads, the host tools' versions and its own code (the digests of its
//! source folders and every earlier one, from build.rs). Entries are checked before use, never trusted:
//!
//! - local: `<dir>/<stage>/<key>/` holds the outputs and `entry.json` (each file's size and sha256,
//!   and the stage's facts). A file is rehashed unless its inode, size and modification time still
//!   equal those recorded after its last full check (`checked.json`). The outputs are hardlinked into
//!   the build's staging directory, so a cached build copies nothing; writing to a published file
//!   changes its modification time, and the next use rehashes it and drops the entry.
//! - remote: `PREFIX/<stage>/<key>/` with the same files, `entry.json` written last. Every file read
//!   is checked against the entry's sha256 and size; a mismatch, a truncated object or a store that
//!   does not answer is a warning, and the stage is built.
//!
//! Nothing about the cache can fail a build: a directory that cannot be written (read-only, full) is
//! a warning and the build goes on storing nothing; a bad entry is removed and rebuilt.

use super::digest::{hex, sha256_file};
use super::fs::{write_atomic_unsynced, write_new};
use super::progress;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/code_digests.rs"));

/// `--stage-cache`'s environment variable: a directory or `s3://BUCKET/PREFIX`.
pub const STAGE_CACHE_ENV: &str = "XTASK_STAGE_CACHE";
/// How many entries of one stage the local cache keeps (the most recently used).
const KEEP_PER_STAGE: usize = 3;
const ENTRY_FILE: &str = "entry.json";
const CHECKED_FILE: &str = "checked.json";

/// The code a stage runs: the digest of the source folders it may use (util/, spec/ and the stages
/// up to its own, by the layout rule) and of the crates that build pins.
pub fn code_digest(folders: &[&str]) -> String {
    let mut h = Sha256::new();
    for (name, digest) in CODE_DIGESTS {
        if folders.contains(name) || name.starts_with("Cargo.") {
            h.update(format!("{name}={digest}\n"));
        }
    }
    hex(&h.finalize())
}

/// What a stage's outputs are stored under.
#[derive(Clone, Debug)]
pub struct Key {
    /// `rootfs-amd64`, `ext-iscsi-tools-arm64`: one directory per stage and arch.
    pub stage: String,
    /// sha256 of the code and the inputs.
    pub digest: String,
    /// sha256 of the inputs alone: an entry with the same inputs and other code means the code changed.
    inputs_digest: String,
    code: String,
}

impl Key {
    /// The key of `stage` run by `code` (see [`code_digest`]) on `inputs`, a JSON value holding every
    /// input digest, field and tool version the stage's output depends on.
    pub fn new(stage: impl Into<String>, code: String, inputs: &serde_json::Value) -> Key {
        let stage = stage.into();
        let inputs_digest = hex(&Sha256::digest(format!("{stage}\n{inputs}").as_bytes()));
        let digest = hex(&Sha256::digest(format!("{code}\n{inputs_digest}").as_bytes()));
        Key { stage, digest, inputs_digest, code }
    }
}

/// One stored output file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    pub size: u64,
    pub sha256: String,
}

/// `entry.json`: a stage's outputs (by their names in the entry) and the facts it reported.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stored {
    pub stage: String,
    pub code: String,
    pub files: BTreeMap<String, FileRecord>,
    pub facts: serde_json::Value,
}

impl Stored {
    pub fn file(&self, name: &str) -> Result<&FileRecord> {
        self.files.get(name).with_context(|| format!("the {} stage recorded no output {name}", self.stage))
    }
}

/// Where a stage's outputs came from in this build.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Local,
    Remote,
    Built,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub stage: String,
    pub source: Source,
    pub seconds: f64,
}

/// A shared store of entries (object storage; upload/ provides it). Keys are relative to its prefix.
pub trait Remote {
    /// Where it is, for messages: `s3://bucket/prefix`.
    fn describe(&self) -> String;
    /// The object's bytes, or None when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn put(&self, key: &str, bytes: Vec<u8>, sha256: &str) -> Result<()>;
}

/// The caches a build reads and writes.
pub struct StageCache {
    local: Option<PathBuf>,
    remote: RefCell<Option<Box<dyn Remote>>>,
    read_only: bool,
    local_writable: Cell<bool>,
    outcomes: RefCell<Vec<Outcome>>,
    remote_bytes: Cell<u64>,
}

impl StageCache {
    /// No cache: every stage runs (`--no-stage-cache`).
    pub fn disabled() -> StageCache {
        StageCache::new(None, None, true)
    }

    /// The local cache in `local` and an optional remote; `read_only` stores nothing anywhere (for
    /// untrusted builds).
    pub fn new(local: Option<PathBuf>, remote: Option<Box<dyn Remote>>, read_only: bool) -> StageCache {
        StageCache {
            local,
            remote: RefCell::new(remote),
            read_only,
            local_writable: Cell::new(true),
            outcomes: RefCell::new(Vec::new()),
            remote_bytes: Cell::new(0),
        }
    }

    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.borrow().clone()
    }

    /// Whether the local cache has an entry for `key` (not checked yet: for deciding early whether
    /// work a stage would need is worth starting).
    pub fn holds(&self, key: &Key) -> bool {
        self.stage_dir(key).is_some_and(|dir| dir.join(&key.digest).join(ENTRY_FILE).is_file())
    }

    /// Bytes read from the remote cache in this build.
    pub fn remote_bytes(&self) -> u64 {
        self.remote_bytes.get()
    }

    /// The stage's outputs at `outputs` (entry name → path to place it at), from a cache when an entry
    /// for `key` is there and intact; else `build` writes them and returns the stage's facts, and they
    /// are stored. Either way the record of what the outputs are.
    pub fn run(
        &self,
        key: &Key,
        outputs: &[(&str, &Path)],
        build: impl FnOnce() -> Result<serde_json::Value>,
    ) -> Result<Stored> {
        let started = std::time::Instant::now();
        let found = match self.local_get(key, outputs) {
            Some(stored) => Some((stored, Source::Local)),
            None => self.remote_get(key, outputs).map(|stored| (stored, Source::Remote)),
        };
        let (stored, source) = match found {
            Some(found) => found,
            None => {
                self.explain_miss(key);
                for (_, path) in outputs {
                    let _ = fs::remove_file(path);
                }
                let facts = build()?;
                let mut files = BTreeMap::new();
                for (name, path) in outputs {
                    let size = fs::metadata(path)
                        .with_context(|| format!("the {} stage did not write {}", key.stage, path.display()))?
                        .len();
                    files.insert(name.to_string(), FileRecord { size, sha256: sha256_file(path)? });
                }
                let stored = Stored { stage: key.stage.clone(), code: key.code.clone(), files, facts };
                if !self.read_only {
                    self.local_put(key, outputs, &stored);
                    self.remote_put(key, outputs, &stored);
                }
                (stored, Source::Built)
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        self.outcomes.borrow_mut().push(Outcome { stage: key.stage.clone(), source, seconds });
        Ok(stored)
    }

    fn stage_dir(&self, key: &Key) -> Option<PathBuf> {
        self.local.as_ref().map(|dir| dir.join(&key.stage))
    }

    /// Says why a stage runs when the cache holds it with other code.
    fn explain_miss(&self, key: &Key) {
        let Some(stage_dir) = self.stage_dir(key) else { return };
        let Ok(code) = fs::read_to_string(stage_dir.join(format!("inputs-{}", key.inputs_digest))) else { return };
        if code.trim() != key.code {
            progress::note(format!(
                "stage cache: {}'s code changed since its inputs were last built (code {} then, {} now): building it",
                key.stage,
                short(code.trim()),
                short(&key.code)
            ));
        }
    }

    fn local_get(&self, key: &Key, outputs: &[(&str, &Path)]) -> Option<Stored> {
        let entry = self.stage_dir(key)?.join(&key.digest);
        let text = fs::read(entry.join(ENTRY_FILE)).ok()?;
        let dropped = |why: String| {
            progress::note(format!(
                "stage cache: entry {} ignored and removed ({why}); building the stage",
                entry.display()
            ));
            let _ = fs::remove_dir_all(&entry);
            None
        };
        let stored: Stored = match serde_json::from_slice(&text) {
            Ok(stored) => stored,
            Err(e) => return dropped(format!("{ENTRY_FILE}: {e}")),
        };
        if stored.stage != key.stage || stored.code != key.code {
            return dropped(format!("{ENTRY_FILE} belongs to another stage or code"));
        }
        let mut checked: BTreeMap<String, Stamp> =
            fs::read(entry.join(CHECKED_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let mut rehashed = false;
        for (name, _) in outputs {
            let Some(record) = stored.files.get(*name) else { return dropped(format!("no output {name}")) };
            let path = entry.join(name);
            let stamp = match fs::metadata(&path) {
                Ok(meta) => Stamp::of(&meta),
                Err(e) => return dropped(format!("{name}: {e}")),
            };
            if checked.get(*name) == Some(&stamp) && stamp.size == record.size {
                continue;
            }
            match sha256_file(&path) {
                Ok(sha256) if sha256 == record.sha256 && stamp.size == record.size => {}
                Ok(sha256) => {
                    return dropped(format!(
                        "{name} is {} bytes with sha256 {sha256}; the entry recorded {} bytes with sha256 {}",
                        stamp.size, record.size, record.sha256
                    ))
                }
                Err(e) => return dropped(format!("{name}: {e:#}")),
            }
            checked.insert(name.to_string(), stamp);
            rehashed = true;
        }
        for (name, dest) in outputs {
            if let Err(e) = link_or_copy(&entry.join(name), dest) {
                progress::note(format!("stage cache: {e:#}; building the stage"));
                return None;
            }
        }
        if rehashed {
            let _ = write_atomic_unsynced(&entry.join(CHECKED_FILE), &serde_json::to_vec(&checked).unwrap_or_default());
        }
        // The modification time of entry.json says when the entry was last used (pruning keeps the newest).
        let _ = fs::File::options()
            .append(true)
            .open(entry.join(ENTRY_FILE))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(stored)
    }

    fn local_put(&self, key: &Key, outputs: &[(&str, &Path)], stored: &Stored) {
        let Some(stage_dir) = self.stage_dir(key) else { return };
        if !self.local_writable.get() {
            return;
        }
        if let Err(e) = store_entry(&stage_dir, key, outputs, stored) {
            self.local_writable.set(false);
            progress::note(format!(
                "stage cache: cannot store in {} ({e:#}); the build goes on without storing its stages",
                stage_dir.display()
            ));
            return;
        }
        prune(&stage_dir, KEEP_PER_STAGE);
    }

    fn remote_get(&self, key: &Key, outputs: &[(&str, &Path)]) -> Option<Stored> {
        let remote_slot = self.remote.borrow();
        let remote = remote_slot.as_ref()?;
        let prefix = format!("{}/{}", key.stage, key.digest);
        let result = (|| -> Result<std::result::Result<Stored, String>> {
            let Some(text) = remote.get(&format!("{prefix}/{ENTRY_FILE}"))? else {
                return Ok(Err(String::new()));
            };
            let stored: Stored = match serde_json::from_slice(&text) {
                Ok(stored) => stored,
                Err(e) => return Ok(Err(format!("{ENTRY_FILE}: {e}"))),
            };
            if stored.stage != key.stage || stored.code != key.code {
                return Ok(Err(format!("{ENTRY_FILE} belongs to another stage or code")));
            }
            for (name, dest) in outputs {
                let Some(record) = stored.files.get(*name) else { return Ok(Err(format!("no output {name}"))) };
                let Some(bytes) = remote.get(&format!("{prefix}/{name}"))? else {
                    return Ok(Err(format!("{name} is missing")));
                };
                let sha256 = hex(&Sha256::digest(&bytes));
                if bytes.len() as u64 != record.size || sha256 != record.sha256 {
                    return Ok(Err(format!(
                        "{name} is {} bytes with sha256 {sha256}; the entry recorded {} bytes with sha256 {}",
                        bytes.len(),
                        record.size,
                        record.sha256
                    )));
                }
                self.remote_bytes.set(self.remote_bytes.get() + bytes.len() as u64);
                write_new(dest, &bytes)?;
            }
            Ok(Ok(stored))
        })();
        match result {
            Ok(Ok(stored)) => {
                drop(remote_slot);
                if !self.read_only {
                    self.local_put(key, outputs, &stored);
                }
                Some(stored)
            }
            Ok(Err(why)) => {
                if !why.is_empty() {
                    progress::note(format!(
                        "stage cache: remote entry {}/{prefix} ignored ({why}); building the stage",
                        remote.describe()
                    ));
                }
                None
            }
            Err(e) => {
                drop(remote_slot);
                self.remote_failed(&e);
                None
            }
        }
    }

    fn remote_put(&self, key: &Key, outputs: &[(&str, &Path)], stored: &Stored) {
        let remote_slot = self.remote.borrow();
        let Some(remote) = remote_slot.as_ref() else { return };
        let prefix = format!("{}/{}", key.stage, key.digest);
        let result = (|| -> Result<()> {
            for (name, path) in outputs {
                let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                remote.put(&format!("{prefix}/{name}"), bytes, &stored.file(name)?.sha256)?;
            }
            let entry = serde_json::to_vec_pretty(stored)?;
            let sha256 = hex(&Sha256::digest(&entry));
            remote.put(&format!("{prefix}/{ENTRY_FILE}"), entry, &sha256)
        })();
        if let Err(e) = result {
            drop(remote_slot);
            self.remote_failed(&e);
        }
    }

    /// A remote that fails is not asked again in this build.
    fn remote_failed(&self, e: &anyhow::Error) {
        if let Some(remote) = self.remote.borrow_mut().take() {
            progress::note(format!(
                "stage cache: the remote cache {} failed ({e:#}); building without it",
                remote.describe()
            ));
        }
    }
}

/// The digest of a directory tree as a stage reads it: every path (sorted), its type and mode, a
/// file's contents, a symlink's target.
pub fn dir_digest(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let rel = entry.path().strip_prefix(dir).expect("walkdir stays under its root");
        let meta = entry.path().symlink_metadata().with_context(|| format!("reading {}", entry.path().display()))?;
        h.update(format!("{}\0{:o}\0", rel.display(), meta.mode()));
        if meta.file_type().is_symlink() {
            let target = fs::read_link(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
            h.update(target.as_os_str().as_encoded_bytes());
        } else if meta.is_file() {
            h.update(sha256_file(entry.path())?);
        }
        h.update(b"\n");
    }
    Ok(hex(&h.finalize()))
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// What a file was when it was last hashed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// Writes an entry: the files linked (or copied) into a temporary directory beside it, entry.json
/// and checked.json, then one rename.
fn store_entry(stage_dir: &Path, key: &Key, outputs: &[(&str, &Path)], stored: &Stored) -> Result<()> {
    fs::create_dir_all(stage_dir).with_context(|| format!("creating {}", stage_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(stage_dir)
        .with_context(|| format!("creating a directory in {}", stage_dir.display()))?;
    let mut checked = BTreeMap::new();
    for (name, path) in outputs {
        let to = tmp.path().join(name);
        link_or_copy(path, &to)?;
        let meta = fs::metadata(&to).with_context(|| format!("reading {}", to.display()))?;
        checked.insert(name.to_string(), Stamp::of(&meta));
    }
    write_new(&tmp.path().join(ENTRY_FILE), &serde_json::to_vec_pretty(stored)?)?;
    write_new(&tmp.path().join(CHECKED_FILE), &serde_json::to_vec(&checked)?)?;
    let entry = stage_dir.join(&key.digest);
    if entry.exists() {
        fs::remove_dir_all(&entry).with_context(|| format!("removing the old {}", entry.display()))?;
    }
    let tmp = tmp.keep();
    fs::rename(&tmp, &entry).with_context(|| format!("renaming {} to {}", tmp.display(), entry.display()))?;
    write_atomic_unsynced(&stage_dir.join(format!("inputs-{}", key.inputs_digest)), key.code.as_bytes())?;
    Ok(())
}

/// A hard link when both are on one filesystem, else a copy.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let _ = fs::remove_file(to);
    if fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Keeps the `keep` most recently used entries of a stage and removes the rest (with the inputs
/// files naming code that no longer has an entry: they only explain misses).
fn prune(stage_dir: &Path, keep: usize) {
    let Ok(listing) = fs::read_dir(stage_dir) else { return };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = listing
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let used = fs::metadata(e.path().join(ENTRY_FILE)).and_then(|m| m.modified()).ok()?;
            Some((used, e.path()))
        })
        .collect();
    entries.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
    for (_, path) in entries.into_iter().skip(keep) {
        let _ = fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stage: &str, code: &str, input: u32) -> Key {
        Key::new(stage, code.to_string(), &serde_json::json!({ "input": input }))
    }

    /// Runs a stage that writes `content` to out, and says whether it ran.
    fn run(cache: &StageCache, key: &Key, out: &Path, content: &str) -> (Stored, bool) {
        let mut ran = false;
        let stored = cache
            .run(key, &[("out", out)], || {
                ran = true;
                fs::write(out, content)?;
                Ok(serde_json::json!({ "content": content }))
            })
            .unwrap();
        (stored, ran)
    }

    #[test]
    fn a_stage_runs_once_per_key_and_its_output_comes_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StageCache::new(Some(dir.path().join("cache")), None, false);
        let out = dir.path().join("out");
        let (first, ran) = run(&cache, &key("s", "c1", 1), &out, "one");
        assert!(ran);
        fs::remove_file(&out).unwrap();
        let (second, ran) = run(&cache, &key("s", "c1", 1), &out, "other");
        assert!(!ran, "an unchanged key is taken from the cache");
        assert_eq!(first, second);
        assert_eq!(fs::read_to_string(&out).unwrap(), "one");
        let (_, ran) = run(&cache, &key("s", "c1", 2), &out, "two");
        assert!(ran, "another input is another key");
        let sources: Vec<Source> = cache.outcomes().iter().map(|o| o.source).collect();
        assert_eq!(sources, [Source::Built, Source::Local, Source::Built]);
    }

    #[test]
    fn a_corrupted_entry_is_rehashed_removed_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StageCache::new(Some(dir.path().join("cache")), None, false);
        let out = dir.path().join("out");
        let k = key("s", "c1", 1);
        run(&cache, &k, &out, "good");
        // The published file is a hard link to the entry: writing to it corrupts the entry too.
        fs::write(&out, "evil").unwrap();
        let (stored, ran) = run(&cache, &k, &out, "good");
        assert!(ran, "a changed file is rehashed and the stage rebuilt");
        assert_eq!(fs::read_to_string(&out).unwrap(), "good");
        assert_eq!(stored.file("out").unwrap().sha256, hex(&Sha256::digest(b"good")));
        let (_, ran) = run(&cache, &k, &out, "good");
        assert!(!ran, "the rebuilt entry is used again");
    }

    #[test]
    fn a_broken_entry_json_is_a_miss_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StageCache::new(Some(dir.path().join("cache")), None, false);
        let out = dir.path().join("out");
        let k = key("s", "c1", 1);
        run(&cache, &k, &out, "good");
        fs::write(dir.path().join("cache/s").join(&k.digest).join(ENTRY_FILE), "{ truncated").unwrap();
        let (_, ran) = run(&cache, &k, &out, "good");
        assert!(ran);
    }

    #[test]
    fn changed_code_misses_and_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StageCache::new(Some(dir.path().join("cache")), None, false);
        let out = dir.path().join("out");
        run(&cache, &key("s", "c1", 1), &out, "old code");
        let (stored, ran) = run(&cache, &key("s", "c2", 1), &out, "new code");
        assert!(ran, "the same inputs with other code are built again");
        assert_eq!(stored.code, "c2");
        assert_eq!(fs::read_to_string(&out).unwrap(), "new code");
        let inputs =
            fs::read_to_string(dir.path().join("cache/s").join(format!("inputs-{}", key("s", "c2", 1).inputs_digest)));
        assert_eq!(inputs.unwrap(), "c2");
    }

    #[test]
    fn code_digests_cover_the_folders_asked_for() {
        assert_ne!(code_digest(&["util"]), code_digest(&["util", "spec"]));
        assert_eq!(code_digest(&["util", "spec"]), code_digest(&["spec", "util"]));
        for folder in ["util", "spec", "archive", "rootfs", "layers", "initramfs", "uki", "disk", "image"] {
            assert!(CODE_DIGESTS.iter().any(|(name, _)| *name == folder), "{folder} has a code digest");
        }
    }

    #[test]
    fn the_cache_keeps_the_most_recent_entries_of_a_stage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StageCache::new(Some(dir.path().join("cache")), None, false);
        let out = dir.path().join("out");
        for input in 0..5 {
            run(&cache, &key("s", "c", input), &out, &format!("{input}"));
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let entries = fs::read_dir(dir.path().join("cache/s")).unwrap().flatten().filter(|e| e.path().is_dir()).count();
        assert_eq!(entries, KEEP_PER_STAGE);
        let (_, ran) = run(&cache, &key("s", "c", 4), &out, "4");
        assert!(!ran, "the newest is kept");
        let (_, ran) = run(&cache, &key("s", "c", 0), &out, "0");
        assert!(ran, "the oldest was pruned");
    }

    /// A remote in memory, whose objects a test can damage; failing when `down`.
    struct MemoryRemote {
        objects: std::rc::Rc<RefCell<BTreeMap<String, Vec<u8>>>>,
        down: bool,
    }

    impl Remote for MemoryRemote {
        fn describe(&self) -> String {
            "memory://test".into()
        }
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
            anyhow::ensure!(!self.down, "connection refused");
            Ok(self.objects.borrow().get(key).cloned())
        }
        fn put(&self, key: &str, bytes: Vec<u8>, _sha256: &str) -> Result<()> {
            anyhow::ensure!(!self.down, "connection refused");
            self.objects.borrow_mut().insert(key.to_string(), bytes);
            Ok(())
        }
    }

    #[test]
    fn a_remote_entry_serves_an_empty_local_cache_and_a_bad_or_absent_remote_means_building() {
        let dir = tempfile::tempdir().unwrap();
        let objects = std::rc::Rc::new(RefCell::new(BTreeMap::new()));
        let remote = |down| Some(Box::new(MemoryRemote { objects: objects.clone(), down }) as Box<dyn Remote>);
        let out = dir.path().join("out");
        let k = key("s", "c", 1);
        let first = StageCache::new(Some(dir.path().join("one")), remote(false), false);
        run(&first, &k, &out, "shared");
        assert!(objects.borrow().keys().any(|k| k.ends_with(ENTRY_FILE)));

        let second = StageCache::new(Some(dir.path().join("two")), remote(false), false);
        fs::remove_file(&out).unwrap();
        let (_, ran) = run(&second, &k, &out, "other");
        assert!(!ran);
        assert_eq!(fs::read_to_string(&out).unwrap(), "shared");
        assert_eq!(second.outcomes()[0].source, Source::Remote);
        assert_eq!(second.remote_bytes(), 6);

        // Truncated: ignored, built, and the good output replaces it.
        let object = format!("s/{}/out", k.digest);
        objects.borrow_mut().insert(object.clone(), b"shar".to_vec());
        let third = StageCache::new(Some(dir.path().join("three")), remote(false), false);
        let (_, ran) = run(&third, &k, &out, "shared");
        assert!(ran);
        assert_eq!(objects.borrow()[&object], b"shared");

        // Read-only: reads, never writes.
        objects.borrow_mut().insert(object.clone(), b"shar".to_vec());
        let read_only = StageCache::new(Some(dir.path().join("four")), remote(false), true);
        let (_, ran) = run(&read_only, &k, &out, "shared");
        assert!(ran);
        assert_eq!(objects.borrow()[&object], b"shar", "a read-only build stores nothing");
        assert!(!dir.path().join("four").exists());

        // Down: built, no error.
        let down = StageCache::new(None, remote(true), false);
        let (_, ran) = run(&down, &k, &out, "shared");
        assert!(ran);
    }
}

//! The channel pointer, `PREFIX/<image>/channels/<channel>.json`: per arch, the latest version and its
//! index (key relative to PREFIX, and the index's sha256). It is written last, after the index it
//! names, so a reader following it never finds a release missing.
//!
//! Two releases may update one pointer at once (amd64 and arm64 from two CI jobs). Where the store
//! honours conditional puts, the pointer is replaced only if it is still what was read (If-Match on
//! its ETag, or If-None-Match: * when creating it), and a lost race is retried on a fresh read: no
//! update is lost. [`probe`] finds out first whether the store honours them (Garage 2.5 ignores both
//! headers and overwrites). Without them, [`Strategy::ReadModifyWrite`] writes unconditionally, waits,
//! reads the pointer back and writes again if its entry is gone: an update is lost only when another
//! writer's read-to-write took longer than the wait (ARCHITECTURE.md says what that means).

use super::client::{Store, Written};
use crate::archive::version;
use crate::spec::Arch;
use crate::util::digest::hex;
use crate::util::progress;
use anyhow::{bail, Context, Result};
use object_store::{PutMode, UpdateVersion};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    pub image: String,
    pub channel: String,
    /// Arch → its latest release.
    pub arches: BTreeMap<Arch, Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub version: String,
    /// The release's index.json, as a key relative to the destination's prefix.
    pub index: String,
    /// The index's sha256: a reader can check what it fetches against it.
    pub index_sha256: String,
}

/// How the pointer is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// If-Match / If-None-Match: no lost update.
    Conditional,
    /// Unconditional put, then read back after `settle` and redone if the entry was overwritten.
    ReadModifyWrite { settle: Duration },
}

/// Whether the store refuses conditional puts that must fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conditional {
    Honoured,
    /// Why the store is known to ignore them.
    Ignored(String),
}

/// Probes the store at `key` (an object of the probe's own, deleted after): a create-only put
/// (If-None-Match: *) of an object that exists, and a put with an ETag the object does not have
/// (If-Match), must both be refused.
pub fn probe(store: &Store, key: &str) -> Result<Conditional> {
    let body = bytes::Bytes::from_static(b"conditional put probe\n");
    let sha256 = hex(&Sha256::digest(&body));
    let result = (|| {
        store.put(key, body.clone(), &sha256, PutMode::Overwrite)?;
        let create = store.put(key, body.clone(), &sha256, PutMode::Create)?;
        let stale = UpdateVersion { e_tag: Some("\"00000000000000000000000000000000\"".into()), version: None };
        let update = store.put(key, body.clone(), &sha256, PutMode::Update(stale))?;
        Ok::<_, anyhow::Error>((create, update))
    })();
    let deleted = store.delete(key);
    let (create, update) = result.context("probing whether the store honours conditional puts")?;
    deleted?;
    Ok(match (create, update) {
        (Written::Done, _) => Conditional::Ignored(format!(
            "a create-only put (If-None-Match: *) over the existing object {} succeeded",
            store.url(key)
        )),
        (_, Written::Done) => Conditional::Ignored(format!(
            "a put with an ETag that {} does not have (If-Match) succeeded",
            store.url(key)
        )),
        (Written::Conflict, Written::Conflict) => Conditional::Honoured,
    })
}

/// What an update did.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The pointer's URL.
    pub url: String,
    pub previous: Option<Entry>,
    pub entry: Entry,
    /// Writes it took (more than one after a lost race).
    pub attempts: usize,
    pub unchanged: bool,
}

const ATTEMPTS: usize = 10;

/// Sets `arch`'s entry of the pointer at `key` to `entry`. A pointer naming a newer version for the
/// arch is left alone (an error) unless `allow_downgrade`.
#[allow(clippy::too_many_arguments)]
pub fn update(
    store: &Store,
    key: &str,
    image: &str,
    channel: &str,
    arch: Arch,
    entry: &Entry,
    strategy: Strategy,
    allow_downgrade: bool,
) -> Result<Outcome> {
    let url = store.url(key);
    let mut previous = None;
    for attempt in 1..=ATTEMPTS {
        let current = read(store, key)?;
        let mut pointer = match &current {
            Some((pointer, _)) => pointer.clone(),
            None => Pointer { image: image.to_string(), channel: channel.to_string(), arches: BTreeMap::new() },
        };
        if pointer.image != image || pointer.channel != channel {
            bail!(
                "{url} is the pointer of image {} channel {}, not of {image} {channel}",
                pointer.image,
                pointer.channel
            );
        }
        if attempt == 1 {
            previous = pointer.arches.get(&arch).cloned();
        }
        match pointer.arches.get(&arch) {
            Some(held) if held == entry => {
                return Ok(Outcome {
                    url: url.clone(),
                    previous,
                    entry: entry.clone(),
                    attempts: attempt - 1,
                    unchanged: attempt == 1,
                });
            }
            Some(held) if !allow_downgrade && version::compare(&held.version, &entry.version) == Ordering::Greater => {
                bail!(
                    "{url} points {arch} at {}, newer than {}: not moving the channel back (pass --allow-downgrade to)",
                    held.version,
                    entry.version
                )
            }
            _ => {}
        }
        pointer.arches.insert(arch, entry.clone());
        let text = serde_json::to_vec_pretty(&pointer).context("serializing the channel pointer")?;
        let sha256 = hex(&Sha256::digest(&text));
        let mode = match (strategy, current) {
            (Strategy::Conditional, Some((_, version))) => PutMode::Update(version),
            (Strategy::Conditional, None) => PutMode::Create,
            (Strategy::ReadModifyWrite { .. }, _) => PutMode::Overwrite,
        };
        if let Some(delay) = race_delay() {
            std::thread::sleep(delay);
        }
        let written = store.put(key, text.into(), &sha256, mode)?;
        let landed = match (written, strategy) {
            (Written::Conflict, _) => false,
            (Written::Done, Strategy::Conditional) => true,
            (Written::Done, Strategy::ReadModifyWrite { settle }) => {
                // Another writer that read before our write may still overwrite it: give it time to
                // land, then check that our entry survived.
                std::thread::sleep(settle);
                read(store, key)?.is_some_and(|(pointer, _)| pointer.arches.get(&arch) == Some(entry))
            }
        };
        if landed {
            return Ok(Outcome {
                url: url.clone(),
                previous,
                entry: entry.clone(),
                attempts: attempt,
                unchanged: false,
            });
        }
        progress::note(format!("{url} was changed by another release meanwhile: reading it again (attempt {attempt})"));
        std::thread::sleep(backoff(attempt));
    }
    bail!("cannot update {url}: it kept changing under {ATTEMPTS} attempts (other releases writing it?)")
}

/// A test hook: how long to wait between reading the pointer and writing it, so that a test can make
/// two releases race for certain (tests/upload.rs). Unset in use.
const RACE_DELAY_ENV: &str = "XTASK_TEST_POINTER_RACE_MS";

fn race_delay() -> Option<Duration> {
    std::env::var(RACE_DELAY_ENV).ok()?.parse().ok().map(Duration::from_millis)
}

/// The pointer at `key` and its version, or None.
pub fn read(store: &Store, key: &str) -> Result<Option<(Pointer, UpdateVersion)>> {
    let Some((bytes, version)) = store.get(key)? else { return Ok(None) };
    let pointer = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a channel pointer; not replacing it", store.url(key)))?;
    Ok(Some((pointer, version)))
}

/// 100 ms doubling, plus up to as much again of jitter so that two racing writers drift apart.
fn backoff(attempt: usize) -> Duration {
    let base = 100u64 << attempt.min(6);
    let noise =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() as u64);
    let jitter = (noise ^ u64::from(std::process::id())).wrapping_mul(0x9E37_79B9_7F4A_7C15) % base;
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: &str) -> Entry {
        Entry {
            version: version.into(),
            index: format!("node/{version}/amd64/index.json"),
            index_sha256: "a".repeat(64),
        }
    }

    #[test]
    fn racing_conditional_updates_lose_nothing() {
        // object_store's in-memory store honours If-Match like S3 does.
        let store = Store::in_memory();
        assert_eq!(probe(&store, "node/channels/.probe").unwrap(), Conditional::Honoured);
        assert!(store.head("node/channels/.probe").unwrap().is_none(), "the probe object is removed");
        let set = |arch: Arch, version: &str, allow_downgrade: bool| {
            let key = "node/channels/stable.json";
            update(&store, key, "node", "stable", arch, &entry(version), Strategy::Conditional, allow_downgrade)
        };
        std::thread::scope(|scope| {
            for arch in Arch::ALL {
                let set = &set;
                scope.spawn(move || set(arch, "1.0", false).unwrap());
            }
        });
        let (pointer, _) = read(&store, "node/channels/stable.json").unwrap().unwrap();
        assert_eq!(pointer.arches.len(), 2);
        assert!(set(Arch::Amd64, "1.0", false).unwrap().unchanged);
        assert!(format!("{:#}", set(Arch::Amd64, "0.9", false).unwrap_err()).contains("newer than 0.9"));
        assert_eq!(set(Arch::Amd64, "0.9", true).unwrap().previous, Some(entry("1.0")));
    }
}

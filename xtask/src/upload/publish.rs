//! Publishing a signed output directory ([`publish`]), in the order that keeps every reader safe:
//!
//! 1. The directory must verify against the public key ([`Verified::check`]); else nothing is sent.
//! 2. The bucket must answer (one LIST), and the store must honour conditional puts (channel.rs's
//!    probe) unless `--no-conditional`; a version already published with other content is refused.
//!    All before the first byte is sent.
//! 3. The artifacts, then SHA256SUMS and the signatures, then manifest.json, then index.json's
//!    signature and index.json. An object already there with the same size and stored sha256 is
//!    skipped; large files go up as resumable multipart uploads (multipart.rs); each object is checked
//!    after upload (size and stored digest).
//! 4. Last, the channel pointer (channel.rs).
//!
//! So an index appears only once everything it names is in place, and a pointer only names an index
//! that is in place. A published version is never replaced by other content.

use super::channel::{self, Conditional, Entry, Strategy};
use super::client::Store;
use super::journal;
use super::location::Location;
use super::multipart::{self, PartOptions, Stamp};
use crate::image::manifest::Manifest;
use crate::sign::index::Index;
use crate::sign::minisign::PublicKey;
use crate::sign::verify::verify_dir;
use crate::spec::names::{signature_of, INDEX_FILE, MANIFEST_FILE, SUMS_FILE};
use crate::util::progress;
use anyhow::{bail, Context, Result};
use object_store::PutMode;
use serde::Serialize;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A signed output directory that verified against the key, with its manifest and index, and the
/// stamp (size, modification time, inode) of every file as it was verified: a file rewritten or
/// replaced after that is refused before and after it is sent, since the digests stored with the
/// objects are the verified ones.
pub struct Verified {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub index: Index,
    index_bytes: Vec<u8>,
    pub key_id: String,
    stamps: BTreeMap<String, Stamp>,
}

impl Verified {
    /// Verifies `dir` against `key`; a directory that is unsigned or does not verify is refused,
    /// with every problem named.
    pub fn check(dir: &Path, key: &PublicKey) -> Result<Verified> {
        let stamps = stamps(dir)?;
        let report = verify_dir(dir, key);
        if !report.ok {
            bail!(
                "refusing to publish {}: it does not verify against key id {}:\n  {}",
                dir.display(),
                key.key_id,
                report.problem_lines().join("\n  ")
            );
        }
        let manifest = Manifest::load(dir)?;
        let path = dir.join(INDEX_FILE);
        let index_bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let index = Index::parse(&index_bytes, &path.display().to_string())?;
        let verified =
            Verified { dir: dir.to_path_buf(), manifest, index, index_bytes, key_id: key.key_id.to_string(), stamps };
        for name in verified.publishing_order() {
            verified.unchanged(&name, "it was verified")?;
        }
        Ok(verified)
    }

    /// Checks that `name` is still the file that was verified.
    fn unchanged(&self, name: &str, since: &str) -> Result<()> {
        let path = self.dir.join(name);
        let stamp = self.stamps.get(name).with_context(|| format!("{} appeared after verification", path.display()))?;
        multipart::unchanged_since(&path, stamp, since)
    }

    /// The files in publishing order: artifacts (manifest order), SHA256SUMS and the signatures,
    /// manifest.json, index.json's signature, index.json.
    pub fn publishing_order(&self) -> Vec<String> {
        let artifacts: Vec<String> = self.manifest.artifacts.iter().map(|a| a.file.clone()).collect();
        let mut order = artifacts.clone();
        order.push(SUMS_FILE.to_string());
        let rest = self.index.files.iter().map(|f| &f.file);
        order.extend(rest.filter(|f| !artifacts.contains(f) && *f != SUMS_FILE && *f != MANIFEST_FILE).cloned());
        order.extend([MANIFEST_FILE.to_string(), signature_of(INDEX_FILE), INDEX_FILE.to_string()]);
        order
    }

    /// Size and sha256 of one file of the release.
    fn digest(&self, name: &str) -> Result<(u64, String)> {
        if name == INDEX_FILE {
            return Ok((
                self.index_bytes.len() as u64,
                crate::util::digest::hex(&sha2::Sha256::digest(&self.index_bytes)),
            ));
        }
        if name == signature_of(INDEX_FILE) {
            let path = self.dir.join(name);
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            return Ok((bytes.len() as u64, crate::util::digest::hex(&sha2::Sha256::digest(&bytes))));
        }
        let entry =
            self.index.files.iter().find(|f| f.file == name).with_context(|| format!("{name} is not in the index"))?;
        Ok((entry.size, entry.sha256.clone()))
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub channel: String,
    pub parts: PartOptions,
    pub dry_run: bool,
    /// Allow read-modify-write of the pointer where the store ignores conditional puts.
    pub no_conditional: bool,
    pub allow_downgrade: bool,
    /// How long read-modify-write waits before reading the pointer back.
    pub settle: Duration,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Sent,
    Skipped,
    WouldSend,
    WouldSkip,
}

#[derive(Clone, Debug, Serialize)]
pub struct ObjectReport {
    pub url: String,
    pub size: u64,
    pub action: Action,
    pub bytes_sent: u64,
    pub parts_sent: usize,
    /// Parts an interrupted earlier run had stored.
    pub parts_resumed: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub release: String,
    pub image: String,
    pub version: String,
    pub arch: String,
    pub key_id: String,
    pub dry_run: bool,
    pub objects_sent: usize,
    pub objects_skipped: usize,
    pub bytes_sent: u64,
    /// The whole run: verification aside, from the first request to the pointer written.
    pub seconds: f64,
    /// Sending and checking the objects alone.
    pub transfer_seconds: f64,
    /// How the pointer is updated: "conditional" or "read-modify-write" (and why).
    pub pointer_update: String,
    pub channel: Option<channel::Outcome>,
    pub objects: Vec<ObjectReport>,
}

/// Publishes `verified` under `to` (see the module doc for the order).
pub fn publish(store: &Store, to: &Location, verified: &Verified, options: &Options) -> Result<Report> {
    let start = Instant::now();
    let manifest = &verified.manifest;
    let release = to.release(&manifest.image, &manifest.version, manifest.arch)?;
    let channel_key = to.channel_key(&manifest.image, &options.channel)?;
    progress::note(format!(
        "publishing {} {} {} to {} at {} (region {}, credentials from {})",
        manifest.image,
        manifest.version,
        manifest.arch,
        release.display(),
        store.endpoint,
        store.region,
        store.credentials_from
    ));
    store.check(&release.prefix)?;

    // 2. Everything that could refuse the release, before anything is sent: a version published with
    // other content, and a store that ignores conditional puts (probed only when something is to be
    // written, so that a run with nothing to do writes nothing at all).
    let index_key = release.key(INDEX_FILE);
    if let Some((published, _)) = store.get(&index_key)? {
        if published.as_ref() != verified.index_bytes.as_slice() {
            bail!(
                "refusing to publish: {} already holds another build of {} {} for {} (its index differs); a \
                 published version is never replaced: bump the version",
                store.url(&index_key),
                manifest.image,
                manifest.version,
                manifest.arch
            );
        }
    }
    let mut plan = Vec::new();
    for name in verified.publishing_order() {
        let (size, sha256) = verified.digest(&name)?;
        let key = release.key(&name);
        let present = store.head(&key)?.is_some_and(|h| h.size == size && h.sha256.as_deref() == Some(sha256.as_str()));
        plan.push((name, key, size, sha256, present));
    }
    let to_send: u64 = plan.iter().filter(|p| !p.4).map(|p| p.2).sum();
    let entry = Entry {
        version: manifest.version.clone(),
        index: format!("{}/{}/{}/{INDEX_FILE}", manifest.image, manifest.version, manifest.arch),
        index_sha256: verified.digest(INDEX_FILE)?.1,
    };
    let pointed =
        channel::read(store, &channel_key)?.and_then(|(pointer, _)| pointer.arches.get(&manifest.arch).cloned());
    let nothing_to_write = plan.iter().all(|p| p.4) && pointed.as_ref() == Some(&entry);
    let (strategy, pointer_update) = if options.dry_run {
        (None, "not probed (dry run)".to_string())
    } else if nothing_to_write {
        (None, "unchanged".to_string())
    } else {
        let probe_key = to.probe_key(&manifest.image, &format!("{}-{}", std::process::id(), start_nanos()));
        match channel::probe(store, &probe_key)? {
            Conditional::Honoured => (Some(Strategy::Conditional), "conditional".to_string()),
            Conditional::Ignored(why) if options.no_conditional => {
                progress::note(format!(
                    "the store ignores conditional puts ({why}): updating {} by read-modify-write, reading it back \
                     to check (--no-conditional; a weaker guarantee than a conditional put, see ARCHITECTURE.md)",
                    store.url(&channel_key)
                ));
                (Some(Strategy::ReadModifyWrite { settle: options.settle }), format!("read-modify-write: {why}"))
            }
            Conditional::Ignored(why) => bail!(
                "refusing to publish: the store ignores conditional puts ({why}), so two releases updating {} at \
                 once could lose one another's entry. Pass --no-conditional to update it by read-modify-write with \
                 a read-back check instead (a weaker guarantee)",
                store.url(&channel_key)
            ),
        }
    };

    // 3. The objects that are not there yet, in order.
    let journals = journal::dir_beside(&verified.dir)?;
    let transfer = Instant::now();
    let bar = progress::bytes(format!("uploading to {}", release.display()), to_send);
    let mut objects = Vec::new();
    for (name, key, size, sha256, present) in plan {
        let url = store.url(&key);
        let mut object =
            ObjectReport { url, size, action: Action::Skipped, bytes_sent: 0, parts_sent: 0, parts_resumed: 0 };
        if options.dry_run {
            object.action = if present { Action::WouldSkip } else { Action::WouldSend };
        } else if !present {
            let path = verified.dir.join(&name);
            verified.unchanged(&name, "it was verified")?;
            if size > options.parts.part_size {
                let journal = journal::path_for(&journals, &name, &object.url);
                let sent = multipart::upload_file(store, &key, &path, size, &sha256, &journal, &options.parts, &bar)?;
                (object.bytes_sent, object.parts_sent, object.parts_resumed) =
                    (sent.bytes, sent.parts_sent, sent.parts_resumed);
            } else {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                store.put(&key, bytes.into(), &sha256, PutMode::Overwrite)?;
                object.bytes_sent = size;
                bar.inc(size);
            }
            verified.unchanged(&name, "it was verified (it changed while it was uploaded)")?;
            check_stored(store, &key, size, &sha256)?;
            object.action = Action::Sent;
        }
        objects.push(object);
    }
    bar.finish_and_clear();
    let transfer_seconds = transfer.elapsed().as_secs_f64();

    // 4. The pointer, last.
    let channel = match strategy {
        Some(strategy) => Some(channel::update(
            store,
            &channel_key,
            &manifest.image,
            &options.channel,
            manifest.arch,
            &entry,
            strategy,
            options.allow_downgrade,
        )?),
        None if nothing_to_write => Some(channel::Outcome {
            url: store.url(&channel_key),
            previous: pointed,
            entry,
            attempts: 0,
            unchanged: true,
        }),
        None => None,
    };
    let sent = |a: Action| objects.iter().filter(|o| o.action == a).count();
    Ok(Report {
        release: release.display(),
        image: manifest.image.clone(),
        version: manifest.version.clone(),
        arch: manifest.arch.to_string(),
        key_id: verified.key_id.clone(),
        dry_run: options.dry_run,
        objects_sent: sent(Action::Sent),
        objects_skipped: sent(Action::Skipped),
        bytes_sent: objects.iter().map(|o| o.bytes_sent).sum(),
        seconds: start.elapsed().as_secs_f64(),
        transfer_seconds,
        pointer_update,
        channel,
        objects,
    })
}

/// After an upload: the store must hold the object with its size and the digest stored with it.
fn check_stored(store: &Store, key: &str, size: u64, sha256: &str) -> Result<()> {
    match store.head(key)? {
        Some(head) if head.size == size && head.sha256.as_deref() == Some(sha256) => Ok(()),
        Some(head) => bail!(
            "cannot confirm the upload of {}: the store holds {} bytes with sha256 {}, not {size} bytes with sha256 {sha256}",
            store.url(key),
            head.size,
            head.sha256.as_deref().unwrap_or("(none stored)")
        ),
        None => bail!("cannot confirm the upload of {}: the store does not have it", store.url(key)),
    }
}

/// The stamp of every file directly in `dir`.
fn stamps(dir: &Path) -> Result<BTreeMap<String, Stamp>> {
    let mut stamps = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        stamps.insert(name, Stamp::of(&entry.path())?);
    }
    Ok(stamps)
}

fn start_nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::dir::sign_dir;
    use crate::sign::minisign::SecretKey;

    /// A signed directory with one artifact, and its public key.
    fn signed(dir: &Path) -> PublicKey {
        let content = vec![7u8; 3000];
        std::fs::write(dir.join("a.raw"), &content).unwrap();
        let sha = crate::util::digest::hex(&sha2::Sha256::digest(&content));
        let manifest = format!(
            r#"{{"image":"node","version":"0.1.0","arch":"arm64","board":"b","source_date_epoch":0,"lock_sha256":"",
                "kernel":"k","cmdline":"","artifacts":[{{"file":"a.raw","size":3000,"sha256":"{sha}"}}]}}"#
        );
        std::fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        let key = SecretKey::generate().unwrap();
        sign_dir(dir, &key).unwrap();
        key.public_key()
    }

    fn options() -> Options {
        Options {
            channel: "stable".into(),
            parts: PartOptions { part_size: multipart::MIN_PART_SIZE, jobs: 2 },
            dry_run: false,
            no_conditional: false,
            allow_downgrade: false,
            settle: Duration::ZERO,
        }
    }

    #[test]
    fn a_file_replaced_after_verification_is_not_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let key = signed(tmp.path());
        let to = Location::parse("s3://test/releases").unwrap();

        // Replaced (a new file renamed over it, as a rebuild does) between verifying and sending.
        let verified = Verified::check(tmp.path(), &key).unwrap();
        let other = tmp.path().join("a.raw.new");
        std::fs::write(&other, vec![8u8; 3000]).unwrap();
        std::fs::rename(&other, tmp.path().join("a.raw")).unwrap();
        let store = Store::in_memory();
        let err = format!("{:#}", publish(&store, &to, &verified, &options()).unwrap_err());
        assert!(err.contains("a.raw changed since it was verified"), "{err}");
        assert_eq!(store.list("").unwrap(), Vec::new(), "something was sent");

        // The control: verified again (it fails: the content no longer matches), or untouched, it goes.
        assert!(Verified::check(tmp.path(), &key).is_err());
        let tmp = tempfile::tempdir().unwrap();
        let key = signed(tmp.path());
        let verified = Verified::check(tmp.path(), &key).unwrap();
        let report = publish(&store, &to, &verified, &options()).unwrap();
        assert_eq!(report.objects_sent, verified.publishing_order().len());
    }
}

//! One large file as a resumable multipart upload, through object_store's low-level
//! `MultipartStore` (create, put_part, complete), so that the upload id and the parts' ETags can be
//! journaled (journal.rs) and a later process can finish what an interrupted one began.
//!
//! Parts are read with positional reads on tokio's blocking pool and sent with at most `jobs` in
//! flight. At most `jobs` part buffers ever exist and are reused: with a fresh buffer per part, glibc
//! kept freed buffers in per-thread arenas and the peak memory grew to twice jobs × part size (see
//! ARCHITECTURE.md). Each part is retried by the client with backoff; a part that still fails ends
//! the upload with the journal saved, and the next run sends only the parts it does not list.

use super::client::{sha256_attribute, Backend, Store};
use super::journal::Journal;
use crate::util::progress;
use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use indicatif::ProgressBar;
use object_store::multipart::PartId;
use object_store::path::Path as Key;
use object_store::{PutMultipartOptions, PutPayload};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinSet;

/// S3's limits: parts of at least 5 MiB (but the last), at most 10,000 of them.
pub const MIN_PART_SIZE: u64 = 5 << 20;
const MAX_PARTS: u64 = 10_000;

#[derive(Clone, Copy, Debug)]
pub struct PartOptions {
    pub part_size: u64,
    /// Parts in flight at once; memory is about jobs × part size.
    pub jobs: usize,
}

/// What one file's upload sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub parts_sent: usize,
    /// Parts an earlier run had stored (from the journal), not sent again.
    pub parts_resumed: usize,
}

/// The part size for a file of `size` bytes: the requested one, raised in whole MiB where the file
/// would otherwise need more than 10,000 parts.
pub fn part_size_for(size: u64, requested: u64) -> u64 {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    requested.max(needed).max(MIN_PART_SIZE)
}

/// Uploads `path` (`size` bytes whose sha256 is `sha256`) to `key` as a multipart upload, resuming
/// the one `journal_path` records when it is for this content and destination.
#[allow(clippy::too_many_arguments)]
pub fn upload_file(
    store: &Store,
    key: &str,
    path: &Path,
    size: u64,
    sha256: &str,
    journal_path: &Path,
    options: &PartOptions,
    bar: &ProgressBar,
) -> Result<Sent> {
    let part_size = part_size_for(size, options.part_size);
    let parts = size.div_ceil(part_size).max(1) as usize;
    // Where a huge file needs bigger parts, fewer go at once: memory stays at jobs × requested size.
    let jobs = ((options.jobs as u64 * options.part_size) / part_size).max(1) as usize;
    let file = Arc::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let wanted = Journal::new(&store.endpoint, &store.bucket, key, path, size, sha256, part_size);
    let bulk = store.bulk();
    let mut journal = match Journal::load(journal_path)? {
        Some(journal) if journal.same_upload(&wanted) && !journal.upload_id.is_empty() => {
            progress::note(format!(
                "resuming the upload of {}: {} of {parts} parts are stored already (journal {})",
                store.url(key),
                journal.parts.len(),
                journal_path.display()
            ));
            journal
        }
        Some(stale) => {
            progress::note(format!(
                "{} is for other content or another part size: starting the upload of {} over",
                journal_path.display(),
                store.url(key)
            ));
            // Best effort: an abandoned upload only costs the store some space until it expires.
            let _ = store.block_on(bulk.abort_multipart(&Key::from(stale.key.as_str()), &stale.upload_id));
            begin(store, wanted.clone(), journal_path)?
        }
        None => begin(store, wanted.clone(), journal_path)?,
    };
    let mut sent = Sent { parts_resumed: journal.parts.len(), ..Sent::default() };
    let resumed_bytes: u64 = journal.parts.keys().map(|&n| part_len(n, part_size, size)).sum();
    bar.set_length(bar.length().unwrap_or(0).saturating_sub(resumed_bytes));

    let target = Key::from(key);
    let mut restarted = false;
    loop {
        let run =
            store.block_on(send_parts(&bulk, &target, &file, &mut journal, journal_path, parts, jobs, bar, &mut sent));
        match run {
            Ok(()) => break,
            // The store no longer knows the upload id (aborted, expired, or the store was reset):
            // start one new upload, once.
            Err(PartFailure::Gone(e)) if !restarted => {
                progress::note(format!(
                    "the store no longer knows upload {} of {} ({e}): starting a new upload",
                    journal.upload_id,
                    store.url(key)
                ));
                restarted = true;
                sent.parts_resumed = 0;
                journal = begin(store, wanted.clone(), journal_path)?;
            }
            Err(PartFailure::Gone(e)) => return Err(store.failure("uploading", key, e)),
            Err(PartFailure::Failed(e)) => {
                return Err(e.context(format!(
                    "uploading {} ({} of {parts} parts stored; the next run resumes from {})",
                    store.url(key),
                    journal.parts.len(),
                    journal_path.display()
                )))
            }
        }
    }

    let ids: Vec<PartId> = (1..=parts).map(|n| PartId { content_id: journal.parts[&n].clone() }).collect();
    if let Err(e) = store.block_on(bulk.complete_multipart(&target, &journal.upload_id, ids)) {
        // A run that completed the upload and died before removing the journal leaves the object in
        // place: with this size and digest, it is done.
        let present = store.head(key)?;
        if !present.is_some_and(|h| h.size == size && h.sha256.as_deref() == Some(sha256)) {
            return Err(store.failure("completing the multipart upload of", key, e));
        }
        progress::note(format!("{} was completed by an earlier run", store.url(key)));
    }
    Journal::remove(journal_path)?;
    Ok(sent)
}

/// Creates the upload (with the sha256 as object metadata) and journals its id.
fn begin(store: &Store, mut journal: Journal, journal_path: &Path) -> Result<Journal> {
    let options = PutMultipartOptions { attributes: sha256_attribute(&journal.sha256), ..Default::default() };
    journal.upload_id = store
        .block_on(store.bulk().create_multipart_opts(&Key::from(journal.key.as_str()), options))
        .map_err(|e| store.failure("starting a multipart upload of", &journal.key, e))?;
    journal.save(journal_path)?;
    Ok(journal)
}

fn part_len(number: usize, part_size: u64, size: u64) -> u64 {
    let offset = (number as u64 - 1) * part_size;
    part_size.min(size.saturating_sub(offset))
}

enum PartFailure {
    /// The store does not know the upload id.
    Gone(object_store::Error),
    Failed(anyhow::Error),
}

/// Sends every part the journal does not list, saving the journal after each one.
#[allow(clippy::too_many_arguments)]
async fn send_parts(
    bulk: &Arc<dyn Backend>,
    key: &Key,
    file: &Arc<std::fs::File>,
    journal: &mut Journal,
    journal_path: &Path,
    parts: usize,
    jobs: usize,
    bar: &ProgressBar,
    sent: &mut Sent,
) -> Result<(), PartFailure> {
    type Done = (usize, object_store::Result<PartId>, Bytes);
    let (size, part_size) = (journal.size, journal.part_size);
    let mut in_flight: JoinSet<Done> = JoinSet::new();
    let mut buffers: Vec<BytesMut> = Vec::new();
    let mut failure: Option<PartFailure> = None;
    let mut finish = |done: Result<Done, tokio::task::JoinError>,
                      journal: &mut Journal,
                      buffers: &mut Vec<BytesMut>,
                      failure: &mut Option<PartFailure>| {
        let (number, result, data) = match done {
            Ok(done) => done,
            Err(e) => {
                failure.get_or_insert(PartFailure::Failed(anyhow!("a part upload task failed: {e}")));
                return;
            }
        };
        // The client holds no clone of the payload any more: take the buffer back.
        if let Ok(buffer) = data.try_into_mut() {
            buffers.push(buffer);
        }
        match result {
            Ok(id) => {
                journal.parts.insert(number, id.content_id);
                if let Err(e) = journal.save(journal_path) {
                    failure.get_or_insert(PartFailure::Failed(e));
                }
                let len = part_len(number, part_size, size);
                sent.bytes += len;
                sent.parts_sent += 1;
                bar.inc(len);
            }
            Err(e @ object_store::Error::NotFound { .. }) => {
                failure.get_or_insert(PartFailure::Gone(e));
            }
            Err(e) => {
                failure.get_or_insert(PartFailure::Failed(anyhow!("part {number} of {parts}: {e}")));
            }
        }
    };

    for number in 1..=parts {
        if journal.parts.contains_key(&number) {
            continue;
        }
        while in_flight.len() >= jobs.max(1) {
            let done = in_flight.join_next().await.expect("a part is in flight");
            finish(done, journal, &mut buffers, &mut failure);
        }
        if failure.is_some() {
            break;
        }
        let offset = (number as u64 - 1) * part_size;
        let len = part_len(number, part_size, size) as usize;
        let mut buffer = buffers.pop().unwrap_or_else(|| BytesMut::with_capacity(part_size as usize));
        let reader = file.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            buffer.resize(len, 0);
            reader.read_exact_at(&mut buffer, offset)?;
            Ok(buffer.freeze())
        })
        .await;
        let data = match read {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => {
                failure =
                    Some(PartFailure::Failed(anyhow!("reading part {number} of {}: {e}", journal.file.display())));
                break;
            }
            Err(e) => {
                failure = Some(PartFailure::Failed(anyhow!("reading part {number}: {e}")));
                break;
            }
        };
        let (bulk, key, id) = (bulk.clone(), key.clone(), journal.upload_id.clone());
        // object_store numbers parts from 0 and sends partNumber = index + 1.
        in_flight.spawn(async move {
            let result = bulk.put_part(&key, &id, number - 1, PutPayload::from(data.clone())).await;
            (number, result, data)
        });
    }
    while let Some(done) = in_flight.join_next().await {
        finish(done, journal, &mut buffers, &mut failure);
    }
    match failure {
        Some(failure) => Err(failure),
        None if journal.parts.len() == parts => Ok(()),
        None => Err(PartFailure::Failed(anyhow!("{} of {parts} parts stored", journal.parts.len()))),
    }
}

/// A file's size, modification time and inode: what changes when it is rewritten or replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl Stamp {
    pub fn of(path: &Path) -> Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).with_context(|| format!("reading the metadata of {}", path.display()))?;
        Ok(Stamp { len: meta.len(), modified: meta.modified().ok(), inode: meta.ino() })
    }
}

/// Checks that nothing changed the file since `before` was taken (`since`: "it was verified").
pub fn unchanged_since(path: &Path, before: &Stamp, since: &str) -> Result<()> {
    if Stamp::of(path)? != *before {
        bail!(
            "{} changed since {since}: what was verified is no longer what would be sent; sign and run the upload \
             again",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size_for(1 << 30, 8 << 20), 8 << 20);
        assert_eq!(part_size_for(100, 1), MIN_PART_SIZE);
        let huge = 200u64 << 30;
        let size = part_size_for(huge, 8 << 20);
        assert!(huge.div_ceil(size) <= MAX_PARTS && size.is_multiple_of(1 << 20));
    }

    #[test]
    fn an_interrupted_upload_resumes_without_resending_its_parts() {
        let store = Store::in_memory();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.raw");
        let content: Vec<u8> = (0..(12u64 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let sha256 = crate::util::digest::sha256_file(&path).unwrap();
        let journal = dir.path().join("j/a.raw.json");
        let options = PartOptions { part_size: MIN_PART_SIZE, jobs: 2 };
        let bar = ProgressBar::hidden();
        let size = content.len() as u64;

        // A run that stored part 1 only: begin, send one part, journal it.
        let mut first =
            begin(&store, Journal::new("memory", "test", "k/a.raw", &path, size, &sha256, MIN_PART_SIZE), &journal)
                .unwrap();
        let part = store
            .block_on(store.bulk().put_part(
                &Key::from("k/a.raw"),
                &first.upload_id,
                0,
                PutPayload::from(content[..5 << 20].to_vec()),
            ))
            .unwrap();
        first.parts.insert(1, part.content_id);
        first.save(&journal).unwrap();

        let sent = upload_file(&store, "k/a.raw", &path, size, &sha256, &journal, &options, &bar).unwrap();
        assert_eq!(sent, Sent { bytes: size - (5 << 20), parts_sent: 2, parts_resumed: 1 });
        assert!(!journal.exists());
        let (bytes, _) = store.get("k/a.raw").unwrap().unwrap();
        assert_eq!(bytes.as_ref(), &content[..]);
        assert_eq!(store.head("k/a.raw").unwrap().unwrap().sha256.as_deref(), Some(sha256.as_str()));

        // A journal for other content is stale: the whole file goes again.
        let mut stale = Journal::new("memory", "test", "k/a.raw", &path, size, &"0".repeat(64), MIN_PART_SIZE);
        stale.upload_id = "gone".into();
        stale.save(&journal).unwrap();
        let sent = upload_file(&store, "k/a.raw", &path, size, &sha256, &journal, &options, &bar).unwrap();
        assert_eq!((sent.parts_sent, sent.parts_resumed), (3, 0));
    }
}

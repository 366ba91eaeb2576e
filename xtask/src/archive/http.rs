//! HTTP downloads from a Debian mirror. Every error names the URL and, when the mirror could not be
//! reached at all, says how to point xtask at another one. A 404 is its own error type ([`NotFound`])
//! so callers can explain what a missing file means for them (a stale lock, an old snapshot).

use anyhow::Result;
use indicatif::ProgressBar;
use std::fmt;
use std::io::{Read, Seek, Write};
use std::sync::OnceLock;
use std::time::Duration;

/// Transient failures (5xx, timeouts, a connection dropped mid-body) are retried this many times.
const RETRIES: u32 = 2;

/// The server answered 404 (or 410): the file is not on this mirror.
#[derive(Debug)]
pub struct NotFound {
    pub url: String,
    pub status: u16,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: HTTP {} (not on the mirror)", self.url, self.status)
    }
}

impl std::error::Error for NotFound {}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .user_agent(concat!("cargo-xtask/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // An idle connection is a dead mirror; a slow but moving one is fine.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build()
            .into()
    })
}

/// What to tell the user when the mirror itself cannot be reached.
fn unreachable_hint() -> &'static str {
    "is the archive reachable? Point --suite-mirror SUITE=URL (XTASK_SUITE_MIRRORS) or --mirror \
     (XTASK_DEBIAN_MIRROR) at a reachable Debian archive"
}

enum Attempt {
    Fatal(anyhow::Error),
    Retry(anyhow::Error),
}

fn classify(url: &str, err: ureq::Error) -> Attempt {
    match err {
        ureq::Error::StatusCode(status @ (404 | 410)) => {
            Attempt::Fatal(NotFound { url: url.to_string(), status }.into())
        }
        ureq::Error::StatusCode(status) if status >= 500 => {
            Attempt::Retry(anyhow::anyhow!("cannot download {url}: HTTP {status}"))
        }
        ureq::Error::StatusCode(status) => Attempt::Fatal(anyhow::anyhow!("cannot download {url}: HTTP {status}")),
        // Refused connections and unknown hosts do not heal in a second: fail at once.
        err @ (ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::BadUri(_)) => {
            Attempt::Fatal(anyhow::anyhow!("cannot download {url}: {err}; {}", unreachable_hint()))
        }
        // Only a dropped connection is worth another try; refused connections and failed name
        // lookups (which arrive as plain I/O errors) are not.
        ureq::Error::Io(io)
            if !matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Attempt::Fatal(anyhow::anyhow!("cannot download {url}: {io}; {}", unreachable_hint()))
        }
        err => Attempt::Retry(anyhow::anyhow!("cannot download {url}: {err}; {}", unreachable_hint())),
    }
}

fn with_retries<T>(url: &str, mut attempt: impl FnMut() -> std::result::Result<T, Attempt>) -> Result<T> {
    let mut tries = 0;
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(Attempt::Fatal(err)) => return Err(err),
            Err(Attempt::Retry(err)) if tries >= RETRIES => {
                return Err(err.context(format!("gave up on {url} after {} attempts", tries + 1)))
            }
            Err(Attempt::Retry(_)) => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(u64::from(tries)));
            }
        }
    }
}

/// Downloads a whole (small) file into memory.
pub fn get_bytes(url: &str) -> Result<Vec<u8>> {
    with_retries(url, || {
        let mut response = agent().get(url).call().map_err(|e| classify(url, e))?;
        let mut body = Vec::new();
        response
            .body_mut()
            .as_reader()
            .read_to_end(&mut body)
            .map_err(|e| Attempt::Retry(anyhow::anyhow!("reading {url}: {e}")))?;
        Ok(body)
    })
}

/// Downloads `url` into `file` (truncated first), advancing `bar` by the bytes received; returns the
/// number of bytes written. More than `max_bytes` is an error (a server streaming something else
/// must not fill the disk); the caller checks the exact size and the digest.
pub fn download_to_file(url: &str, file: &mut std::fs::File, max_bytes: u64, bar: &ProgressBar) -> Result<u64> {
    with_retries(url, || {
        file.set_len(0).and_then(|()| file.rewind()).map_err(|e| Attempt::Fatal(anyhow::anyhow!("{e}")))?;
        let mut response = agent().get(url).call().map_err(|e| classify(url, e))?;
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut written = 0u64;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.dec(written);
                    return Err(Attempt::Retry(anyhow::anyhow!("reading {url}: {e}")));
                }
            };
            file.write_all(&buffer[..n])
                .map_err(|e| Attempt::Fatal(anyhow::anyhow!("writing the download of {url}: {e}")))?;
            written += n as u64;
            if written > max_bytes {
                bar.dec(written - n as u64);
                return Err(Attempt::Fatal(anyhow::anyhow!(
                    "downloading {url}: the server sent more than the expected {max_bytes} bytes"
                )));
            }
            bar.inc(n as u64);
        }
        file.flush().map_err(|e| Attempt::Fatal(anyhow::anyhow!("writing the download of {url}: {e}")))?;
        Ok(written)
    })
}

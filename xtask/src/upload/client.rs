//! The connection to an S3-compatible store: object_store's S3 client driven by one current-thread
//! tokio runtime, behind a small synchronous API the rest of the stage uses.
//!
//! Two clients share the credentials: one for small requests (HEAD, GET, LIST, small PUTs) with the
//! per-request timeout, one for multipart parts with ten times as long, since object_store's timeout
//! covers the whole body. Retries back off from 500 ms by a factor of 3 up to 15 s (object_store's
//! own 100 ms doubling spends ten retries in about two seconds, less than a server restart takes).
//! Credentials come from profile.rs and are always given to the client outright, so it never falls
//! back to the cloud's instance metadata address.

use super::profile::{self, Settings};
use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientConfigKey, GetOptions, ObjectStore, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use std::sync::Arc;
use std::time::Duration;

/// The user metadata key holding an object's sha256 (x-amz-meta-sha256). Multipart ETags and S3's
/// own checksums of multipart objects are not a digest of the file, so the digest is stored outright.
pub const SHA256_METADATA: &str = "sha256";

/// AWS's default region, used when nothing names one.
const DEFAULT_REGION: &str = "us-east-1";

/// How to reach the store; unset fields come from the environment or the shared profile.
#[derive(Clone, Debug)]
pub struct Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Per-request timeout of small requests; each multipart part gets ten times as long.
    pub timeout: Duration,
    /// Retries per request, with backoff.
    pub retries: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { endpoint: None, region: None, timeout: Duration::from_secs(30), retries: 10 }
    }
}

/// What the stage needs of a store: objects, and multipart uploads another process can finish.
pub trait Backend: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Backend for T {}

pub struct Store {
    runtime: Arc<tokio::runtime::Runtime>,
    control: Arc<dyn Backend>,
    bulk: Arc<dyn Backend>,
    pub bucket: String,
    /// Where the store is, for messages and journals: "http://127.0.0.1:3900".
    pub endpoint: String,
    pub region: String,
    /// Where the credentials came from, for messages (never the credentials).
    pub credentials_from: String,
}

/// An object's size and the sha256 stored with it.
#[derive(Clone, Debug)]
pub struct Head {
    pub size: u64,
    pub sha256: Option<String>,
}

/// The outcome of a conditional put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// The condition failed: someone else wrote first.
    Conflict,
}

fn runtime() -> Result<Arc<tokio::runtime::Runtime>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime for object storage")?;
    Ok(Arc::new(runtime))
}

impl Store {
    /// Connects to `bucket` (no request is sent yet).
    pub fn connect(bucket: &str, options: &Options) -> Result<Store> {
        let settings = profile::resolve(&|name| std::env::var(name).ok())?;
        Store::with_settings(bucket, options, &settings)
    }

    /// Connects to `bucket` with settings resolved already.
    pub fn with_settings(bucket: &str, options: &Options, settings: &Settings) -> Result<Store> {
        let endpoint = options.endpoint.clone().or_else(|| settings.endpoint.clone());
        let region = options.region.clone().or_else(|| settings.region.clone()).unwrap_or(DEFAULT_REGION.to_string());
        let build = |timeout: Duration| -> Result<Arc<dyn Backend>> {
            let credentials = &settings.credentials;
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_region(&region)
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(credentials.secret_access_key.expose())
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(500),
                        max_backoff: Duration::from_secs(15),
                        base: 3.0,
                    },
                    max_retries: options.retries,
                    retry_timeout: Duration::from_secs(180),
                })
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), format!("{}ms", timeout.as_millis()))
                .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), "5s");
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token.expose());
            }
            if let Some(endpoint) = &endpoint {
                // Path-style requests (http://host/BUCKET/KEY): S3-compatible stores need no DNS name
                // per bucket that way.
                builder = builder
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            Ok(Arc::new(builder.build().context("configuring the S3 client")?))
        };
        Ok(Store {
            runtime: runtime()?,
            control: build(options.timeout)?,
            bulk: build(options.timeout * 10)?,
            bucket: bucket.to_string(),
            endpoint: endpoint.unwrap_or_else(|| format!("AWS S3 ({region})")),
            region,
            credentials_from: settings.credentials_from.clone(),
        })
    }

    /// A store in memory, for unit tests of the logic above the client.
    #[cfg(test)]
    pub fn in_memory() -> Store {
        let memory: Arc<dyn Backend> = Arc::new(object_store::memory::InMemory::new());
        Store {
            runtime: runtime().unwrap(),
            control: memory.clone(),
            bulk: memory,
            bucket: "test".into(),
            endpoint: "memory".into(),
            region: "none".into(),
            credentials_from: "nowhere".into(),
        }
    }

    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The client for multipart parts (long timeout).
    pub fn bulk(&self) -> Arc<dyn Backend> {
        self.bulk.clone()
    }

    /// Checks that the bucket answers under these credentials: lists `prefix` (one request).
    pub fn check(&self, prefix: &str) -> Result<()> {
        let listed = self.block_on(self.control.list_with_delimiter(Some(&Key::from(prefix))));
        listed.map(drop).map_err(|e| {
            let missing = matches!(e, object_store::Error::NotFound { .. }) || e.to_string().contains("NoSuchBucket");
            let (chain, hint) = explain(e);
            let hint = match missing {
                true => format!(": bucket {} does not exist at {}", self.bucket, self.endpoint),
                false => hint.map(|h| format!(" ({h})")).unwrap_or_default(),
            };
            anyhow!("cannot list {} at {}: {chain}{hint}", self.url(prefix), self.endpoint)
        })
    }

    /// An object's size and stored sha256, or None when it does not exist.
    pub fn head(&self, key: &str) -> Result<Option<Head>> {
        // A plain HEAD does not return user metadata in object_store; get_opts with `head` does.
        let options = GetOptions { head: true, ..Default::default() };
        match self.block_on(self.control.get_opts(&Key::from(key), options)) {
            Ok(got) => Ok(Some(Head {
                size: got.meta.size,
                sha256: got.attributes.get(&Attribute::Metadata(SHA256_METADATA.into())).map(|v| v.to_string()),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure("reading the metadata of", key, e)),
        }
    }

    /// A small object's bytes and version, or None when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<(Bytes, UpdateVersion)>> {
        let result = self.block_on(async {
            let got = self.control.get_opts(&Key::from(key), GetOptions::default()).await?;
            let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
            Ok((got.bytes().await?, version))
        });
        match result {
            Ok(got) => Ok(Some(got)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failure("reading", key, e)),
        }
    }

    /// Puts a small object with its sha256 as metadata. A failed condition is [`Written::Conflict`].
    pub fn put(&self, key: &str, bytes: Bytes, sha256: &str, mode: PutMode) -> Result<Written> {
        let options = PutOptions { mode, attributes: sha256_attribute(sha256), ..Default::default() };
        match self.block_on(self.control.put_opts(&Key::from(key), PutPayload::from(bytes), options)) {
            Ok(_) => Ok(Written::Done),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Written::Conflict)
            }
            Err(e) => Err(self.failure("uploading", key, e)),
        }
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let one = futures_util::stream::once(std::future::ready(Ok(Key::from(key)))).boxed();
        let deleted: Vec<object_store::Result<Key>> = self.block_on(self.control.delete_stream(one).collect());
        match deleted.into_iter().next() {
            None | Some(Ok(_)) | Some(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Some(Err(e)) => Err(self.failure("deleting", key, e)),
        }
    }

    /// Every object under `prefix/`, as (name relative to the prefix, size), sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let key = Key::from(prefix);
        let listed: Vec<object_store::Result<object_store::ObjectMeta>> =
            self.block_on(self.control.list(Some(&key)).collect());
        let mut names = Vec::new();
        for meta in listed {
            let meta = meta.map_err(|e| self.failure("listing", prefix, e))?;
            let full = meta.location.to_string();
            let name = full.strip_prefix(prefix).unwrap_or(&full).trim_start_matches('/').to_string();
            names.push((name, meta.size));
        }
        names.sort();
        Ok(names)
    }

    /// A reader streaming an object once, chunk by chunk (nothing is stored on disk).
    pub fn reader(&self, key: &str) -> std::io::Result<ObjectReader> {
        let got = self.block_on(self.control.get_opts(&Key::from(key), GetOptions::default()));
        let got = got.map_err(std::io::Error::from)?;
        Ok(ObjectReader { runtime: self.runtime.clone(), stream: got.into_stream(), chunk: Bytes::new() })
    }

    /// The error for a failed request on `key`, with a hint where the cause is clear.
    pub fn failure(&self, doing: &str, key: &str, e: object_store::Error) -> anyhow::Error {
        let (chain, hint) = explain(e);
        let hint = hint.map(|h| format!(" ({h})")).unwrap_or_default();
        anyhow!("cannot finish {doing} {} at {}: {chain}{hint}", self.url(key), self.endpoint)
    }
}

/// The error with its causes, and what to do about it where the cause is clear.
fn explain(e: object_store::Error) -> (String, Option<&'static str>) {
    let refused =
        matches!(e, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. });
    let chain = format!("{:#}", anyhow::Error::new(e));
    let has = |marks: &[&str]| marks.iter().any(|m| chain.contains(m));
    let hint = if refused || has(&["403 Forbidden", "401 Unauthorized", "InvalidAccessKeyId", "SignatureDoesNotMatch"])
    {
        Some("the store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile")
    } else if has(&["AuthorizationHeaderMalformed"]) {
        Some("the store expects another region: pass --region or set AWS_REGION")
    } else if has(&["timed out", "Timeout"]) {
        Some("the endpoint did not answer in time: see --timeout and --retries")
    } else if has(&["Connection refused", "error sending request", "dns error"]) {
        Some("the endpoint does not answer")
    } else {
        None
    };
    (chain, hint)
}

pub fn sha256_attribute(sha256: &str) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata(SHA256_METADATA.into()), sha256.to_string().into());
    attributes
}

/// An object's bytes as a blocking reader: each `read` drives the runtime for the next chunk.
pub struct ObjectReader {
    runtime: Arc<tokio::runtime::Runtime>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
}

impl std::io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                Some(chunk) => self.chunk = chunk.map_err(std::io::Error::from)?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

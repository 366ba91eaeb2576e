//! The stage cache's shared store (util/stage_cache.rs): its entries under `s3://BUCKET/PREFIX/`,
//! through the same client as the uploads. Short timeouts and few retries: a store that does not
//! answer must cost a build seconds, not minutes, before it falls back to building.

use super::client::{Options, Store};
use super::location::Location;
use super::profile;
use crate::util::stage_cache::Remote;
use anyhow::Result;
use object_store::PutMode;
use std::time::Duration;

pub struct S3StageCache {
    store: Store,
    location: Location,
}

impl S3StageCache {
    /// Connects (no request yet) to the bucket of `url`, `s3://BUCKET/PREFIX`; credentials, endpoint
    /// and region come from the environment or the shared profile, as for `upload`.
    pub fn connect(url: &str) -> Result<S3StageCache> {
        S3StageCache::connect_with(url, &|name| std::env::var(name).ok())
    }

    /// The same, with `env` read for the settings instead of the process's environment (bench
    /// points it at its own Garage node).
    pub fn connect_with(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<S3StageCache> {
        let location = Location::parse(url)?;
        let options = Options { timeout: Duration::from_secs(10), retries: 1, ..Options::default() };
        let store = Store::with_settings(&location.bucket, &options, &profile::resolve(env)?)?;
        Ok(S3StageCache { store, location })
    }
}

impl Remote for S3StageCache {
    fn describe(&self) -> String {
        self.location.display()
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get(&self.location.key(key))?.map(|(bytes, _)| bytes.to_vec()))
    }

    fn put(&self, key: &str, bytes: Vec<u8>, sha256: &str) -> Result<()> {
        self.store.put(&self.location.key(key), bytes.into(), sha256, PutMode::Overwrite)?;
        Ok(())
    }
}

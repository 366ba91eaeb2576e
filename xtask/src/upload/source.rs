//! A release where it lies in a bucket, as a verification source (sign/source.rs's trait): one LIST
//! for the names and sizes, and each object streamed once through the hashes, never stored on disk.
//! The prefix holds the release alone, so anything there that the index does not name is reported.

use super::client::Store;
use super::location::Location;
use crate::sign::source::Source;
use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Read;

pub struct Release<'a> {
    store: &'a Store,
    location: Location,
    /// Name (relative to the prefix) → size.
    listing: BTreeMap<String, u64>,
}

impl<'a> Release<'a> {
    /// Lists the release at `location` (`s3://BUCKET/PREFIX/<image>/<version>/<arch>/`).
    pub fn open(store: &'a Store, location: Location) -> Result<Release<'a>> {
        store.check(&location.prefix)?;
        let listing = store.list(&location.prefix)?.into_iter().collect();
        Ok(Release { store, location, listing })
    }
}

impl Source for Release<'_> {
    fn location(&self) -> String {
        self.location.display()
    }

    fn path(&self, name: &str) -> String {
        self.location.url(name)
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn absent(&self) -> Option<String> {
        self.listing.is_empty().then(|| format!("nothing is stored under this prefix at {}", self.store.endpoint))
    }

    fn names(&self) -> std::io::Result<Vec<String>> {
        Ok(self.listing.keys().cloned().collect())
    }

    fn size(&self, name: &str) -> std::io::Result<u64> {
        self.listing.get(name).copied().ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn open(&self, name: &str) -> std::io::Result<Box<dyn Read + Send + '_>> {
        if !self.listing.contains_key(name) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        Ok(Box::new(self.store.reader(&self.location.key(name))?))
    }
}

//! Where things go in the bucket. One layout, spelled here once:
//!
//! ```text
//! s3://BUCKET/PREFIX/<image>/<version>/<arch>/<file>      a release: artifacts, signatures, index.json
//! s3://BUCKET/PREFIX/<image>/channels/<channel>.json      the channel pointer: latest version per arch
//! ```

use crate::spec::names::valid_name;
use crate::spec::Arch;
use anyhow::{bail, ensure, Result};

/// The URL scheme of a destination.
pub const SCHEME: &str = "s3://";
/// The folder of an image's channel pointers (so no version may be called that).
const CHANNELS: &str = "channels";

/// A bucket and a key prefix: `s3://BUCKET/PREFIX` (the prefix may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub bucket: String,
    /// Without leading or trailing slashes.
    pub prefix: String,
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX][/]`.
    pub fn parse(url: &str) -> Result<Location> {
        let Some(rest) = url.strip_prefix(SCHEME) else {
            bail!("{url:?} is not an s3:// URL (expected s3://BUCKET/PREFIX)");
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules, which every S3-compatible store accepts.
        ensure!(
            (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']),
            "{url:?}: {bucket:?} is not a valid bucket name (3 to 63 characters: a-z, 0-9, '-' and '.')"
        );
        let prefix = prefix.trim_end_matches('/');
        for segment in prefix.split('/').filter(|_| !prefix.is_empty()) {
            check_segment(segment).map_err(|e| e.context(format!("{url:?}: the prefix")))?;
        }
        Ok(Location { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// The object key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// The URL of `name` under the prefix, for messages.
    pub fn url(&self, name: &str) -> String {
        format!("{SCHEME}{}/{}", self.bucket, self.key(name))
    }

    /// The location itself, as a URL with a trailing slash.
    pub fn display(&self) -> String {
        if self.prefix.is_empty() {
            format!("{SCHEME}{}/", self.bucket)
        } else {
            format!("{SCHEME}{}/{}/", self.bucket, self.prefix)
        }
    }

    /// Where one release of `image` lies: `PREFIX/<image>/<version>/<arch>/`.
    pub fn release(&self, image: &str, version: &str, arch: Arch) -> Result<Location> {
        check_segment(image).map_err(|e| e.context("the image name"))?;
        check_segment(version).map_err(|e| e.context("the version"))?;
        ensure!(version != CHANNELS, "a version cannot be called {CHANNELS:?}: the channel pointers live there");
        Ok(Location { bucket: self.bucket.clone(), prefix: self.key(&format!("{image}/{version}/{arch}")) })
    }

    /// The key of `image`'s pointer for `channel`: `PREFIX/<image>/channels/<channel>.json`.
    pub fn channel_key(&self, image: &str, channel: &str) -> Result<String> {
        check_segment(image).map_err(|e| e.context("the image name"))?;
        ensure!(valid_name(channel), "channel {channel:?} must be lowercase letters, digits, '-' and '_'");
        Ok(self.key(&format!("{image}/{CHANNELS}/{channel}.json")))
    }

    /// The key where the conditional-put probe writes, beside the channel pointers (a dot name no
    /// reader takes for a channel). `tag` makes it unique to one run.
    pub fn probe_key(&self, image: &str, tag: &str) -> String {
        self.key(&format!("{image}/{CHANNELS}/.conditional-put-probe-{tag}"))
    }
}

/// One path segment that every store keeps as it is: no empty, dot or slash segments, printable
/// ASCII that needs no escaping.
fn check_segment(segment: &str) -> Result<()> {
    ensure!(
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'~')),
        "{segment:?} is not a plain path segment (letters, digits, '-', '_', '.', '+', '~')"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let to = Location::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!((to.bucket.as_str(), to.prefix.as_str()), ("my-bucket", "a/b"));
        let release = to.release("node", "0.1.0", Arch::Arm64).unwrap();
        assert_eq!(release.url("index.json"), "s3://my-bucket/a/b/node/0.1.0/arm64/index.json");
        assert_eq!(to.channel_key("node", "stable").unwrap(), "a/b/node/channels/stable.json");
        assert_eq!(Location::parse("s3://bkt").unwrap().key("x"), "x");
        for bad in ["bkt/x", "s3://B/x", "s3://ab", "s3://bkt/a//b", "s3://bkt/a/../b", "s3://bkt/a b"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        assert!(to.release("node", "channels", Arch::Amd64).is_err());
        assert!(to.channel_key("node", "Stable").is_err());
    }
}

//! `cargo xtask upload`: publishes a signed output directory to S3-compatible object storage
//! (upload/publish.rs), and the store and publishing flags `verify` and `release` share.

use super::{print_json, BoardDir, Global};
use crate::sign::minisign::PublicKey;
use crate::upload::client::{self, Store};
use crate::upload::location::Location;
use crate::upload::multipart::{PartOptions, MIN_PART_SIZE};
use crate::upload::publish::{self, Action, Report, Verified};
use anyhow::{ensure, Result};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the store.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The store's S3 endpoint, for anything but AWS S3 (Garage, MinIO, Ceph, R2) [default:
    /// AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url; else AWS S3]
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// The store's region [default: AWS_REGION, AWS_DEFAULT_REGION, the profile's region; else us-east-1]
    #[arg(long)]
    pub region: Option<String>,
    /// Seconds one small request may take; each multipart part may take ten times as long
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    /// Retries of a failed request, backing off from 0.5 s by ×3 up to 15 s
    #[arg(long, default_value_t = 10)]
    pub retries: usize,
}

impl StoreArgs {
    /// Connects to the bucket of `to`. Credentials come from the environment or the shared profile.
    pub fn connect(&self, to: &Location) -> Result<Store> {
        let options = client::Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            timeout: Duration::from_secs(self.timeout.max(1)),
            retries: self.retries,
        };
        Store::connect(&to.bucket, &options)
    }
}

/// How to publish (shared with `release`).
#[derive(clap::Args, Debug, Clone)]
pub struct PublishArgs {
    /// The channel whose pointer (PREFIX/<image>/channels/<channel>.json) names this release last
    #[arg(long, default_value = "stable")]
    pub channel: String,
    /// List what would be sent and what is there already; send nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Where the store ignores conditional puts (Garage does), update the channel pointer by
    /// read-modify-write, reading it back and writing again if another release overwrote our entry.
    /// A weaker guarantee than If-Match; without this flag such a store is refused
    #[arg(long)]
    pub no_conditional: bool,
    /// Let the channel point this arch at an older version than it does
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Multipart part size in MiB (at least 5); memory use is about part size × jobs
    #[arg(long, value_name = "MiB", default_value_t = 8)]
    pub part_size: u64,
    /// Multipart parts in flight at once
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl PublishArgs {
    pub fn options(&self) -> Result<publish::Options> {
        ensure!(self.part_size << 20 >= MIN_PART_SIZE, "--part-size must be at least 5 (MiB), S3's smallest part");
        ensure!(self.jobs >= 1, "--jobs must be at least 1");
        Ok(publish::Options {
            channel: self.channel.clone(),
            parts: PartOptions { part_size: self.part_size << 20, jobs: self.jobs },
            dry_run: self.dry_run,
            no_conditional: self.no_conditional,
            allow_downgrade: self.allow_downgrade,
            settle: Duration::from_secs(2),
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    /// Where to publish: s3://BUCKET/PREFIX; the release goes to PREFIX/<image>/<version>/<arch>/
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub to: String,
    /// Public key the directory must verify against before anything is sent (minisign format)
    #[arg(long, value_name = "KEY.pub")]
    pub key: PathBuf,
    #[command(flatten)]
    pub target: BoardDir,
    /// Signed directory to publish, instead of the board's out/<board>/
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(flatten)]
    pub publish: PublishArgs,
}

pub fn run(global: &Global, args: &UploadArgs) -> Result<()> {
    let dir = args.target.resolve(global, args.dir.as_deref())?;
    let options = args.publish.options()?;
    let to = Location::parse(&args.to)?;
    let key = PublicKey::load(&args.key)?;
    let verified = Verified::check(&dir, &key)?;
    let store = args.publish.store.connect(&to)?;
    let report = publish::publish(&store, &to, &verified, &options)?;
    if global.json {
        return print_json(&report);
    }
    print_summary(&report);
    Ok(())
}

pub fn print_summary(report: &Report) {
    for object in &report.objects {
        let what = match object.action {
            Action::Sent if object.parts_resumed > 0 => {
                format!("sent (resumed: {} parts were stored already)", object.parts_resumed)
            }
            Action::Sent => "sent".to_string(),
            Action::Skipped => "already there".to_string(),
            Action::WouldSend => "would send".to_string(),
            Action::WouldSkip => "already there".to_string(),
        };
        println!("  {:<13} {:>13} bytes  {}", what, object.size, object.url);
    }
    let mb = report.bytes_sent as f64 / 1e6;
    if report.dry_run {
        let to_send = report.objects.iter().filter(|o| o.action == Action::WouldSend);
        let (count, bytes) = to_send.fold((0, 0), |(n, b), o| (n + 1, b + o.size));
        println!(
            "dry run: {count} objects ({:.1} MB) would be sent to {}, {} are there already; nothing was sent",
            bytes as f64 / 1e6,
            report.release,
            report.objects.len() - count
        );
        return;
    }
    println!(
        "published {} {} {} to {}: {} objects sent ({mb:.1} MB, {:.1} MB/s), {} already there, in {:.1} s",
        report.image,
        report.version,
        report.arch,
        report.release,
        report.objects_sent,
        mb / report.seconds.max(1e-3),
        report.objects_skipped,
        report.seconds
    );
    if let Some(channel) = &report.channel {
        let was = channel.previous.as_ref().map_or("nothing".to_string(), |p| p.version.clone());
        let how =
            if channel.unchanged { "unchanged".to_string() } else { format!("was {was}; {}", report.pointer_update) };
        println!("  channel pointer {}: {} → {} ({how})", channel.url, report.arch, channel.entry.version);
    }
}

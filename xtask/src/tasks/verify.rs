//! `cargo xtask verify`: checks a signed release against a public key (needs nothing but the release
//! and the key): a directory here, or `s3://…` where it lies in a bucket, with the same checks.

use super::upload::StoreArgs;
use super::{BoardDir, Global};
use crate::sign::minisign::PublicKey;
use crate::sign::source::{Dir, Source};
use crate::sign::verify::{verify, Report};
use crate::upload::location::{Location, SCHEME};
use crate::upload::source::Release;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Public key to check against (minisign format, e.g. nodeimg.pub)
    #[arg(long, value_name = "KEY.pub")]
    pub key: PathBuf,
    #[command(flatten)]
    pub target: BoardDir,
    /// Signed directory to verify (needs nothing else: works on a copy anywhere), or a published
    /// release where it lies: s3://BUCKET/PREFIX/<image>/<version>/<arch>/ (each object streamed once)
    #[arg(value_name = "DIR|s3://…")]
    pub dir: Option<String>,
    /// For s3:// releases: how to reach the store
    #[command(flatten)]
    pub store: StoreArgs,
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn run(global: &Global, args: &VerifyArgs) -> Result<()> {
    let remote = args.dir.as_deref().filter(|d| d.starts_with(SCHEME));
    let setup = (|| {
        let key = PublicKey::load(&args.key)?;
        let location = remote.map(Location::parse).transpose()?;
        let dir = match remote {
            Some(_) => None,
            None => Some(args.target.resolve(global, args.dir.as_deref().map(std::path::Path::new))?),
        };
        let store = location.as_ref().map(|l| args.store.connect(l)).transpose()?;
        Ok::<_, anyhow::Error>((key, location, dir, store))
    })();
    let (key, location, dir, store) = match setup {
        Ok(setup) => setup,
        Err(e) => {
            if global.json {
                let mut report = Report::default();
                report.problem(&args.key.display().to_string(), format!("{e:#}"));
                println!("{}", serde_json::to_string(&report)?);
            }
            return Err(e);
        }
    };
    let source: Box<dyn Source> = match (&store, location, &dir) {
        (Some(store), Some(location), _) => Box::new(Release::open(store, location)?),
        (_, _, Some(dir)) => Box::new(Dir::new(dir)),
        _ => bail!("say what to verify: DIR, s3://…, or --arch/--board"),
    };
    let report = verify(source.as_ref(), &key);
    if global.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for file in &report.files {
            eprintln!("  ok  {}  ({}, sha256 {})", file.file, human_size(file.size), file.sha256);
        }
    }
    if !report.ok {
        let problems = report.problem_lines();
        bail!(
            "verification of {} with key id {} FAILED ({} problem{}):\n  {}",
            source.location(),
            key.key_id,
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        );
    }
    if !global.json {
        let total: u64 = report.files.iter().map(|f| f.size).sum();
        eprintln!(
            "verified {} files ({}) in {} against key id {}",
            report.files.len(),
            human_size(total),
            source.location(),
            key.key_id
        );
    }
    Ok(())
}

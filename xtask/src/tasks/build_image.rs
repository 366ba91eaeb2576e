//! `cargo xtask build-image`: the image for one board into out/<board>/ (image/build.rs), signed when
//! a key is configured; or, with `--check-reproducible`, built twice and compared.

use super::{print_json, Global};
use crate::image::{build, reproducible};
use crate::sign::{dir::sign_dir, minisign::SecretKey};
use crate::spec::workspace::Workspace;
use crate::spec::{select_board, Arch};
use crate::uki::secure_boot::{SecureBootKeys, DB_KEY_ENV, KEYS_DIR_ENV};
use crate::upload::stage_cache::S3StageCache;
use crate::util::stage_cache::{Remote, StageCache, STAGE_CACHE_ENV};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BuildImageArgs {
    /// Target architecture; picks that arch's default board
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Board name (in boards/) or path to a board file
    #[arg(long)]
    pub board: Option<String>,
    /// Sign out/<board>/ once it is published (a .minisig per artifact and SHA256SUMS, as `cargo xtask
    /// sign` does) with this unencrypted minisign secret key (mode 0600). Without it, $XTASK_SIGNING_KEY
    /// (the key file's contents) is used when set; with neither, the build is unsigned. Either way the
    /// signatures and SHA256SUMS of an earlier build are removed before the new artifacts are published
    #[arg(long, value_name = "FILE")]
    pub secret_key: Option<PathBuf>,
    /// Sign the UKI for Secure Boot with the key set in DIR (as `cargo xtask keygen --secure-boot`
    /// writes it: PK.crt, KEK.crt, db.crt, owner.guid and db.key, mode 0600; the db key may come from
    /// $XTASK_SECURE_BOOT_DB_KEY, the file's contents, instead), and write the board's firmware variable
    /// store with the keys enrolled next to the disk. Signed builds are reproducible too
    #[arg(long, value_name = "DIR", env = KEYS_DIR_ENV)]
    pub secure_boot_keys: Option<PathBuf>,
    /// Instead of publishing, build twice (separate processes, empty caches, output and temp
    /// directories at different paths, a different umask and time zone, machined, spec, boards and
    /// overlays read from two copies at different paths, as two clones would have them) and compare
    /// every artifact byte for byte. Prints the digests when identical; else the first differing
    /// artifact and byte offset, keeps both builds for inspection and exits non-zero
    #[arg(long, conflicts_with = "secret_key")]
    pub check_reproducible: bool,
    #[command(flatten)]
    pub stage_cache: StageCacheArgs,
}

/// Where the build's stages are cached (shared with `release`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StageCacheArgs {
    /// The local stage cache [default: <cache-dir>/stages]
    #[arg(long, value_name = "DIR", env = "XTASK_STAGE_CACHE_DIR")]
    pub stage_cache_dir: Option<PathBuf>,
    /// Also read, and unless read-only write, stage outputs in this object store, reached as `upload`
    /// reaches one (endpoint AWS_ENDPOINT_URL, credentials from the environment or the profile). A
    /// store that fails is a warning and the build goes on without it
    #[arg(long, value_name = "s3://BUCKET/PREFIX", env = STAGE_CACHE_ENV)]
    pub stage_cache: Option<String>,
    /// Read the stage caches but store nothing in them (for untrusted builds, such as pull requests)
    #[arg(long, env = "XTASK_STAGE_CACHE_READ_ONLY")]
    pub stage_cache_read_only: bool,
    /// Run every stage; read and write no stage cache
    #[arg(long, conflicts_with_all = ["stage_cache", "stage_cache_dir", "stage_cache_read_only"])]
    pub no_stage_cache: bool,
}

impl StageCacheArgs {
    pub fn open(&self, ws: &Workspace) -> Result<StageCache> {
        if self.no_stage_cache {
            return Ok(StageCache::disabled());
        }
        let local = self.stage_cache_dir.clone().unwrap_or_else(|| ws.cache_dir().join("stages"));
        let remote: Option<Box<dyn Remote>> = match self.stage_cache.as_deref().filter(|s| !s.is_empty()) {
            Some(url) => Some(Box::new(S3StageCache::connect(url).with_context(|| format!("--stage-cache {url}"))?)),
            None => None,
        };
        Ok(StageCache::new(Some(local), remote, self.stage_cache_read_only))
    }
}

pub fn run(global: &Global, args: &BuildImageArgs) -> Result<()> {
    let ws = global.workspace();
    let board = select_board(&ws.boards_dir(), args.board.as_deref(), args.arch)?;
    // A bad key fails here, before anything is built or published.
    let secure_boot = SecureBootKeys::load_configured(args.secure_boot_keys.as_deref())?;
    if args.check_reproducible {
        return check_reproducible(global, args, &board, secure_boot.as_ref());
    }
    let key = SecretKey::load_configured(args.secret_key.as_deref())?;
    let cache = args.stage_cache.open(&ws)?;
    let mut report = build::build(&ws, &board, secure_boot.as_ref(), &cache)?;
    if let Some(key) = &key {
        sign_dir(&report.out_dir, key)?;
        report.signed_with_key_id = Some(key.key_id().to_string());
    }
    if global.json {
        return print_json(&report);
    }
    println!(
        "built {} {} for {} in {:.1} s (downloaded {} packages, {:.1} MB; {} cached) → {}",
        report.manifest.image,
        report.manifest.version,
        report.board,
        report.seconds,
        report.downloaded,
        report.downloaded_bytes as f64 / 1e6,
        report.cached,
        report.out_dir.display()
    );
    println!("  {}", report.stages_line());
    if let Some(record) = &report.manifest.secure_boot {
        println!(
            "  UKI signed for Secure Boot with the db key of {} (certificate sha256 {}){}",
            args.secure_boot_keys.as_deref().unwrap_or(std::path::Path::new("?")).display(),
            record.db_certificate_sha256,
            record.vars.as_ref().map(|v| format!("; keys enrolled in {v}")).unwrap_or_default()
        );
    }
    for a in &report.manifest.artifacts {
        println!("  {:<28} {:>12} bytes  sha256 {}", a.file, a.size, a.sha256);
    }
    Ok(())
}

fn check_reproducible(
    global: &Global,
    args: &BuildImageArgs,
    board: &crate::spec::Board,
    secure_boot: Option<&SecureBootKeys>,
) -> Result<()> {
    let signing = secure_boot.map(|keys| reproducible::Signing {
        keys_dir: keys.dir.clone(),
        db_key_env: std::env::var_os(DB_KEY_ENV).filter(|v| !v.is_empty()),
    });
    let report = reproducible::check(&global.workspace(), args.board.as_deref(), board, signing.as_ref())?;
    if global.json {
        print_json(&report)?;
    } else {
        if report.identical {
            println!(
                "reproducible: {} {} for {}{}: two independent builds ({:.1} s and {:.1} s) gave {} identical files",
                report.image,
                report.version,
                report.board,
                if report.signed_for_secure_boot { ", signed for Secure Boot" } else { "" },
                report.builds[0].seconds,
                report.builds[1].seconds,
                report.comparison.files.len()
            );
        } else {
            println!("NOT reproducible: {} {} for {}", report.image, report.version, report.board);
        }
        print!("{}", report.comparison.render());
        if let Some(kept) = &report.kept {
            println!("both builds are kept in {} (compare them with diffoscope)", kept.display());
        }
    }
    if !report.identical {
        return Err(report.comparison.failure());
    }
    Ok(())
}

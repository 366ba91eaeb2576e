//! `cargo xtask release`: the whole release, unattended, for CI. Builds both arches, boot-tests both,
//! signs both, verifies both against the public key, and only then uploads both; it stops at the
//! first failure, so nothing is uploaded unless every boot test passed and every directory verified.
//! One summary at the end (human or `--json`).

use super::build_image::StageCacheArgs;
use super::upload::{print_summary, PublishArgs};
use super::{print_json, Global};
use crate::boot::qemu::Accel;
use crate::boot::{boot_test, BootOptions};
use crate::image::build;
use crate::sign::dir::sign_dir;
use crate::sign::minisign::{PublicKey, SecretKey};
use crate::spec::{select_board, Arch, Board};
use crate::uki::secure_boot::{SecureBootKeys, KEYS_DIR_ENV};
use crate::upload::location::Location;
use crate::upload::publish::{self, Verified};
use crate::util::progress;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    /// Publish to s3://BUCKET/PREFIX once both arches are built, boot-tested, signed and verified
    /// [default: stop after verifying]
    #[arg(long, value_name = "s3://BUCKET/PREFIX")]
    pub to: Option<String>,
    /// Public key every directory must verify against [default: the signing key's own]
    #[arg(long, value_name = "KEY.pub")]
    pub key: Option<PathBuf>,
    /// Unencrypted minisign secret key file (mode 0600); without it, $XTASK_SIGNING_KEY must hold the
    /// key file's contents
    #[arg(long, value_name = "FILE")]
    pub secret_key: Option<PathBuf>,
    /// Accelerator for the boot tests: auto uses KVM only where a probe proves it works
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Sign each UKI for Secure Boot with the key set in DIR (as for build-image); each signed image
    /// then also boots under the board's Secure Boot firmware with the keys enrolled
    #[arg(long, value_name = "DIR", env = KEYS_DIR_ENV)]
    pub secure_boot_keys: Option<PathBuf>,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub stage_cache: StageCacheArgs,
}

#[derive(Serialize)]
struct ArchRelease {
    arch: Arch,
    board: String,
    out_dir: PathBuf,
    build_secs: f64,
    boot_ready_secs: f64,
    verified_files: usize,
    upload: Option<publish::Report>,
}

#[derive(Serialize)]
struct Summary {
    image: String,
    version: String,
    key_id: String,
    published_to: Option<String>,
    seconds: f64,
    arches: Vec<ArchRelease>,
}

pub fn run(global: &Global, args: &ReleaseArgs) -> Result<()> {
    let start = Instant::now();
    let ws = global.workspace();
    // Everything that can be refused is checked before the first build.
    let secret = SecretKey::load(args.secret_key.as_deref())?;
    // Before any build: a db key in the environment without its key set is refused here.
    let secure_boot = SecureBootKeys::load_configured(args.secure_boot_keys.as_deref())?;
    let public = match &args.key {
        Some(path) => PublicKey::load(path)?,
        None => secret.public_key(),
    };
    if public.key_id != secret.key_id() {
        bail!(
            "the signing key (key id {}) is not the pair of {} (key id {}): its signatures would not verify",
            secret.key_id(),
            args.key.as_ref().map_or(String::new(), |p| p.display().to_string()),
            public.key_id
        );
    }
    let options = args.publish.options()?;
    let destination = match &args.to {
        Some(url) => {
            let to = Location::parse(url)?;
            let store = args.publish.store.connect(&to)?;
            store.check(&to.prefix).context("checking the destination before building")?;
            Some((to, store))
        }
        None => None,
    };
    let stage_cache = args.stage_cache.open(&ws)?;
    let boards: Vec<Board> =
        Arch::ALL.iter().map(|&arch| select_board(&ws.boards_dir(), None, Some(arch))).collect::<Result<_>>()?;

    let mut arches = Vec::new();
    for board in &boards {
        progress::note(format!("release: building {}", board.name));
        let report = build::build(&ws, board, secure_boot.as_ref(), &stage_cache)?;
        arches.push(ArchRelease {
            arch: board.arch(),
            board: board.name.clone(),
            out_dir: report.out_dir.clone(),
            build_secs: report.seconds,
            boot_ready_secs: 0.0,
            verified_files: 0,
            upload: None,
        });
    }
    let boot =
        BootOptions { accel: args.accel, timeout: None, first_role_only: false, secure_boot: false, refusals: false };
    for (board, arch) in boards.iter().zip(&mut arches) {
        progress::note(format!("release: boot-testing {}", board.name));
        arch.boot_ready_secs =
            boot_test(&ws, board, &boot).with_context(|| format!("boot-testing {}", board.name))?.ready_secs;
        if secure_boot.is_some() {
            progress::note(format!("release: boot-testing {} under Secure Boot", board.name));
            let secure = BootOptions { secure_boot: true, ..boot };
            boot_test(&ws, board, &secure).with_context(|| format!("boot-testing {} under Secure Boot", board.name))?;
        }
    }
    let mut verified = Vec::new();
    for arch in &mut arches {
        progress::note(format!("release: signing and verifying {}", arch.out_dir.display()));
        sign_dir(&arch.out_dir, &secret)?;
        let checked = Verified::check(&arch.out_dir, &public)?;
        arch.verified_files = checked.index.files.len() + 1;
        verified.push(checked);
    }
    if let Some((to, store)) = &destination {
        for (arch, checked) in arches.iter_mut().zip(&verified) {
            progress::note(format!("release: uploading {} to {}", arch.arch, to.display()));
            arch.upload = Some(publish::publish(store, to, checked, &options)?);
        }
    }

    let manifest = &verified[0].manifest;
    let summary = Summary {
        image: manifest.image.clone(),
        version: manifest.version.clone(),
        key_id: public.key_id.to_string(),
        published_to: destination.as_ref().map(|(to, _)| to.display()),
        seconds: start.elapsed().as_secs_f64(),
        arches,
    };
    if global.json {
        return print_json(&summary);
    }
    println!(
        "release {} {}: both arches built, boot-tested, signed and verified with key id {} in {:.0} s",
        summary.image, summary.version, summary.key_id, summary.seconds
    );
    for arch in &summary.arches {
        println!(
            "  {} ({}): built in {:.1} s, ready in {:.1} s at boot, {} files verified in {}",
            arch.arch,
            arch.board,
            arch.build_secs,
            arch.boot_ready_secs,
            arch.verified_files,
            arch.out_dir.display()
        );
        if let Some(upload) = &arch.upload {
            print_summary(upload);
        }
    }
    if summary.published_to.is_none() {
        println!("  not published (no --to)");
    }
    Ok(())
}

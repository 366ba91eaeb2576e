//! `cargo xtask verify`: checks a signed output directory against a public key (needs nothing but
//! the directory and the key).

use super::{target_dir, Global};
use crate::sign::minisign::PublicKey;
use crate::sign::verify::{verify_dir, Report};
use crate::spec::Arch;
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Public key to check against (minisign format, e.g. nodeimg.pub)
    #[arg(long, value_name = "KEY.pub")]
    pub key: PathBuf,
    /// Verify out/<board>/ of the default board for this arch
    #[arg(long)]
    pub arch: Option<Arch>,
    /// Verify out/<board>/ of this board (a name in boards/ or a path to its .toml)
    #[arg(long)]
    pub board: Option<String>,
    /// Signed directory to verify (needs nothing else: works on a copy anywhere)
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
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
    let setup = target_dir(&global.workspace(), args.dir.as_deref(), args.board.as_deref(), args.arch)
        .and_then(|dir| Ok((dir, PublicKey::load(&args.key)?)));
    let (dir, key) = match setup {
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
    let report = verify_dir(&dir, &key);
    if global.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for file in &report.files {
            eprintln!("  ok  {}  ({}, sha256 {})", file.file, human_size(file.size), file.sha256);
        }
    }
    if !report.ok {
        let problems: Vec<String> = report.errors.iter().map(|p| format!("{}: {}", p.file, p.message)).collect();
        bail!(
            "verification of {} with key id {} FAILED ({} problem{}):\n  {}",
            dir.display(),
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
            dir.display(),
            key.key_id
        );
    }
    Ok(())
}

//! `cargo xtask outdated`: compares the lock with the archive as it is now and lists every package
//! whose pinned version is behind, marking security updates. `--fail-on-security` exits non-zero
//! when a security update is waiting, for a scheduled CI job that rebuilds and releases.

use super::{print_json, Global};
use crate::archive::cache::Cache;
use crate::archive::lockfile::Lock;
use crate::archive::mirror::Mirrors;
use crate::archive::outdated::{compare, Behind, Change};
use crate::archive::release;
use crate::image::inputs::BuildInputs;
use crate::util::host;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct OutdatedArgs {
    /// Exit non-zero when a newer version of a locked package is in a security suite
    #[arg(long)]
    pub fail_on_security: bool,
}

#[derive(Serialize)]
struct Report {
    lock: PathBuf,
    suites: Vec<String>,
    behind: Vec<Behind>,
    security_updates: usize,
}

pub fn run(global: &Global, args: &OutdatedArgs) -> Result<()> {
    let ws = global.workspace();
    let inputs = BuildInputs::load(&ws)?;
    let lock_path = ws.lock_path();
    let locked = Lock::load(&lock_path)?;
    host::ensure(&release::requirements())?;
    let fresh = inputs.lock_inputs().resolve(&Mirrors::of(&ws)?, &Cache::new(&ws))?;
    let behind = compare(&locked, &fresh.lock);
    let security_updates = behind.iter().filter(|b| b.security).count();
    let report = Report { lock: lock_path, suites: inputs.spec.suites.clone(), behind, security_updates };
    if global.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    if args.fail_on_security && security_updates > 0 {
        bail!(
            "{security_updates} security update(s) are waiting for {}: run `cargo xtask lock` and release",
            report.lock.display()
        );
    }
    Ok(())
}

fn print_report(report: &Report) {
    if report.behind.is_empty() {
        println!("{} is up to date with {}", report.lock.display(), report.suites.join(", "));
        return;
    }
    println!(
        "{} is behind {} ({} change(s), {} security):",
        report.lock.display(),
        report.suites.join(", "),
        report.behind.len(),
        report.security_updates
    );
    for b in &report.behind {
        let what = match b.change {
            Change::Newer => format!(
                "{} → {} ({})",
                b.locked_version.as_deref().unwrap_or("?"),
                b.available_version.as_deref().unwrap_or("?"),
                b.available_suite.as_deref().unwrap_or("?")
            ),
            Change::Added => format!(
                "new: {} ({})",
                b.available_version.as_deref().unwrap_or("?"),
                b.available_suite.as_deref().unwrap_or("?")
            ),
            Change::Removed => format!("no longer needed: {}", b.locked_version.as_deref().unwrap_or("?")),
        };
        println!("  {}{}/{} {}: {what}", if b.security { "SECURITY " } else { "" }, b.set, b.arch, b.name);
    }
}

//! `cargo xtask lock`: resolves every package set of the image against the signed Debian archive and
//! pins the result in `image-spec/<name>.lock`.

use super::{print_json, Global};
use crate::archive::cache::Cache;
use crate::archive::mirror::Mirrors;
use crate::archive::release;
use crate::image::inputs::BuildInputs;
use crate::spec::Arch;
use crate::util::host;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Serialize)]
struct SetSummary {
    name: String,
    packages: usize,
    download_bytes: u64,
    /// Dependencies left out because only excluded packages satisfy them: "pkg: dep".
    dropped: Vec<String>,
}

#[derive(Serialize)]
struct ArchSummary {
    arch: Arch,
    /// Distinct debs across the arch's sets.
    packages: usize,
    download_bytes: u64,
    sets: Vec<SetSummary>,
}

#[derive(Serialize)]
struct Summary<'a> {
    lock: &'a Path,
    suites: &'a [String],
    release_date: &'a str,
    changed: bool,
    sha256: String,
    arches: Vec<ArchSummary>,
}

pub fn run(global: &Global) -> Result<()> {
    let ws = global.workspace();
    let inputs = BuildInputs::load(&ws)?;
    host::ensure(&release::requirements())?;
    let resolved = inputs.lock_inputs().resolve(&Mirrors::of(&ws)?, &Cache::new(&ws))?;
    let lock = &resolved.lock;
    let lock_path = ws.lock_path();
    let changed = lock.write(&lock_path)?;

    let arches = Arch::ALL
        .into_iter()
        .map(|arch| {
            let distinct: BTreeMap<&str, u64> =
                lock.packages_for(arch).iter().map(|p| (p.sha256.as_str(), p.size)).collect();
            let sets = lock
                .sets
                .iter()
                .filter(|set| set.arch == arch)
                .map(|set| {
                    let members = lock.packages_in(arch, &set.name);
                    SetSummary {
                        name: set.name.name(),
                        packages: members.len(),
                        download_bytes: members.iter().map(|p| p.size).sum(),
                        dropped: resolved
                            .dropped
                            .get(&(arch, set.name.clone()))
                            .into_iter()
                            .flatten()
                            .map(|d| format!("{}: {}", d.package, d.dependency))
                            .collect(),
                    }
                })
                .collect();
            ArchSummary { arch, packages: distinct.len(), download_bytes: distinct.values().sum(), sets }
        })
        .collect::<Vec<_>>();
    let summary = Summary {
        lock: &lock_path,
        suites: &inputs.spec.suites,
        release_date: &resolved.release_date,
        changed,
        sha256: lock.sha256()?,
        arches,
    };
    if global.json {
        print_json(&summary)
    } else {
        print_summary(&summary, &inputs.spec.components).context("writing to stdout")
    }
}

fn print_summary(summary: &Summary, components: &[String]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} ({} {}, {} released {})",
        if summary.changed { "wrote" } else { "unchanged:" },
        summary.lock.display(),
        summary.suites.join(" "),
        components.join(" "),
        summary.suites.first().map_or("", String::as_str),
        summary.release_date
    )?;
    for arch in &summary.arches {
        let sets: Vec<String> = arch.sets.iter().map(|s| format!("{} {}", s.name, s.packages)).collect();
        writeln!(
            out,
            "  {}: {} packages, {:.1} MB to download ({})",
            arch.arch,
            arch.packages,
            arch.download_bytes as f64 / 1e6,
            sets.join(", ")
        )?;
        for set in &arch.sets {
            for line in &set.dropped {
                writeln!(out, "    {} dropped (only excluded packages satisfy it): {line}", set.name)?;
            }
        }
    }
    Ok(())
}

//! `cargo xtask check-extension DIR...`: checks Talos-format extension directories without building
//! them (their manifest.yaml, packages.toml, every service spec as machined reads it, Talos's rules
//! for rootfs/), with the messages the build gives, so extension authors can lint in their own CI.

use super::{print_json, Global};
use crate::layers::extension::{check, Checked};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CheckExtensionArgs {
    /// Extension directories (each holding manifest.yaml and rootfs/ or packages.toml)
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    extensions: &'a [DirReport],
}

#[derive(Serialize)]
struct DirReport {
    dir: PathBuf,
    name: String,
    ok: bool,
    services: Vec<String>,
    problems: Vec<String>,
    warnings: Vec<String>,
}

fn report(checked: &Checked, all: &[Checked]) -> DirReport {
    let services: Vec<String> =
        checked.extension.iter().flat_map(|e| e.services.iter().map(|s| s.name().to_string())).collect();
    let mut warnings = checked.warnings.clone();
    // Across the directories given: a dependency on another extension's service that none provides.
    let known: Vec<&str> =
        all.iter().flat_map(|c| c.extension.iter()).flat_map(|e| e.services.iter().map(|s| s.name())).collect();
    for service in checked.extension.iter().flat_map(|e| &e.services) {
        for other in service.depends_on_extensions().into_iter().filter(|o| !known.contains(o)) {
            warnings.push(format!(
                "{}: depends on service ext-{other}, which none of the directories checked provides",
                service.source.display()
            ));
        }
    }
    DirReport {
        dir: checked.dir.clone(),
        name: checked.name.clone(),
        ok: checked.problems.is_empty() && checked.extension.is_some(),
        services,
        problems: checked.problems.clone(),
        warnings,
    }
}

pub fn run(global: &Global, args: &CheckExtensionArgs) -> Result<()> {
    let checked: Vec<Checked> = args.dirs.iter().map(|dir| check(dir, None)).collect();
    let extensions: Vec<DirReport> = checked.iter().map(|c| report(c, &checked)).collect();
    let failed = extensions.iter().filter(|e| !e.ok).count();
    if global.json {
        print_json(&Report { ok: failed == 0, extensions: &extensions })?;
    } else {
        for e in &extensions {
            for warning in &e.warnings {
                eprintln!("extension {}: {warning}", e.name);
            }
            if e.ok {
                let services = if e.services.is_empty() { "no services".to_string() } else { e.services.join(", ") };
                println!("ok: extension {} ({}): {services}", e.name, e.dir.display());
            } else {
                eprintln!("extension {} ({}): {} problem(s):", e.name, e.dir.display(), e.problems.len());
                for problem in &e.problems {
                    eprintln!("  {problem}");
                }
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} extension directories have problems", extensions.len());
    }
    Ok(())
}

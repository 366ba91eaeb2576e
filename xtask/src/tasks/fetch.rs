//! `cargo xtask fetch`: downloads the debs the lockfile pins for one arch into the content-addressed
//! cache.

use super::{print_json, Global};
use crate::archive::fetch::{fetch, FetchReport};
use crate::image::inputs::BuildInputs;
use crate::spec::{select_board, Arch};
use anyhow::{Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::Path;

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Fetch what the lock pins for this arch (all its package sets)
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Fetch for this board's arch (a name in the boards directory or a path to a .toml)
    #[arg(long)]
    pub board: Option<String>,
}

pub fn run(global: &Global, args: &FetchArgs) -> Result<()> {
    let ws = global.workspace();
    let arch = match (args.arch, args.board.as_deref()) {
        (Some(arch), None) => arch,
        (arch, board) => select_board(&ws.boards_dir(), board, arch)?.arch(),
    };
    let lock = BuildInputs::load(&ws)?.lock(&ws)?;
    let report = fetch(&ws, &lock.packages_for(arch))?;
    if global.json {
        #[derive(Serialize)]
        struct Output<'a> {
            arch: Arch,
            lock: &'a Path,
            #[serde(flatten)]
            report: &'a FetchReport,
        }
        return print_json(&Output { arch, lock: &ws.lock_path(), report: &report });
    }
    writeln!(
        std::io::stdout(),
        "{arch}: downloaded {} packages ({:.1} MB), {} already cached{}",
        report.downloaded,
        report.downloaded_bytes as f64 / 1e6,
        report.cached,
        if report.refetched_corrupt.is_empty() {
            String::new()
        } else {
            format!("; re-downloaded corrupt cache entries of {}", report.refetched_corrupt.join(", "))
        }
    )
    .context("writing to stdout")
}

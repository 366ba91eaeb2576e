//! `cargo xtask compare-builds FIRST SECOND`: compares two build-image output directories artifact by
//! artifact (built anywhere: say, by CI on two machines).

use super::{print_json, Global};
use crate::image::compare::compare_dirs;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The first build's output directory (out/<board>/, holding manifest.json)
    #[arg(value_name = "FIRST")]
    pub first: PathBuf,
    /// The second build's output directory
    #[arg(value_name = "SECOND")]
    pub second: PathBuf,
}

pub fn run(global: &Global, args: &CompareArgs) -> Result<()> {
    let comparison = compare_dirs(&args.first, &args.second)?;
    if global.json {
        print_json(&comparison)?;
    } else {
        if comparison.identical {
            println!(
                "identical: {} and {} hold the same {} files, byte for byte",
                args.first.display(),
                args.second.display(),
                comparison.files.len()
            );
        }
        print!("{}", comparison.render());
    }
    if !comparison.identical {
        return Err(comparison.failure());
    }
    Ok(())
}

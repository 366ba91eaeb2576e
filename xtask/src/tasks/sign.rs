//! `cargo xtask sign`: signs an output directory (a .minisig per artifact and for manifest.json,
//! SHA256SUMS and its signature).

use super::{BoardDir, Global};
use crate::sign::{dir::sign_dir, minisign::SecretKey};
use crate::spec::names::SUMS_FILE;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    #[command(flatten)]
    pub target: BoardDir,
    /// Unencrypted minisign secret key file (mode 0600). Without it, $XTASK_SIGNING_KEY must hold
    /// the key file's contents
    #[arg(long, value_name = "FILE")]
    pub secret_key: Option<PathBuf>,
    /// Directory to sign, instead of the board's out/<board>/
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(global: &Global, args: &SignArgs) -> Result<()> {
    let dir = args.target.resolve(global, args.dir.as_deref())?;
    let key = SecretKey::load(args.secret_key.as_deref())?;
    sign_dir(&dir, &key)?;
    if global.json {
        let report = serde_json::json!({
            "dir": dir,
            "key_id": key.key_id().to_string(),
            "sums": dir.join(SUMS_FILE),
        });
        println!("{report}");
    }
    Ok(())
}

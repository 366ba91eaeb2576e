//! `cargo xtask keygen`: a fresh minisign-format key pair, DIR/nodeimg.pub and DIR/nodeimg.key (0600).

use super::Global;
use crate::sign::minisign::{write_key_pair, SECRET_KEY_FILE};
use crate::util::progress;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Directory for nodeimg.pub and nodeimg.key (created if missing)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an existing key pair there
    #[arg(long)]
    pub force: bool,
}

pub fn run(global: &Global, args: &KeygenArgs) -> Result<()> {
    let (public_path, key_id) = write_key_pair(&args.out, args.force)?;
    if global.json {
        println!("{}", serde_json::json!({"public_key": public_path, "key_id": key_id.to_string()}));
    } else {
        progress::note(format!(
            "wrote public key {} (key id {key_id}) and its secret key {} (mode 0600, keep it private)",
            public_path.display(),
            args.out.join(SECRET_KEY_FILE).display()
        ));
    }
    Ok(())
}

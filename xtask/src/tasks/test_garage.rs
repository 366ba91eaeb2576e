//! `cargo xtask test-garage`: starts a single-node Garage on loopback (upload/garage.rs), installing
//! it first when missing, for the test suite and for trying `upload` by hand. The server keeps
//! running after the command; its state (ports, bucket, its own throwaway key, pid) is in
//! DIR/node.json, mode 0600. Run again with the same DIR to restart a stopped node with its data.

use super::{print_json, Global};
use crate::upload::garage;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct TestGarageArgs {
    /// Directory for the node's configuration, data, log and state
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The bucket a fresh node gets
    #[arg(long, default_value = "nodeimg")]
    pub bucket: String,
}

pub fn run(global: &Global, args: &TestGarageArgs) -> Result<()> {
    let binary = garage::install(&global.workspace().cache_dir())?;
    let node = garage::start(&binary, &args.dir, &args.bucket)?;
    let summary = serde_json::json!({
        "endpoint": node.endpoint,
        "region": node.region,
        "bucket": node.bucket,
        "pid": node.pid,
        "log": node.log,
        "state": node.dir.join("node.json"),
    });
    if global.json {
        return print_json(&summary);
    }
    println!(
        "Garage serving s3://{}/ at {} (region {}, pid {}); key and ports in {}",
        node.bucket,
        node.endpoint,
        node.region,
        node.pid,
        node.dir.join("node.json").display()
    );
    Ok(())
}

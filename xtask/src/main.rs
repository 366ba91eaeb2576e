//! `cargo xtask`: builds, proves and ships the node image. This file only parses the command line and
//! dispatches; each task lives in its own module (see ARCHITECTURE.md for the map).

// Work in progress: modules are filled in stage by stage.
#![allow(dead_code)]

mod bench;
mod boot_test;
mod build_image;
mod cmd;
mod cpio;
mod deb;
mod debian;
mod esp;
mod fetch;
mod gpt;
mod hosttools;
mod keys;
mod kmod;
mod lock;
mod machined_build;
mod paths;
mod progress;
mod qemu;
mod rootfs;
mod sign;
mod spec;
mod squashfs;
mod uki;
mod verify;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use spec::Arch;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, boot-test, sign and ship the immutable node image", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    task: Task,
}

/// Options every task shares. Defaults are relative to the repository root.
#[derive(Args, Clone, Debug)]
pub struct Global {
    /// Image spec to build [default: image-spec/node.toml]
    #[arg(long, global = true, env = "XTASK_SPEC")]
    pub spec: Option<PathBuf>,
    /// Directory holding the board files [default: boards/]
    #[arg(long, global = true, env = "XTASK_BOARDS_DIR")]
    pub boards_dir: Option<PathBuf>,
    /// Where outputs go; each board gets out/<board>/ [default: out/]
    #[arg(long, global = true, env = "XTASK_OUT_DIR")]
    pub out_dir: Option<PathBuf>,
    /// Content-addressed download cache [default: $XDG_CACHE_HOME/nodeimg or ~/.cache/nodeimg]
    #[arg(long, global = true, env = "XTASK_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Debian mirror URL [default: the first Debian source in the host's apt configuration]
    #[arg(long, global = true, env = "XTASK_DEBIAN_MIRROR")]
    pub mirror: Option<String>,
    /// Print the result as JSON on stdout (for CI)
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
enum Task {
    /// Install the host tools the other tasks need (apt), saying what is installed
    HostTools,
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let _ = (&cli.global, Arch::ALL);
    match cli.task {
        Task::HostTools => Ok(()),
    }
}

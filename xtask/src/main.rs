//! `cargo xtask`: builds, proves and ships the node image. This file only parses the command line and
//! dispatches; each task lives in its own module (see ARCHITECTURE.md for the map).

mod bench;
mod boot_test;
mod build_image;
mod cmd;
mod cpio;
mod deb;
mod debian;
mod digest;
mod esp;
mod extensions;
mod fetch;
mod gpt;
mod hosttools;
mod keys;
mod kmod;
mod lock;
mod machined_build;
mod paths;
mod policy;
mod progress;
mod qemu;
mod reproducible;
mod rootfs;
mod sbom;
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
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, boot-test, sign and ship the immutable node image",
    version
)]
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
    /// Directory holding the root overlays and system extensions (extensions/<name>/) [default: overlays/]
    #[arg(long, global = true, env = "XTASK_OVERLAYS_DIR")]
    pub overlays_dir: Option<PathBuf>,
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
    HostTools(HostToolsArgs),
    /// Resolve the spec's and boards' Debian packages against the signed archive and pin them in the lockfile
    Lock,
    /// Download the debs the lockfile pins for one arch into the content-addressed cache
    Fetch(fetch::FetchArgs),
    /// Assemble the UEFI-bootable disk image for a board, with its SPDX SBOM, into out/<board>/ (signed if a key is configured)
    BuildImage(build_image::BuildImageArgs),
    /// Boot the built disk in QEMU under UEFI firmware and check what machined reports
    BootTest(boot_test::BootTestArgs),
    /// Measure build times, sizes and boot time against the floor, printed as one table
    Bench(bench::BenchArgs),
    /// Make a signing key pair (minisign format): DIR/nodeimg.pub and DIR/nodeimg.key (mode 0600)
    Keygen(keys::KeygenArgs),
    /// Sign an output directory: a .minisig per artifact and for manifest.json, SHA256SUMS(.minisig)
    Sign(sign::SignArgs),
    /// Verify a signed output directory against a public key (needs nothing but DIR and the key)
    Verify(verify::VerifyArgs),
    /// Compare two build-image output directories artifact by artifact (e.g. built on two machines)
    CompareBuilds(reproducible::CompareArgs),
}

#[derive(Args)]
struct HostToolsArgs {
    /// Only what building and booting this arch needs [default: every arch, plus the test suite's tools]
    #[arg(long, value_enum)]
    arch: Option<Arch>,
}

fn install_host_tools(args: &HostToolsArgs) -> Result<()> {
    let boards = spec::load_boards(&paths::repo_root().join("boards"))?;
    let mut reqs = Vec::new();
    for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        reqs.extend(hosttools::for_build(arch));
        boards.iter().filter(|b| b.arch() == arch).for_each(|b| reqs.extend(hosttools::for_boot(b)));
    }
    if args.arch.is_none() {
        reqs.extend(hosttools::for_tests());
    }
    hosttools::ensure(&reqs)?;
    progress::note("host tools present");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::HostTools(args) => install_host_tools(&args),
        Task::Lock => lock::run(&cli.global),
        Task::Fetch(args) => fetch::run(&cli.global, &args),
        Task::BuildImage(args) => build_image::run(&cli.global, &args),
        Task::BootTest(args) => boot_test::run(&cli.global, &args),
        Task::Bench(args) => bench::run(&cli.global, &args),
        Task::Keygen(args) => keys::keygen(&cli.global, &args),
        Task::Sign(args) => sign::run(&cli.global, &args),
        Task::Verify(args) => verify::run(&cli.global, &args),
        Task::CompareBuilds(args) => reproducible::compare_run(&cli.global, &args),
    }
}

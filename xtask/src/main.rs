//! `cargo xtask`: builds, proves and ships the node image. This file only parses the command line and
//! dispatches. Modules are declared in the order data flows through them (ARCHITECTURE.md has the map):
//! util/ at the bottom, the stages from spec to boot, and tasks/, one file per command, on top.

mod util;

mod spec;

mod archive;
mod boot;
mod disk;
mod image;
mod initramfs;
mod layers;
mod rootfs;
mod sign;
mod uki;
mod upload;

mod tasks;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tasks::Global;

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

#[derive(Subcommand)]
enum Task {
    /// Install the host tools the other tasks need (apt), saying what is installed
    HostTools(tasks::host_tools::HostToolsArgs),
    /// Resolve the spec's and boards' Debian packages against the signed archive and pin them in the lockfile
    Lock,
    /// List every locked package the archive now has newer (security updates marked); --fail-on-security for CI
    Outdated(tasks::outdated::OutdatedArgs),
    /// Download the debs the lockfile pins for one arch into the content-addressed cache
    Fetch(tasks::fetch::FetchArgs),
    /// Assemble the UEFI-bootable disk image for a board, with its SPDX SBOM, into out/<board>/ (signed if a key is configured)
    BuildImage(tasks::build_image::BuildImageArgs),
    /// Boot the built disk in QEMU under UEFI firmware and check what machined reports
    BootTest(tasks::boot_test::BootTestArgs),
    /// Measure build times, sizes and boot time against the floor, printed as one table
    Bench(tasks::bench::BenchArgs),
    /// Make a signing key pair (minisign format): DIR/nodeimg.pub and DIR/nodeimg.key (mode 0600); --secure-boot: a Secure Boot key set
    Keygen(tasks::keygen::KeygenArgs),
    /// Sign an output directory: a .minisig per artifact and for manifest.json, SHA256SUMS(.minisig)
    Sign(tasks::sign::SignArgs),
    /// Verify a signed release against a public key: a directory, or s3://… where it lies (needs nothing but it and the key)
    Verify(tasks::verify::VerifyArgs),
    /// Publish a signed output directory to S3-compatible object storage (AWS S3, Garage, MinIO, Ceph, R2), channel pointer last
    Upload(tasks::upload::UploadArgs),
    /// Build, boot-test, sign and verify both arches, then upload both (--to): one unattended command for CI
    Release(tasks::release::ReleaseArgs),
    /// Start a single-node Garage S3 store on loopback (installed into the cache when missing), for the tests and bench
    TestGarage(tasks::test_garage::TestGarageArgs),
    /// Compare two build-image output directories artifact by artifact (e.g. built on two machines)
    CompareBuilds(tasks::compare_builds::CompareArgs),
    /// Check Talos-format extension directories (manifest, packages.toml, service specs, Talos's content rules) without building
    CheckExtension(tasks::check_extension::CheckExtensionArgs),
    /// Check that xtask/src follows the data flow: no stage uses a later one, no import cycles
    CheckLayout,
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let global = &cli.global;
    match &cli.task {
        Task::HostTools(args) => tasks::host_tools::run(global, args),
        Task::Lock => tasks::lock::run(global),
        Task::Outdated(args) => tasks::outdated::run(global, args),
        Task::Fetch(args) => tasks::fetch::run(global, args),
        Task::BuildImage(args) => tasks::build_image::run(global, args),
        Task::BootTest(args) => tasks::boot_test::run(global, args),
        Task::Bench(args) => tasks::bench::run(global, args),
        Task::Keygen(args) => tasks::keygen::run(global, args),
        Task::Sign(args) => tasks::sign::run(global, args),
        Task::Verify(args) => tasks::verify::run(global, args),
        Task::Upload(args) => tasks::upload::run(global, args),
        Task::Release(args) => tasks::release::run(global, args),
        Task::TestGarage(args) => tasks::test_garage::run(global, args),
        Task::CompareBuilds(args) => tasks::compare_builds::run(global, args),
        Task::CheckExtension(args) => tasks::check_extension::run(global, args),
        Task::CheckLayout => tasks::check_layout::run(global),
    }
}

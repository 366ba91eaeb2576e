//! `cargo xtask host-tools`: installs every host tool the tasks and the test suite use (apt), saying
//! what is installed. Each stage lists the tools it runs; this gathers them.

use super::Global;
use crate::boot;
use crate::image::build;
use crate::sign::secure_boot;
use crate::spec::{load_boards, Arch};
use crate::upload::garage;
use crate::util::host::{self, req, Requirement};
use crate::util::progress;
use anyhow::Result;

#[derive(clap::Args)]
pub struct HostToolsArgs {
    /// Only what building and booting this arch needs [default: every arch, plus the test suite's tools]
    #[arg(long, value_enum)]
    arch: Option<Arch>,
}

/// What the test suite uses to check outputs with independent tools.
pub fn for_tests() -> Vec<Requirement> {
    vec![
        req("minisign", "minisign", "checking our signatures with minisign's own verifier"),
        req("sgdisk", "gdisk", "checking GPT disks"),
        req("fsck.vfat", "dosfstools", "checking the ESP"),
        req("mdir", "mtools", "reading files back from the ESP"),
        req("zstd", "zstd", "unpacking raw.zst with zstd's own decoder"),
        req("unsquashfs", "squashfs-tools", "listing squashfs layers"),
        req("cpio", "cpio", "listing initramfs archives"),
        req("x86_64-linux-gnu-objdump", "binutils", "checking UKI sections (x86-64)"),
        req("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu", "checking UKI sections (arm64)"),
        req("sbverify", "sbsigntool", "checking Secure Boot signatures with sbsigntool's verifier"),
    ]
    .into_iter()
    .chain(garage::client_requirements())
    .collect()
}

pub fn run(global: &Global, args: &HostToolsArgs) -> Result<()> {
    let boards = load_boards(&global.workspace().boards_dir())?;
    let mut reqs = Vec::new();
    for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        reqs.extend(build::requirements(arch));
        for board in boards.iter().filter(|b| b.arch() == arch) {
            reqs.extend(build::secure_boot_requirements(board));
            reqs.extend(boot::requirements(board, false));
        }
    }
    reqs.extend(secure_boot::requirements());
    if args.arch.is_none() {
        reqs.extend(for_tests());
    }
    host::ensure(&reqs)?;
    if args.arch.is_none() {
        // The loopback S3 store the upload tests and bench run against (crates.io, not Debian).
        garage::install(&global.workspace().cache_dir())?;
    }
    progress::note("host tools present");
    Ok(())
}

/// For unit tests that check outputs with independent tools (sgdisk, fsck.vfat, minisign, Debian's
/// rustc, ...): installs everything once per test process, so `cargo test` works on a fresh machine.
#[cfg(test)]
pub fn for_unit_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut reqs = for_tests();
        for arch in Arch::ALL {
            reqs.extend(build::requirements(arch));
        }
        if let Err(e) = host::ensure(&reqs) {
            panic!("installing host tools for the tests: {e:#}");
        }
    });
}

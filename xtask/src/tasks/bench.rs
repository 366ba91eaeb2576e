//! `cargo xtask bench`: one run, one table. Build times (cold cache, warm cache, second build with
//! nothing changed, a build signed for Secure Boot), artifact sizes, boot time to ready under the
//! plain firmware and under Secure Boot (with the time each refusal takes), and the floor (same
//! firmware, stub and kernel with a trivial initramfs) measured in the same run, with the ratios the
//! targets are stated in.
//! Figures are reported, never asserted: these machines are too noisy for timed tests.

use super::{print_json, Global};
use crate::boot::qemu::{self, Accel};
use crate::boot::{boot_test, floor_boot, BootOptions};
use crate::image::build::{self, build_floor_disk};
use crate::image::manifest::Manifest;
use crate::sign::secure_boot;
use crate::spec::workspace::Workspace;
use crate::spec::{select_board, Arch};
use crate::uki::secure_boot::SecureBootKeys;
use crate::util::host;
use crate::util::progress;
use anyhow::{Context, Result};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only this arch [default: both]
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
}

#[derive(Debug, Serialize)]
pub struct ArchFigures {
    pub arch: Arch,
    pub board: String,
    pub cold_build_secs: f64,
    pub cold_downloaded_bytes: u64,
    pub warm_build_secs: f64,
    pub unchanged_build_secs: f64,
    pub unchanged_downloaded: usize,
    pub raw_bytes: u64,
    pub qcow2_bytes: u64,
    pub uki_bytes: u64,
    pub rootfs_bytes: u64,
    pub ready_secs: f64,
    pub floor_secs: f64,
    pub signed_build_secs: f64,
    pub secure_boot_ready_secs: f64,
    /// Seconds from QEMU start to the firmware's refusal, per refused image.
    pub refusal_secs: Vec<(String, f64)>,
}

pub fn run(global: &Global, args: &BenchArgs) -> Result<()> {
    let ws = global.workspace();
    let scratch = tempfile::tempdir().context("creating the bench's scratch directory")?;
    let mut rows = Vec::new();
    for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        rows.push(bench_arch(&ws, arch, scratch.path())?);
    }
    if global.json {
        return print_json(&rows);
    }
    print_table(&rows);
    Ok(())
}

fn bench_arch(ws: &Workspace, arch: Arch, scratch: &std::path::Path) -> Result<ArchFigures> {
    let board = select_board(&ws.boards_dir(), None, Some(arch))?;
    host::ensure(&build::requirements(arch))?;
    host::ensure(&qemu::requirements(&board))?;
    let with = |cache: &str, out: &str| ws.with_cache_and_out(&scratch.join(cache), &scratch.join(out));
    progress::note(format!("bench {arch}: cold build (empty cache)"));
    let cold = build::build(&with(&format!("cache-{arch}"), &format!("cold-{arch}")), &board, None)?;
    progress::note(format!("bench {arch}: warm build (cached packages, empty output)"));
    let warm_ws = with(&format!("cache-{arch}"), &format!("warm-{arch}"));
    let warm = build::build(&warm_ws, &board, None)?;
    progress::note(format!("bench {arch}: second build, nothing changed"));
    let unchanged = build::build(&warm_ws, &board, None)?;

    progress::note(format!("bench {arch}: boot-test"));
    let plain = BootOptions { accel: Accel::Auto, timeout: None, secure_boot: false, refusals: false };
    let boot = boot_test(&warm_ws, &board, &plain)?;

    progress::note(format!("bench {arch}: build signed for Secure Boot (cached packages), boot-test --secure-boot"));
    let keys_dir = scratch.join(format!("secure-boot-keys-{arch}"));
    host::ensure(&secure_boot::requirements())?;
    secure_boot::generate(&keys_dir, "nodeimg bench", false)?;
    let keys = SecureBootKeys::load_own(&keys_dir)?;
    let signed_ws = with(&format!("cache-{arch}"), &format!("signed-{arch}"));
    let signed = build::build(&signed_ws, &board, Some(&keys))?;
    let secure = BootOptions { secure_boot: true, refusals: true, ..plain };
    let secure_boot_boot = boot_test(&signed_ws, &board, &secure)?;

    progress::note(format!("bench {arch}: floor boot (trivial initramfs)"));
    let floor_dir = scratch.join(format!("floor-{arch}"));
    std::fs::create_dir_all(&floor_dir).with_context(|| format!("creating {}", floor_dir.display()))?;
    let floor_disk = build_floor_disk(&warm_ws, &board, &floor_dir)?;
    let floor_secs = floor_boot(&board, &floor_disk, &floor_dir)?;

    let manifest: &Manifest = &warm.manifest;
    let size = |suffix: &str| manifest.artifact(suffix).map_or(0, |a| a.size);
    Ok(ArchFigures {
        arch,
        board: board.name.clone(),
        cold_build_secs: cold.seconds,
        cold_downloaded_bytes: cold.downloaded_bytes,
        warm_build_secs: warm.seconds,
        unchanged_build_secs: unchanged.seconds,
        unchanged_downloaded: unchanged.downloaded,
        raw_bytes: size(".raw"),
        qcow2_bytes: size(".qcow2"),
        uki_bytes: size(".efi"),
        rootfs_bytes: size(".rootfs.sqsh"),
        ready_secs: boot.ready_secs,
        floor_secs,
        signed_build_secs: signed.seconds,
        secure_boot_ready_secs: secure_boot_boot.ready_secs,
        refusal_secs: secure_boot_boot.refusals.iter().map(|r| (r.image.clone(), r.refused_secs)).collect(),
    })
}

fn print_table(rows: &[ArchFigures]) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let secs = |s: f64| format!("{s:.1} s");
    let mut lines: Vec<(String, Vec<String>)> = vec![
        ("cold build (empty cache)".into(), rows.iter().map(|r| secs(r.cold_build_secs)).collect()),
        ("  downloaded".into(), rows.iter().map(|r| mb(r.cold_downloaded_bytes)).collect()),
        ("warm build (target ≤ 15 s)".into(), rows.iter().map(|r| secs(r.warm_build_secs)).collect()),
        ("second build, nothing changed".into(), rows.iter().map(|r| secs(r.unchanged_build_secs)).collect()),
        ("signed build (Secure Boot, warm)".into(), rows.iter().map(|r| secs(r.signed_build_secs)).collect()),
        ("  packages downloaded".into(), rows.iter().map(|r| r.unchanged_downloaded.to_string()).collect()),
        ("raw disk".into(), rows.iter().map(|r| mb(r.raw_bytes)).collect()),
        ("qcow2".into(), rows.iter().map(|r| mb(r.qcow2_bytes)).collect()),
        ("UKI".into(), rows.iter().map(|r| mb(r.uki_bytes)).collect()),
        ("root squashfs".into(), rows.iter().map(|r| mb(r.rootfs_bytes)).collect()),
        ("boot to ready".into(), rows.iter().map(|r| secs(r.ready_secs)).collect()),
        ("boot to ready, Secure Boot".into(), rows.iter().map(|r| secs(r.secure_boot_ready_secs)).collect()),
        ("floor (trivial initramfs)".into(), rows.iter().map(|r| secs(r.floor_secs)).collect()),
        (
            "ready / floor (node target ≤ 2×)".into(),
            rows.iter().map(|r| format!("{:.2}×", r.ready_secs / r.floor_secs)).collect(),
        ),
        ("warm build / 15 s target".into(), rows.iter().map(|r| format!("{:.2}×", r.warm_build_secs / 15.0)).collect()),
    ];
    for (index, (image, _)) in rows.first().map_or(&[][..], |r| &r.refusal_secs[..]).iter().enumerate() {
        let label = format!("  refused: {image}");
        let cells = rows.iter().map(|r| r.refusal_secs.get(index).map_or("-".into(), |(_, s)| secs(*s))).collect();
        let at =
            lines.iter().position(|(l, _)| l == "boot to ready, Secure Boot").map_or(lines.len(), |i| i + 1 + index);
        lines.insert(at, (label, cells));
    }
    lines.insert(0, ("".into(), rows.iter().map(|r| r.board.clone()).collect()));
    for (label, cells) in lines {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>14}")).collect();
        println!("| {label:<32} |{} |", cells.join(" |"));
    }
}

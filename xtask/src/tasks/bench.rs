//! `cargo xtask bench`: one run, one table. Build times (cold cache, warm cache, second build with
//! nothing changed), artifact sizes, boot time to ready, and the floor (same firmware, stub and kernel
//! with a trivial initramfs) measured in the same run, with the ratios the targets are stated in.
//! Figures are reported, never asserted: these machines are too noisy for timed tests.

use crate::boot_test::{self, BootTestArgs};
use crate::build_image::{self, Manifest};
use crate::qemu::{self, Accel, Machine};
use crate::spec::{self, Arch};
use crate::{hosttools, progress, Global};
use anyhow::{Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

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
}

pub fn run(global: &Global, args: &BenchArgs) -> Result<()> {
    let scratch = tempfile::tempdir().context("creating the bench's scratch directory")?;
    let mut rows = Vec::new();
    for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        rows.push(bench_arch(global, arch, scratch.path())?);
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(())
}

fn bench_arch(global: &Global, arch: Arch, scratch: &std::path::Path) -> Result<ArchFigures> {
    let board = spec::select_board(&global.boards_dir(), None, Some(arch))?;
    hosttools::ensure(&hosttools::for_build(arch))?;
    hosttools::ensure(&hosttools::for_boot(&board))?;
    let with = |cache: &str, out: &str| Global {
        cache_dir: Some(scratch.join(cache)),
        out_dir: Some(scratch.join(out)),
        ..global.clone()
    };
    progress::note(format!("bench {arch}: cold build (empty cache)"));
    let cold = build_image::build(&with(&format!("cache-{arch}"), &format!("cold-{arch}")), &board)?;
    progress::note(format!("bench {arch}: warm build (cached packages, empty output)"));
    let warm_global = with(&format!("cache-{arch}"), &format!("warm-{arch}"));
    let warm = build_image::build(&warm_global, &board)?;
    progress::note(format!("bench {arch}: second build, nothing changed"));
    let unchanged = build_image::build(&warm_global, &board)?;

    progress::note(format!("bench {arch}: boot-test"));
    let boot_args = BootTestArgs { arch: Some(arch), board: None, accel: Accel::Auto, timeout: None };
    let boot = boot_test::boot_test(&warm_global, &board, &boot_args)?;

    progress::note(format!("bench {arch}: floor boot (trivial initramfs)"));
    let floor_dir = scratch.join(format!("floor-{arch}"));
    std::fs::create_dir_all(&floor_dir)?;
    let floor_disk = build_image::build_floor_disk(&warm_global, &board, &floor_dir)?;
    let floor_secs = floor_boot(&board, &floor_disk, &floor_dir)?;

    let manifest: &Manifest = &warm.manifest;
    let size = |suffix: &str| manifest.artifacts.iter().find(|a| a.file.ends_with(suffix)).map_or(0, |a| a.size);
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
    })
}

/// Seconds from QEMU start to the trivial init's marker line.
fn floor_boot(board: &spec::Board, disk: &std::path::Path, dir: &std::path::Path) -> Result<f64> {
    let accel = qemu::choose_accel(board, Accel::Auto)?;
    let machine =
        Machine { board, disk, serial_log: dir.join("floor-boot.log"), qmp_socket: dir.join("floor-qmp.sock"), accel };
    let started = Instant::now();
    let (mut qemu, stderr) = machine.start()?;
    let limit = Duration::from_secs(board.file.qemu.boot_timeout_secs);
    let (_, elapsed) =
        boot_test::wait_for_line(&mut qemu, &machine.serial_log, &stderr, started, limit, "MACHINED-FLOOR")
            .with_context(|| format!("the floor boot of {}", board.name))?;
    qemu.kill();
    Ok(elapsed.as_secs_f64())
}

fn print_table(rows: &[ArchFigures]) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let secs = |s: f64| format!("{s:.1} s");
    let mut lines: Vec<(String, Vec<String>)> = vec![
        ("cold build (empty cache)".into(), rows.iter().map(|r| secs(r.cold_build_secs)).collect()),
        ("  downloaded".into(), rows.iter().map(|r| mb(r.cold_downloaded_bytes)).collect()),
        ("warm build (target ≤ 15 s)".into(), rows.iter().map(|r| secs(r.warm_build_secs)).collect()),
        ("second build, nothing changed".into(), rows.iter().map(|r| secs(r.unchanged_build_secs)).collect()),
        ("  packages downloaded".into(), rows.iter().map(|r| r.unchanged_downloaded.to_string()).collect()),
        ("raw disk".into(), rows.iter().map(|r| mb(r.raw_bytes)).collect()),
        ("qcow2".into(), rows.iter().map(|r| mb(r.qcow2_bytes)).collect()),
        ("UKI".into(), rows.iter().map(|r| mb(r.uki_bytes)).collect()),
        ("root squashfs".into(), rows.iter().map(|r| mb(r.rootfs_bytes)).collect()),
        ("boot to ready".into(), rows.iter().map(|r| secs(r.ready_secs)).collect()),
        ("floor (trivial initramfs)".into(), rows.iter().map(|r| secs(r.floor_secs)).collect()),
        (
            "ready / floor (node target ≤ 2×)".into(),
            rows.iter().map(|r| format!("{:.2}×", r.ready_secs / r.floor_secs)).collect(),
        ),
        ("warm build / 15 s target".into(), rows.iter().map(|r| format!("{:.2}×", r.warm_build_secs / 15.0)).collect()),
    ];
    lines.insert(0, ("".into(), rows.iter().map(|r| r.board.clone()).collect()));
    for (label, cells) in lines {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>14}")).collect();
        println!("| {label:<32} |{} |", cells.join(" |"));
    }
}

//! `cargo xtask bench`: one run, one table. Build times (cold cache, warm cache, second build with
//! nothing changed, a build signed for Secure Boot), artifact sizes, boot time to ready (a worker
//! node, networking on: DHCP on both NICs) under the plain firmware and under Secure Boot (with the
//! time each refusal takes), and the floor (same firmware, stub, kernel and NICs with a trivial
//! initramfs) measured in the same run, with the ratios the targets are stated in.
//! Figures are reported, never asserted: these machines are too noisy for timed tests.
//!
//! `--upload` adds the upload rows: a file of 1 GiB (`--upload-mib`) published with `cargo xtask
//! upload` to a loopback Garage node, against `aws s3 cp` of the same file to the same node in the
//! same run, interleaved, `--upload-runs` times each (medians), and our upload's peak memory from
//! wait4(2) on its process. `--upload-only` skips the build and boot rows.

use super::{print_json, Global};
use crate::boot::qemu::{self, Accel};
use crate::boot::{boot_test, floor_boot, BootOptions};
use crate::image::build::{self, build_floor_disk};
use crate::image::manifest::Artifact;
use crate::image::manifest::Manifest;
use crate::sign::dir::sign_dir;
use crate::sign::minisign::SecretKey;
use crate::sign::secure_boot;
use crate::spec::names::MANIFEST_FILE;
use crate::spec::workspace::Workspace;
use crate::spec::{select_board, Arch, Board};
use crate::uki::secure_boot::SecureBootKeys;
use crate::upload::garage;
use crate::upload::stage_cache::S3StageCache;
use crate::util::cmd::{cmd, Cmd};
use crate::util::fs::write_atomic;
use crate::util::host;
use crate::util::progress;
use crate::util::stage_cache::StageCache;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Only this arch [default: both]
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Also measure uploads to a loopback Garage: ours against `aws s3 cp` of the same file
    #[arg(long)]
    pub upload: bool,
    /// Only the upload rows (implies --upload)
    #[arg(long)]
    pub upload_only: bool,
    /// Uploads of each client, interleaved (the medians are reported)
    #[arg(long, default_value_t = 3)]
    pub upload_runs: usize,
    /// Size of the uploaded file, in MiB
    #[arg(long, default_value_t = 1024)]
    pub upload_mib: u64,
    /// Boots of the image and of the floor, interleaved (medians and spread are reported)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Only the boot rows (plain firmware): the image build-image last built in out/, against the
    /// floor. For judging a boot change without the build rows' ten minutes
    #[arg(long, conflicts_with_all = ["upload", "upload_only"])]
    pub boot_only: bool,
}

/// The upload rows.
#[derive(Debug, Serialize)]
pub struct UploadFigures {
    pub file_bytes: u64,
    pub part_mib: u64,
    pub jobs: usize,
    /// `cargo xtask upload`, whole process: verifying the directory, probing, sending, the pointer.
    pub ours_total_secs: Vec<f64>,
    /// Its transfer phase alone (the report's transfer_seconds).
    pub ours_transfer_secs: Vec<f64>,
    pub aws_secs: Vec<f64>,
    /// The largest peak resident memory of our upload process over the runs.
    pub ours_peak_rss_bytes: u64,
    pub aws_peak_rss_bytes: u64,
    pub aws_version: String,
}

#[derive(Debug, Serialize)]
pub struct ArchFigures {
    pub arch: Arch,
    pub cold_build_secs: f64,
    pub cold_downloaded_bytes: u64,
    pub warm_build_secs: f64,
    pub unchanged_build_secs: f64,
    pub unchanged_downloaded: usize,
    pub unchanged_stages: String,
    /// A build after one file of one extension changed, with the stage cache warm.
    pub one_extension_build_secs: f64,
    pub one_extension_stages: String,
    /// The build that filled the remote stage cache (a local stage cache of its own, empty).
    pub remote_seed_build_secs: f64,
    /// Empty package and local stage caches, the remote stage cache warm.
    pub cold_remote_build_secs: f64,
    pub cold_remote_downloaded: usize,
    pub cold_remote_bytes: u64,
    pub cold_remote_stages: String,
    pub raw_bytes: u64,
    pub qcow2_bytes: u64,
    pub raw_zst_bytes: u64,
    pub uki_bytes: u64,
    pub rootfs_bytes: u64,
    #[serde(flatten)]
    pub boots: BootFigures,
    pub signed_build_secs: f64,
    pub secure_boot_ready_secs: f64,
    /// Seconds from QEMU start to the firmware's refusal, per refused image.
    pub refusal_secs: Vec<(String, f64)>,
}

/// The node's boots to ready and the floor's, interleaved.
#[derive(Debug, Serialize)]
pub struct BootFigures {
    pub board: String,
    /// Boot to ready and the floor, one figure per run (in run order).
    pub ready_secs: Vec<f64>,
    pub floor_secs: Vec<f64>,
    /// Each run's ready over the floor measured just before it. The table's ratio is the median
    /// ready over the median floor; these per-run ratios show how much one pairing can swing.
    pub ready_over_floor: Vec<f64>,
    /// Where each run's time went, by the guest kernel's clock read at the line the host waited for.
    pub floor_phases: Vec<Phases>,
    pub ready_phases: Vec<Phases>,
    /// Each run's milestones as machined reported them (`--json` only): where /init's time went.
    pub ready_milestones_ms: Vec<serde_json::Value>,
    /// ms from machined's shutdown request to its shred-done line, per run (a run without the line
    /// has none).
    pub shutdown_ms: Vec<u64>,
}

/// One boot split at the kernel's clock: what came before the kernel started counting (firmware,
/// systemd-stub, the kernel's own decompression), the kernel up to /init, and /init to the line.
/// A node's clock is read at its `ready` milestone, just before it writes the status line, so the
/// first phase also holds that line's way to the host (the floor prints at once).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Phases {
    pub before_kernel_secs: f64,
    pub kernel_secs: f64,
    pub userspace_secs: f64,
}

impl Phases {
    /// `host_secs` from QEMU start to the line; `line_ms` the kernel's clock on it; `init_ms` at /init.
    fn split(host_secs: f64, init_ms: u64, line_ms: u64) -> Phases {
        Phases {
            before_kernel_secs: host_secs - line_ms as f64 / 1e3,
            kernel_secs: init_ms as f64 / 1e3,
            userspace_secs: line_ms.saturating_sub(init_ms) as f64 / 1e3,
        }
    }

    /// The boot's node: from the status line's milestones.
    fn of_node(host_secs: f64, milestones: &serde_json::Value) -> Result<Phases> {
        let ms = |name: &str| {
            milestones
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("the status line's milestones_ms has no {name}: {milestones}"))
        };
        Ok(Phases::split(host_secs, ms("init_start")?, ms("ready")?))
    }
}

pub fn run(global: &Global, args: &BenchArgs) -> Result<()> {
    let ws = global.workspace();
    let scratch = tempfile::tempdir().context("creating the bench's scratch directory")?;
    if args.boot_only {
        return bench_boot_only(global, &ws, args, scratch.path());
    }
    let mut rows = Vec::new();
    if !args.upload_only {
        for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
            rows.push(bench_arch(&ws, arch, scratch.path(), args.runs)?);
        }
    }
    let upload = match args.upload || args.upload_only {
        true => Some(bench_upload(&ws, scratch.path(), args.upload_runs.max(1), args.upload_mib)?),
        false => None,
    };
    if global.json {
        return match &upload {
            Some(upload) => print_json(&serde_json::json!({ "arches": rows, "upload": upload })),
            None => print_json(&rows),
        };
    }
    if !rows.is_empty() {
        print_table(&rows);
    }
    if let Some(upload) = &upload {
        print_upload(upload);
    }
    Ok(())
}

/// `--boot-only`: per arch, the image in out/ (as boot-test boots it) against the floor.
fn bench_boot_only(global: &Global, ws: &Workspace, args: &BenchArgs, scratch: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for arch in args.arch.map_or(Arch::ALL.to_vec(), |a| vec![a]) {
        let board = select_board(&ws.boards_dir(), None, Some(arch))?;
        // Before the floor's build: without an image there is nothing to compare it with.
        Manifest::load(&ws.board_out_dir(&board.name)).with_context(|| {
            format!(
                "bench --boot-only boots the image in out/: run `cargo xtask build-image --board {}` first",
                board.name
            )
        })?;
        host::ensure(&build::requirements(arch))?;
        host::ensure(&qemu::requirements(&board))?;
        rows.push(bench_boots(ws, &board, scratch, args.runs)?);
    }
    if global.json {
        return print_json(&rows);
    }
    let refs: Vec<&BootFigures> = rows.iter().collect();
    print_lines(boot_lines(&refs));
    Ok(())
}

/// Part size and parts in flight of our upload: 8 MiB × 4 kept the prototype under 64 MB and ahead
/// of awscli on this machine kind.
const PART_MIB: u64 = 8;
const JOBS: usize = 4;

fn bench_upload(ws: &Workspace, scratch: &Path, runs: usize, mib: u64) -> Result<UploadFigures> {
    host::ensure(&garage::client_requirements())?;
    let binary = garage::install(&ws.cache_dir())?;
    progress::note(format!("bench upload: writing a signed release with a {mib} MiB file"));
    let dir = scratch.join("upload").join("bench-amd64");
    let file = write_bench_release(&dir, mib << 20)?;
    let key = scratch.join("upload").join("bench.pub");
    let node = garage::start(&binary, &scratch.join("garage"), "bench")?;
    let figures = measure_uploads(&node, &dir, &file, &key, runs);
    let stopped = garage::stop(&node, false);
    let figures = figures?;
    stopped?;
    Ok(figures)
}

/// A signed release directory holding one artifact of `size` pseudo-random bytes (random so that
/// nothing compresses; Garage deduplicates identical blocks, which the warm-up upload evens out).
fn write_bench_release(dir: &Path, size: u64) -> Result<PathBuf> {
    use sha2::Digest;
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = "bench-amd64.raw";
    let path = dir.join(name);
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?);
    let mut sha256 = sha2::Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < size {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = block.len().min((size - written) as usize);
        sha256.update(&block[..n]);
        out.write_all(&block[..n]).with_context(|| format!("writing {}", path.display()))?;
        written += n as u64;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))?;
    let manifest = Manifest {
        image: "bench".into(),
        version: "1.0.0".into(),
        arch: Arch::Amd64,
        board: "bench".into(),
        source_date_epoch: 0,
        lock_sha256: String::new(),
        kernel: "none".into(),
        cmdline: String::new(),
        extensions: Vec::new(),
        on_demand_modules: 0,
        kernel_requirements: None,
        secure_boot: None,
        artifacts: vec![Artifact { file: name.into(), size, sha256: crate::util::digest::hex(&sha256.finalize()) }],
    };
    write_atomic(&dir.join(MANIFEST_FILE), manifest.to_json()?.as_bytes())?;
    let key = SecretKey::generate()?;
    sign_dir(dir, &key)?;
    let public = dir.parent().context("the release has a parent directory")?.join("bench.pub");
    write_atomic(&public, key.public_key().to_file_text().as_bytes())?;
    Ok(path)
}

fn measure_uploads(node: &garage::Node, dir: &Path, file: &Path, key: &Path, runs: usize) -> Result<UploadFigures> {
    // Both clients get the node's key in the environment and nothing of the host's AWS settings.
    let with_env = |c: Cmd| {
        c.env("AWS_ACCESS_KEY_ID", &node.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &node.secret_access_key)
            .env("AWS_REGION", &node.region)
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
    };
    let aws = |to: String| {
        with_env(cmd("aws").args(["--endpoint-url", &node.endpoint, "--region", &node.region]))
            .args(["s3", "cp", "--only-show-errors"])
            .arg(file)
            .arg(to)
    };
    let ours = |prefix: String| -> Result<Cmd> {
        let exe = std::env::current_exe().context("finding this program")?;
        Ok(with_env(cmd(exe))
            .args([
                "--json",
                "upload",
                "--no-conditional",
                "--part-size",
                &PART_MIB.to_string(),
                "--jobs",
                &JOBS.to_string(),
            ])
            .args(["--to", &prefix, "--endpoint", &node.endpoint, "--region", &node.region, "--key"])
            .arg(key)
            .arg(dir))
    };
    let aws_version = cmd("aws").arg("--version").read().unwrap_or_default().trim().to_string();
    progress::note("bench upload: warm-up (Garage stores each block once; both clients then send what it has)");
    aws(format!("s3://{}/warm-up/bench-amd64.raw", node.bucket)).measure()?;
    let size = std::fs::metadata(file).with_context(|| format!("reading the metadata of {}", file.display()))?.len();
    let mut figures = UploadFigures {
        file_bytes: size,
        part_mib: PART_MIB,
        jobs: JOBS,
        ours_total_secs: Vec::new(),
        ours_transfer_secs: Vec::new(),
        aws_secs: Vec::new(),
        ours_peak_rss_bytes: 0,
        aws_peak_rss_bytes: 0,
        aws_version,
    };
    for run in 1..=runs {
        progress::note(format!("bench upload: run {run} of {runs}, ours then aws s3 cp"));
        let measured = ours(format!("s3://{}/ours-{run}", node.bucket))?.measure()?;
        let report: serde_json::Value =
            serde_json::from_slice(&measured.stdout).context("reading our upload's report")?;
        if report["bytes_sent"].as_u64() < Some(size) {
            bail!("our upload sent {} bytes of {size}: it did not send the file", report["bytes_sent"]);
        }
        figures.ours_total_secs.push(measured.seconds);
        figures.ours_transfer_secs.push(report["transfer_seconds"].as_f64().unwrap_or(measured.seconds));
        figures.ours_peak_rss_bytes = figures.ours_peak_rss_bytes.max(measured.max_rss_bytes);
        let measured = aws(format!("s3://{}/aws-{run}/bench-amd64.raw", node.bucket)).measure()?;
        figures.aws_secs.push(measured.seconds);
        figures.aws_peak_rss_bytes = figures.aws_peak_rss_bytes.max(measured.max_rss_bytes);
    }
    Ok(figures)
}

/// The median with the spread (lowest–highest) of `values`, in `unit`: "16.6 s (15.9–17.4)".
fn median_spread(values: &[f64], unit: &str) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let precision = if unit == "×" { 2 } else { 1 };
    let sep = if unit == "×" { "" } else { " " };
    format!("{:.precision$}{sep}{unit} ({low:.precision$}–{high:.precision$})", median(values))
}

/// Each phase's median over the runs, in seconds: "7.5 + 5.8" (with `userspace`, a third term).
fn phase_medians(phases: &[Phases], userspace: bool) -> String {
    let of = |f: fn(&Phases) -> f64| format!("{:.1}", median(&phases.iter().map(f).collect::<Vec<_>>()));
    let mut terms = vec![of(|p| p.before_kernel_secs), of(|p| p.kernel_secs)];
    if userspace {
        terms.push(of(|p| p.userspace_secs));
    }
    format!("{} s", terms.join(" + "))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn print_upload(u: &UploadFigures) {
    let mib = u.file_bytes as f64 / (1 << 20) as f64;
    let runs = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(" / ");
    let (transfer, total, aws) = (median(&u.ours_transfer_secs), median(&u.ours_total_secs), median(&u.aws_secs));
    let rows = [
        (
            format!("upload {mib:.0} MiB, ours: transfer (s, runs)"),
            format!("{transfer:.2} s ({})", runs(&u.ours_transfer_secs)),
        ),
        ("  throughput".to_string(), format!("{:.0} MiB/s", mib / transfer)),
        (
            "  whole command incl. verify, probe, pointer".to_string(),
            format!("{total:.2} s ({})", runs(&u.ours_total_secs)),
        ),
        ("aws s3 cp, same file, same server".to_string(), format!("{aws:.2} s ({})", runs(&u.aws_secs))),
        ("  throughput".to_string(), format!("{:.0} MiB/s", mib / aws)),
        ("ours / aws throughput (target ≥ 1.0×)".to_string(), format!("{:.2}×", aws / transfer)),
        ("  whole command / aws".to_string(), format!("{:.2}×", aws / total)),
        (
            format!("ours peak memory ({} MiB × {} parts; target < 64 MB)", u.part_mib, u.jobs),
            format!("{:.1} MB", u.ours_peak_rss_bytes as f64 / 1e6),
        ),
        ("aws peak memory".to_string(), format!("{:.1} MB", u.aws_peak_rss_bytes as f64 / 1e6)),
        ("awscli".to_string(), u.aws_version.clone()),
    ];
    for (label, value) in rows {
        println!("| {label:<52} | {value:>30} |");
    }
}

/// A copy of the workspace's overlays with one file of one extension changed (a comment added), as a
/// developer's edit would.
fn one_extension_changed(ws: &Workspace, scratch: &Path, arch: Arch) -> Result<Workspace> {
    let overlays = scratch.join(format!("overlays-changed-{arch}"));
    let _ = std::fs::remove_dir_all(&overlays);
    cmd("cp").arg("-a").arg(ws.overlays_dir()).arg(&overlays).run()?;
    let file = overlays.join("extensions").join(CHANGED_EXTENSION).join(CHANGED_FILE);
    let mut text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.push_str("# changed by bench\n");
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    Ok(ws.with_overlays(&overlays))
}

/// The extension bench changes a file of, and the file: its service yaml, which the layer carries as
/// it is (a comment in manifest.yaml would rebuild the layer but leave its bytes, and so the rest, alone).
const CHANGED_EXTENSION: &str = "iscsi-tools";
const CHANGED_FILE: &str = "rootfs/usr/local/etc/containers/iscsid.yaml";

/// A cold build (empty package cache, empty local stage cache) served by a warm remote stage cache in
/// a loopback Garage, after a build (with its own empty local stage cache) that filled the remote.
/// Returns that build's report and the filling build's seconds.
fn bench_remote_cache(ws: &Workspace, board: &Board, scratch: &Path) -> Result<(build::BuildReport, f64)> {
    let arch = board.arch();
    host::ensure(&garage::client_requirements())?;
    let binary = garage::install(&ws.cache_dir())?;
    let node = garage::start(&binary, &scratch.join(format!("garage-stages-{arch}")), "stages")?;
    let result = (|| -> Result<(build::BuildReport, f64)> {
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some(node.access_key_id.clone()),
            "AWS_SECRET_ACCESS_KEY" => Some(node.secret_access_key.clone()),
            "AWS_ENDPOINT_URL" => Some(node.endpoint.clone()),
            "AWS_REGION" => Some(node.region.clone()),
            _ => None,
        };
        let url = format!("s3://{}/stages", node.bucket);
        let remote = || -> Result<Box<dyn crate::util::stage_cache::Remote>> {
            Ok(Box::new(S3StageCache::connect_with(&url, &env)?))
        };
        progress::note(format!("bench {arch}: filling a remote stage cache (loopback Garage)"));
        let seed_ws =
            ws.with_cache_and_out(&scratch.join(format!("cache-{arch}")), &scratch.join(format!("seed-{arch}")));
        let seed_cache = StageCache::new(Some(scratch.join(format!("seed-stages-{arch}"))), Some(remote()?), false);
        let seed = build::build(&seed_ws, board, None, &seed_cache)?;
        progress::note(format!("bench {arch}: cold build, empty local caches, warm remote stage cache"));
        let cold_ws = ws.with_cache_and_out(
            &scratch.join(format!("cache-remote-{arch}")),
            &scratch.join(format!("cold-remote-{arch}")),
        );
        let cache = StageCache::new(Some(cold_ws.cache_dir().join("stages")), Some(remote()?), false);
        Ok((build::build(&cold_ws, board, None, &cache)?, seed.seconds))
    })();
    let stopped = garage::stop(&node, false);
    let result = result?;
    stopped?;
    Ok(result)
}

fn bench_arch(ws: &Workspace, arch: Arch, scratch: &std::path::Path, runs: u32) -> Result<ArchFigures> {
    let board = select_board(&ws.boards_dir(), None, Some(arch))?;
    host::ensure(&build::requirements(arch))?;
    host::ensure(&qemu::requirements(&board))?;
    let with = |cache: &str, out: &str| ws.with_cache_and_out(&scratch.join(cache), &scratch.join(out));
    progress::note(format!("bench {arch}: cold build (empty caches)"));
    let cold_ws = with(&format!("cache-{arch}"), &format!("cold-{arch}"));
    let cold = build::build(&cold_ws, &board, None, &local_stage_cache(&cold_ws))?;
    progress::note(format!("bench {arch}: warm build (cached packages, every stage run, empty output)"));
    let warm_ws = with(&format!("cache-{arch}"), &format!("warm-{arch}"));
    let warm = build::build(&warm_ws, &board, None, &StageCache::disabled())?;
    progress::note(format!("bench {arch}: second build, nothing changed (stage cache)"));
    let unchanged = build::build(&cold_ws, &board, None, &local_stage_cache(&cold_ws))?;
    progress::note(format!("bench {arch}: one file of one extension changed (stage cache)"));
    let changed_ws = one_extension_changed(&cold_ws, scratch, arch)?;
    let one_extension = build::build(&changed_ws, &board, None, &local_stage_cache(&changed_ws))?;
    let (cold_remote, remote_seed) = bench_remote_cache(ws, &board, scratch)?;

    let boots = bench_boots(&warm_ws, &board, scratch, runs)?;

    progress::note(format!("bench {arch}: build signed for Secure Boot (cached packages), boot-test --secure-boot"));
    let keys_dir = scratch.join(format!("secure-boot-keys-{arch}"));
    host::ensure(&secure_boot::requirements())?;
    secure_boot::generate(&keys_dir, "nodeimg bench", false)?;
    let keys = SecureBootKeys::load_own(&keys_dir)?;
    let signed_ws = with(&format!("cache-{arch}"), &format!("signed-{arch}"));
    let signed = build::build(&signed_ws, &board, Some(&keys), &StageCache::disabled())?;
    let secure = BootOptions { secure_boot: true, refusals: true, ..PLAIN_BOOT };
    let secure_boot_boot = boot_test(&signed_ws, &board, &secure)?;

    let manifest: &Manifest = &warm.manifest;
    let size = |suffix: &str| manifest.artifact(suffix).map_or(0, |a| a.size);
    Ok(ArchFigures {
        arch,
        cold_build_secs: cold.seconds,
        cold_downloaded_bytes: cold.downloaded_bytes,
        warm_build_secs: warm.seconds,
        unchanged_build_secs: unchanged.seconds,
        unchanged_downloaded: unchanged.downloaded,
        unchanged_stages: unchanged.stages_line(),
        one_extension_build_secs: one_extension.seconds,
        one_extension_stages: one_extension.stages_line(),
        remote_seed_build_secs: remote_seed,
        cold_remote_build_secs: cold_remote.seconds,
        cold_remote_downloaded: cold_remote.downloaded,
        cold_remote_bytes: cold_remote.stage_cache_remote_bytes,
        cold_remote_stages: cold_remote.stages_line(),
        raw_bytes: size(".raw"),
        qcow2_bytes: size(".qcow2"),
        raw_zst_bytes: size(".raw.zst"),
        uki_bytes: size(".efi"),
        rootfs_bytes: size(".rootfs.sqsh"),
        boots,
        signed_build_secs: signed.seconds,
        secure_boot_ready_secs: secure_boot_boot.ready_secs,
        refusal_secs: secure_boot_boot.refusals.iter().map(|r| (r.image.clone(), r.refused_secs)).collect(),
    })
}

/// The workspace's own stage cache, where build-image keeps it.
fn local_stage_cache(ws: &Workspace) -> StageCache {
    StageCache::new(Some(ws.cache_dir().join("stages")), None, false)
}

/// The bench's node boots: the first role, under the plain firmware.
const PLAIN_BOOT: BootOptions =
    BootOptions { accel: Accel::Auto, timeout: None, first_role_only: true, secure_boot: false, refusals: false };

/// `runs` boots of the floor and of `ws`'s built image on `board`, interleaved, so that a noisy
/// minute weighs on both alike.
fn bench_boots(ws: &Workspace, board: &Board, scratch: &Path, runs: u32) -> Result<BootFigures> {
    let arch = board.arch();
    let floor_dir = scratch.join(format!("floor-{arch}"));
    std::fs::create_dir_all(&floor_dir).with_context(|| format!("creating {}", floor_dir.display()))?;
    let floor_disk = build_floor_disk(ws, board, &floor_dir)?;
    let (mut ready_secs, mut floor_secs, mut shutdown_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor_phases, mut ready_phases, mut ready_milestones_ms) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        progress::note(format!(
            "bench {arch}: run {run} of {runs}: the floor boot (trivial initramfs), then boot-test"
        ));
        let floor = floor_boot(board, &floor_disk, &floor_dir)?;
        floor_secs.push(floor.secs);
        // The floor's /init prints its line at once: all of its time is firmware and kernel.
        floor_phases.push(Phases::split(floor.secs, floor.machined_ms, floor.machined_ms));
        let boot = boot_test(ws, board, &PLAIN_BOOT)?;
        ready_secs.push(boot.ready_secs);
        ready_phases.push(Phases::of_node(boot.ready_secs, &boot.status.milestones_ms)?);
        ready_milestones_ms.push(boot.status.milestones_ms.clone());
        shutdown_ms.extend(boot.nodes[0].shutdown_ms);
    }
    Ok(BootFigures {
        board: board.name.clone(),
        ready_over_floor: ready_secs.iter().zip(&floor_secs).map(|(ready, floor)| ready / floor).collect(),
        ready_secs,
        floor_secs,
        floor_phases,
        ready_phases,
        ready_milestones_ms,
        shutdown_ms,
    })
}

fn print_table(rows: &[ArchFigures]) {
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    let secs = |s: f64| format!("{s:.1} s");
    let mut lines: Vec<(String, Vec<String>)> = vec![
        ("cold build (empty cache)".into(), rows.iter().map(|r| secs(r.cold_build_secs)).collect()),
        ("  downloaded".into(), rows.iter().map(|r| mb(r.cold_downloaded_bytes)).collect()),
        ("warm build (target ≤ 15 s)".into(), rows.iter().map(|r| secs(r.warm_build_secs)).collect()),
        (
            "second build, nothing changed (target ≤ 1 s)".into(),
            rows.iter().map(|r| secs(r.unchanged_build_secs)).collect(),
        ),
        ("  packages downloaded".into(), rows.iter().map(|r| r.unchanged_downloaded.to_string()).collect()),
        ("  stages".into(), rows.iter().map(|r| r.unchanged_stages.clone()).collect()),
        (
            format!("one file of extension {CHANGED_EXTENSION} changed"),
            rows.iter().map(|r| secs(r.one_extension_build_secs)).collect(),
        ),
        (
            "  / warm build (target ≤ 40 %)".into(),
            rows.iter().map(|r| format!("{:.0} %", 100.0 * r.one_extension_build_secs / r.warm_build_secs)).collect(),
        ),
        ("  stages".into(), rows.iter().map(|r| r.one_extension_stages.clone()).collect()),
        ("build filling a remote stage cache".into(), rows.iter().map(|r| secs(r.remote_seed_build_secs)).collect()),
        ("cold build, warm remote stage cache".into(), rows.iter().map(|r| secs(r.cold_remote_build_secs)).collect()),
        ("  packages downloaded".into(), rows.iter().map(|r| r.cold_remote_downloaded.to_string()).collect()),
        ("  read from the remote".into(), rows.iter().map(|r| mb(r.cold_remote_bytes)).collect()),
        ("  stages".into(), rows.iter().map(|r| r.cold_remote_stages.clone()).collect()),
        ("signed build (Secure Boot, warm)".into(), rows.iter().map(|r| secs(r.signed_build_secs)).collect()),
        ("raw disk".into(), rows.iter().map(|r| mb(r.raw_bytes)).collect()),
        ("qcow2".into(), rows.iter().map(|r| mb(r.qcow2_bytes)).collect()),
        (
            "raw.zst (target ≤ 70 / 65 MiB)".into(),
            rows.iter().map(|r| format!("{:.1} MiB", r.raw_zst_bytes as f64 / (1 << 20) as f64)).collect(),
        ),
        ("UKI".into(), rows.iter().map(|r| mb(r.uki_bytes)).collect()),
        ("root squashfs".into(), rows.iter().map(|r| mb(r.rootfs_bytes)).collect()),
    ];
    let boots: Vec<&BootFigures> = rows.iter().map(|r| &r.boots).collect();
    lines.extend(boot_lines(&boots));
    lines.push(("boot to ready, Secure Boot".into(), rows.iter().map(|r| secs(r.secure_boot_ready_secs)).collect()));
    for (index, (image, _)) in rows.first().map_or(&[][..], |r| &r.refusal_secs[..]).iter().enumerate() {
        let cells = rows.iter().map(|r| r.refusal_secs.get(index).map_or("-".into(), |(_, s)| secs(*s))).collect();
        lines.push((format!("  refused: {image}"), cells));
    }
    lines.push((
        "warm build / 15 s target".into(),
        rows.iter().map(|r| format!("{:.2}×", r.warm_build_secs / 15.0)).collect(),
    ));
    print_lines(lines);
}

/// The boot rows: the node against the floor, medians over the runs, and where the time went.
fn boot_lines(rows: &[&BootFigures]) -> Vec<(String, Vec<String>)> {
    let runs_label = |label: &str| format!("{label}, median of {}", rows.first().map_or(0, |r| r.ready_secs.len()));
    let mut lines = vec![("".into(), rows.iter().map(|r| r.board.clone()).collect())];
    lines.extend([
        (runs_label("boot to ready"), rows.iter().map(|r| median_spread(&r.ready_secs, "s")).collect()),
        (runs_label("floor (trivial initramfs)"), rows.iter().map(|r| median_spread(&r.floor_secs, "s")).collect()),
        (
            "ready / floor, medians (≤ 1.3×)".into(),
            rows.iter().map(|r| format!("{:.2}×", median(&r.ready_secs) / median(&r.floor_secs))).collect(),
        ),
        ("  per run (median, spread)".into(), rows.iter().map(|r| median_spread(&r.ready_over_floor, "×")).collect()),
        ("  floor: pre-kernel + kernel".into(), rows.iter().map(|r| phase_medians(&r.floor_phases, false)).collect()),
        (
            "  ready: pre-kernel + kernel + /init".into(),
            rows.iter().map(|r| phase_medians(&r.ready_phases, true)).collect(),
        ),
        (
            "shutdown to shred done".into(),
            rows.iter()
                .map(|r| {
                    let ms: Vec<f64> = r.shutdown_ms.iter().map(|&ms| ms as f64).collect();
                    if ms.is_empty() {
                        "-".into()
                    } else {
                        format!("{:.0} ms", median(&ms))
                    }
                })
                .collect(),
        ),
    ]);
    lines
}

fn print_lines(lines: Vec<(String, Vec<String>)>) {
    for (label, cells) in lines {
        let cells: Vec<String> = cells.iter().map(|c| format!("{c:>22}")).collect();
        println!("| {label:<38} |{} |", cells.join(" |"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads_are_what_the_table_says() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(median_spread(&[16.6, 15.94, 17.4], "s"), "16.6 s (15.9–17.4)");
        assert_eq!(median_spread(&[1.31, 1.2, 1.5], "×"), "1.31× (1.20–1.50)");
        assert_eq!(median_spread(&[12.0], "s"), "12.0 s (12.0–12.0)");
    }

    #[test]
    fn a_boot_splits_at_the_kernels_clock() {
        let milestones = serde_json::json!({"init_start": 5_800, "root_mounted": 6_100, "ready": 12_300});
        let node = Phases::of_node(20.5, &milestones).unwrap();
        assert!((node.before_kernel_secs - 8.2).abs() < 1e-9, "{node:?}");
        assert!((node.kernel_secs - 5.8).abs() < 1e-9 && (node.userspace_secs - 6.5).abs() < 1e-9, "{node:?}");
        let floor = Phases::split(13.0, 5_500, 5_500);
        assert_eq!(phase_medians(&[floor, Phases::split(14.0, 5_700, 5_700)], false), "7.9 + 5.6 s");
        assert_eq!(phase_medians(&[node], true), "8.2 + 5.8 + 6.5 s");
        let err = Phases::of_node(20.5, &serde_json::json!({"init_start": 1})).unwrap_err();
        assert!(format!("{err:#}").contains("has no ready"), "{err:#}");
    }
}

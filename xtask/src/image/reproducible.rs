//! Bit-for-bit reproducible builds, and the proof of it.
//!
//! `build-image --check-reproducible` builds the same image twice, in two separate processes that share
//! nothing but the mirror: each has its own empty download cache, output and temp directory (at paths
//! of different lengths), umask, time zone and locale, and they run one after the other. Each compiles
//! machined and reads the spec, lock, boards and overlays from its own copy of one snapshot of the
//! repository, the second at a longer path and with the file modes a clone made under another umask
//! has, as two clones would be. Then every artifact both manifests list,
//! and manifest.json, is compared byte for byte. `compare-builds A B` does the comparison alone, for
//! two output directories built anywhere (say, by CI on two machines).
//!
//! What makes builds identical (ARCHITECTURE.md, "Invariants"): time comes only from
//! SOURCE_DATE_EPOCH; GUIDs and volume ids are derived; squashfs, cpio and FAT force owner and times;
//! every mode we create is set outright (never left to the umask) and overlay modes are reduced to
//! what git keeps (644/755); machined's source path is remapped; qemu-img writes in order with its
//! options spelled out ([`QCOW2_OPTIONS`]).

use crate::build_image::BuildImageArgs;
use crate::cmd::cmd;
use crate::digest::hex;
use crate::sign::{Manifest, MANIFEST_FILE};
use crate::spec::Board;
use crate::{progress, Global};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// qcow2 creation options, spelled out so another qemu-img version's defaults cannot change the file.
pub const QCOW2_OPTIONS: &str = "compat=1.1,cluster_size=65536,refcount_bits=16,lazy_refcounts=off,\
                                 extended_l2=off,compression_type=zlib,preallocation=off";

/// The mode a file or directory from the repository gets in the image: what git records (755 for
/// directories and executables, 644 for the rest), whatever umask the clone was checked out with.
pub fn checkout_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The first build's output directory (out/<board>/, holding manifest.json)
    #[arg(value_name = "FIRST")]
    pub first: PathBuf,
    /// The second build's output directory
    #[arg(value_name = "SECOND")]
    pub second: PathBuf,
}

/// One file compared.
#[derive(Clone, Debug, Serialize)]
pub struct Compared {
    pub file: String,
    pub identical: bool,
    /// Size and sha256 in the first build (absent if it does not have the file).
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// Where two builds first part.
#[derive(Clone, Debug, Serialize)]
pub struct Difference {
    pub file: String,
    /// Offset of the first differing byte (or the length of the shorter file when one is a prefix of
    /// the other); absent when the file is missing from one build.
    pub offset: Option<u64>,
    pub first_size: Option<u64>,
    pub second_size: Option<u64>,
    pub first_sha256: Option<String>,
    pub second_sha256: Option<String>,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub identical: bool,
    pub first: PathBuf,
    pub second: PathBuf,
    /// Every artifact, innermost layer first (squashfs, initramfs, UKI, disks, the rest), manifest.json last.
    pub files: Vec<Compared>,
    pub first_difference: Option<Difference>,
    /// Every file that differs, in the same order.
    pub different: Vec<String>,
}

/// Compares two build-image output directories: every artifact either manifest lists, then
/// manifest.json. Errors only when a directory cannot be read as an output directory at all.
pub fn compare_dirs(first: &Path, second: &Path) -> Result<Comparison> {
    let (_, a) =
        Manifest::load(first).with_context(|| format!("{} is not a build output directory", first.display()))?;
    let (_, b) =
        Manifest::load(second).with_context(|| format!("{} is not a build output directory", second.display()))?;
    let mut names: Vec<String> = a.artifacts.iter().map(|x| x.file.clone()).collect();
    for artifact in &b.artifacts {
        if !names.contains(&artifact.file) {
            names.push(artifact.file.clone());
        }
    }
    // Inner layers first: a difference in the root squashfs shows in the initramfs, the UKI and the
    // disks too, and the innermost is where it starts.
    names.sort_by_key(|name| layer_rank(name));
    names.push(MANIFEST_FILE.to_string());
    let listed = |m: &Manifest, name: &str| name == MANIFEST_FILE || m.artifacts.iter().any(|x| x.file == name);

    let mut files = Vec::new();
    let mut differences = Vec::new();
    for name in names {
        let (in_a, in_b) = (listed(&a, &name), listed(&b, &name));
        if !(in_a && in_b) {
            let (which, other) = if in_a { ("first", "second") } else { ("second", "first") };
            let path = if in_a { first.join(&name) } else { second.join(&name) };
            let digest = crate::digest::sha256_file(&path).ok();
            let size = std::fs::metadata(&path).ok().map(|m| m.len());
            files.push(Compared {
                file: name.clone(),
                identical: false,
                size: if in_a { size } else { None },
                sha256: if in_a { digest.clone() } else { None },
            });
            differences.push(Difference {
                file: name.clone(),
                offset: None,
                first_size: if in_a { size } else { None },
                second_size: if in_b { size } else { None },
                first_sha256: if in_a { digest.clone() } else { None },
                second_sha256: if in_b { digest } else { None },
                message: format!(
                    "only the {which} build's manifest.json lists it, the {other} build has no such artifact"
                ),
            });
            continue;
        }
        let result = compare_files(&first.join(&name), &second.join(&name))?;
        files.push(Compared {
            file: name.clone(),
            identical: result.offset.is_none(),
            size: Some(result.sizes.0),
            sha256: Some(result.sha256.0.clone()),
        });
        if let Some(offset) = result.offset {
            let message = if result.sizes.0 != result.sizes.1 && offset == result.sizes.0.min(result.sizes.1) {
                format!(
                    "sizes differ ({} and {} bytes) and the shorter is a prefix of the longer",
                    result.sizes.0, result.sizes.1
                )
            } else {
                format!("first differing byte at offset {offset} (0x{offset:x})")
            };
            differences.push(Difference {
                file: name.clone(),
                offset: Some(offset),
                first_size: Some(result.sizes.0),
                second_size: Some(result.sizes.1),
                first_sha256: Some(result.sha256.0),
                second_sha256: Some(result.sha256.1),
                message,
            });
        }
    }
    Ok(Comparison {
        identical: differences.is_empty(),
        first: first.to_path_buf(),
        second: second.to_path_buf(),
        files,
        different: differences.iter().map(|d| d.file.clone()).collect(),
        first_difference: differences.into_iter().next(),
    })
}

/// Where an artifact sits in the image, innermost first; the order within a rank is the manifest's.
fn layer_rank(name: &str) -> u8 {
    match name.rsplit('.').next() {
        Some("sqsh") => 0,
        Some("initramfs") => 1,
        Some("efi") => 2,
        Some("raw") => 3,
        Some("qcow2") => 4,
        _ => 5,
    }
}

struct FileComparison {
    sizes: (u64, u64),
    sha256: (String, String),
    /// First differing byte, if the files differ.
    offset: Option<u64>,
}

/// Reads both files once, side by side: their digests and the offset of the first difference.
fn compare_files(a: &Path, b: &Path) -> Result<FileComparison> {
    let open = |p: &Path| std::fs::File::open(p).with_context(|| format!("opening {}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ha, mut hb) = (Sha256::new(), Sha256::new());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let (mut size_a, mut size_b) = (0u64, 0u64);
    let mut offset = None;
    loop {
        let na = fill(&mut fa, &mut ba).with_context(|| format!("reading {}", a.display()))?;
        let nb = fill(&mut fb, &mut bb).with_context(|| format!("reading {}", b.display()))?;
        if offset.is_none() {
            let common = na.min(nb);
            if let Some(i) = ba[..common].iter().zip(&bb[..common]).position(|(x, y)| x != y) {
                offset = Some(size_a + i as u64);
            } else if na != nb {
                offset = Some(size_a + common as u64);
            }
        }
        ha.update(&ba[..na]);
        hb.update(&bb[..nb]);
        size_a += na as u64;
        size_b += nb as u64;
        if na == 0 && nb == 0 {
            break;
        }
    }
    Ok(FileComparison { sizes: (size_a, size_b), sha256: (hex(&ha.finalize()), hex(&hb.finalize())), offset })
}

/// Reads until `buf` is full or the file ends, so both files are compared at the same offsets.
fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn print_comparison(comparison: &Comparison) {
    let width = comparison.files.iter().map(|f| f.file.len()).max().unwrap_or(0);
    for f in &comparison.files {
        println!(
            "  {}  {:<width$} {:>12} bytes  sha256 {}",
            if f.identical { "identical" } else { "DIFFERENT" },
            f.file,
            f.size.map_or("-".to_string(), |s| s.to_string()),
            f.sha256.as_deref().unwrap_or("-")
        );
    }
    if let Some(d) = &comparison.first_difference {
        println!("first difference: {}: {}", d.file, d.message);
        if let (Some(a), Some(b)) = (&d.first_sha256, &d.second_sha256) {
            println!(
                "  first  {} ({} bytes, sha256 {a})",
                comparison.first.join(&d.file).display(),
                d.first_size.unwrap_or(0)
            );
            println!(
                "  second {} ({} bytes, sha256 {b})",
                comparison.second.join(&d.file).display(),
                d.second_size.unwrap_or(0)
            );
        }
    }
}

fn failure(comparison: &Comparison) -> anyhow::Error {
    match &comparison.first_difference {
        Some(d) => anyhow::anyhow!(
            "builds differ: {} ({}){}",
            d.file,
            d.message,
            if comparison.different.len() > 1 {
                format!("; also different: {}", comparison.different[1..].join(", "))
            } else {
                String::new()
            }
        ),
        None => anyhow::anyhow!("builds differ"),
    }
}

/// `cargo xtask compare-builds FIRST SECOND`.
pub fn compare_run(global: &Global, args: &CompareArgs) -> Result<()> {
    let comparison = compare_dirs(&args.first, &args.second)?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
    } else {
        if comparison.identical {
            println!(
                "identical: {} and {} hold the same {} files, byte for byte",
                args.first.display(),
                args.second.display(),
                comparison.files.len()
            );
        }
        print_comparison(&comparison);
    }
    if !comparison.identical {
        return Err(failure(&comparison));
    }
    Ok(())
}

/// How one of the two builds ran.
#[derive(Clone, Debug, Serialize)]
pub struct BuildRun {
    /// Holds out/, cache/ (empty at the start) and tmp/ of this build.
    pub dir: PathBuf,
    pub out_dir: PathBuf,
    pub machined_dir: PathBuf,
    pub spec: PathBuf,
    pub boards_dir: PathBuf,
    pub overlays_dir: PathBuf,
    pub umask: &'static str,
    pub tz: &'static str,
    pub locale: &'static str,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub identical: bool,
    pub board: String,
    pub image: String,
    pub version: String,
    pub arch: String,
    pub builds: Vec<BuildRun>,
    pub comparison: Comparison,
    /// Where both builds were kept for inspection (only when they differ).
    pub kept: Option<PathBuf>,
    pub seconds: f64,
}

/// `cargo xtask build-image --check-reproducible`: see the module doc.
pub fn check(global: &Global, args: &BuildImageArgs, board: &Board) -> Result<()> {
    let started = std::time::Instant::now();
    let exe = std::env::current_exe().context("finding the xtask executable to run the builds with")?;
    let root = tempfile::Builder::new()
        .prefix("xtask-reproducible-")
        .tempdir()
        .context("creating a temporary directory for the two builds")?;

    // Both builds read the inputs from copies taken at one moment (so an edit while the check runs
    // cannot tell them apart), at paths of different lengths: the second's copy is made from the
    // first's, with the group-writable modes a clone made under `umask 002` has.
    let repository = Inputs {
        machined_dir: crate::machined_build::crate_dir(),
        spec: global.spec_path(),
        boards_dir: global.boards_dir(),
        overlays_dir: global.overlays_dir(),
        board_file: match args.board.as_deref() {
            Some(b) if b.ends_with(".toml") || b.contains('/') => Some(PathBuf::from(b)),
            _ => None,
        },
    };
    let first_dir = root.path().join("1");
    let first_inputs = repository.copy(&first_dir.join("src"), 0o022)?;
    let second_dir = root.path().join("second-build").join("at/a/longer/path/in/another/clone");
    let second_inputs = first_inputs.copy(&second_dir.join("src"), 0o002)?;
    let board_arg = |inputs: &Inputs| -> Vec<String> {
        match (&inputs.board_file, args.board.as_deref()) {
            (Some(file), _) => vec!["--board".into(), file.display().to_string()],
            (None, Some(name)) => vec!["--board".into(), name.into()],
            (None, None) => vec!["--arch".into(), board.arch().to_string()],
        }
    };
    let first = Plan {
        dir: first_dir,
        board: board_arg(&first_inputs),
        inputs: first_inputs,
        umask: "0022",
        tz: "UTC",
        locale: "C",
    };
    let second = Plan {
        dir: second_dir,
        board: board_arg(&second_inputs),
        inputs: second_inputs,
        umask: "0007",
        // UTC+13:45 (a POSIX TZ string, so it needs no tzdata).
        tz: "XYZ-13:45",
        locale: "C.UTF-8",
    };

    let mut runs = Vec::new();
    for (label, plan) in [("first", &first), ("second", &second)] {
        let step = progress::step(format!("{label} build of {} (empty cache in {})", board.name, plan.dir.display()));
        let run = plan.run(&exe, global, &board.name).with_context(|| format!("the {label} build failed"))?;
        step.done();
        progress::note(format!("{label} build done in {:.1} s", run.seconds));
        runs.push(run);
    }
    let comparison = compare_dirs(&runs[0].out_dir, &runs[1].out_dir)?;
    let (_, manifest) = Manifest::load(&runs[0].out_dir)?;
    let kept = if comparison.identical { None } else { Some(root.keep()) };
    let report = CheckReport {
        identical: comparison.identical,
        board: board.name.clone(),
        image: manifest.image,
        version: manifest.version,
        arch: manifest.arch,
        builds: runs,
        comparison,
        kept,
        seconds: started.elapsed().as_secs_f64(),
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if report.identical {
            println!(
                "reproducible: {} {} for {}: two independent builds ({:.1} s and {:.1} s) gave {} identical files",
                report.image,
                report.version,
                report.board,
                report.builds[0].seconds,
                report.builds[1].seconds,
                report.comparison.files.len()
            );
        } else {
            println!("NOT reproducible: {} {} for {}", report.image, report.version, report.board);
        }
        print_comparison(&report.comparison);
        if let Some(kept) = &report.kept {
            println!("both builds are kept in {} (compare them with diffoscope)", kept.display());
        }
    }
    if !report.identical {
        return Err(failure(&report.comparison));
    }
    Ok(())
}

/// What a build reads from the repository.
struct Inputs {
    machined_dir: PathBuf,
    spec: PathBuf,
    boards_dir: PathBuf,
    overlays_dir: PathBuf,
    /// A board given as a file rather than by name.
    board_file: Option<PathBuf>,
}

impl Inputs {
    /// Copies the inputs under `to` in a repository's layout (machined/ — its Cargo.toml and src/ —
    /// beside the workspace Cargo.toml it inherits from, the spec and its lock in image-spec/, boards/,
    /// overlays/), as checked out with `umask`.
    fn copy(&self, to: &Path, umask: u32) -> Result<Inputs> {
        let machined_dir = to.join("machined");
        for part in ["Cargo.toml", "src"] {
            copy_tree(&self.machined_dir.join(part), &machined_dir.join(part), umask)?;
        }
        let workspace_manifest = self.machined_dir.parent().unwrap_or(Path::new(".")).join("Cargo.toml");
        if workspace_manifest.is_file() {
            copy_tree(&workspace_manifest, &to.join("Cargo.toml"), umask)?;
        }
        let spec_name =
            self.spec.file_name().with_context(|| format!("spec path {} has no file name", self.spec.display()))?;
        let spec = to.join("image-spec").join(spec_name);
        copy_tree(&self.spec, &spec, umask)?;
        let lock = self.spec.with_extension("lock");
        if lock.exists() {
            copy_tree(&lock, &spec.with_extension("lock"), umask)?;
        }
        copy_tree(&self.boards_dir, &to.join("boards"), umask)?;
        let overlays_dir = to.join("overlays");
        if self.overlays_dir.exists() {
            copy_tree(&self.overlays_dir, &overlays_dir, umask)?;
        }
        let board_file = match &self.board_file {
            Some(file) => {
                let copy = to.join("board").join(file.file_name().context("board path has no file name")?);
                copy_tree(file, &copy, umask)?;
                Some(copy)
            }
            None => None,
        };
        Ok(Inputs { machined_dir, spec, boards_dir: to.join("boards"), overlays_dir, board_file })
    }
}

/// One build of the check: a child xtask process in its own directories and environment.
struct Plan {
    dir: PathBuf,
    inputs: Inputs,
    board: Vec<String>,
    umask: &'static str,
    tz: &'static str,
    locale: &'static str,
}

impl Plan {
    fn run(&self, exe: &Path, global: &Global, board_name: &str) -> Result<BuildRun> {
        let (out, cache, tmp) = (self.dir.join("out"), self.dir.join("cache"), self.dir.join("tmp"));
        for dir in [&cache, &tmp] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let inputs = &self.inputs;
        let started = std::time::Instant::now();
        let mut build = cmd("sh")
            .args(["-c", "umask \"$1\" && shift && exec \"$@\"", "sh", self.umask])
            .arg(exe)
            .arg("--json")
            .arg("--out-dir")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--spec")
            .arg(&inputs.spec)
            .arg("--boards-dir")
            .arg(&inputs.boards_dir)
            .arg("--overlays-dir")
            .arg(&inputs.overlays_dir);
        if let Some(mirror) = &global.mirror {
            build = build.arg("--mirror").arg(mirror);
        }
        let stdout = build
            .arg("build-image")
            .args(&self.board)
            .dir(&self.dir)
            .env("TZ", self.tz)
            .env("LC_ALL", self.locale)
            .env("TMPDIR", &tmp)
            .env(crate::machined_build::CRATE_DIR_ENV, &inputs.machined_dir)
            // Nothing is signed here: the key stays out of the children.
            .env_remove(crate::keys::SIGNING_KEY_ENV)
            .read()?;
        let seconds = started.elapsed().as_secs_f64();
        let report: serde_json::Value =
            serde_json::from_str(&stdout).with_context(|| format!("reading the build's report: {stdout}"))?;
        let out_dir = report["out_dir"].as_str().map(PathBuf::from).unwrap_or_else(|| out.join(board_name));
        Ok(BuildRun {
            dir: self.dir.clone(),
            out_dir,
            machined_dir: inputs.machined_dir.clone(),
            spec: inputs.spec.clone(),
            boards_dir: inputs.boards_dir.clone(),
            overlays_dir: inputs.overlays_dir.clone(),
            umask: self.umask,
            tz: self.tz,
            locale: self.locale,
            seconds,
        })
    }
}

/// Copies a file or a tree as a checkout made with `umask` would have it: 0777/0666 less the umask,
/// by whether the source is a directory or executable. Symlinks are copied as links.
fn copy_tree(from: &Path, to: &Path, umask: u32) -> Result<()> {
    for entry in walkdir::WalkDir::new(from).sort_by_file_name() {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let rel = entry.path().strip_prefix(from).context("walkdir left its root")?;
        let dest = if rel.as_os_str().is_empty() { to.to_path_buf() } else { to.join(rel) };
        let kind = entry.file_type();
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mode =
            entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?.permissions().mode();
        if kind.is_dir() {
            std::fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o777 & !umask))?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            std::os::unix::fs::symlink(&target, &dest).with_context(|| format!("creating {}", dest.display()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &dest)
                .with_context(|| format!("copying {} to {}", entry.path().display(), dest.display()))?;
            let full = if mode & 0o111 != 0 { 0o777 } else { 0o666 };
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(full & !umask))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_modes_are_what_git_keeps() {
        assert_eq!(checkout_mode(0o664, false), 0o644);
        assert_eq!(checkout_mode(0o600, false), 0o644);
        assert_eq!(checkout_mode(0o775, false), 0o755);
        assert_eq!(checkout_mode(0o700, true), 0o755);
    }

    #[test]
    fn file_comparison_finds_the_first_differing_byte_across_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, &data).unwrap();
        let mut changed = data.clone();
        changed[2_500_001] ^= 1;
        changed[2_900_000] ^= 1;
        std::fs::write(&b, &changed).unwrap();
        let result = compare_files(&a, &b).unwrap();
        assert_eq!(result.offset, Some(2_500_001));
        assert_eq!(result.sizes, (3_000_000, 3_000_000));
        assert_ne!(result.sha256.0, result.sha256.1);
        std::fs::write(&b, &data[..1_048_577]).unwrap();
        assert_eq!(compare_files(&a, &b).unwrap().offset, Some(1_048_577));
        std::fs::write(&b, &data).unwrap();
        let same = compare_files(&a, &b).unwrap();
        assert_eq!(same.offset, None);
        assert_eq!(same.sha256.0, same.sha256.1);
    }
}

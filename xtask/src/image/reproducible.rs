//! Bit-for-bit reproducible builds, and the proof of it.
//!
//! `build-image --check-reproducible` builds the same image twice, in two separate processes that share
//! nothing but the mirror: each has its own empty download cache, output and temp directory (at paths
//! of different lengths), umask, time zone and locale, and they run one after the other. Each compiles
//! machined and reads the spec, lock, boards and overlays from its own copy of one snapshot of the
//! repository, the second at a longer path and with the file modes a clone made under another umask
//! has, as two clones would be. Then every artifact both manifests list, and manifest.json, is
//! compared byte for byte (compare.rs).
//!
//! What makes builds identical (ARCHITECTURE.md, "Invariants"): time comes only from
//! SOURCE_DATE_EPOCH; GUIDs and volume ids are derived; squashfs, cpio and FAT force owner and times;
//! every mode we create is set outright (never left to the umask) and overlay modes are reduced to
//! what git keeps (644/755); machined's source path is remapped; qemu-img writes in order with its
//! options spelled out (disk::QCOW2_OPTIONS).

use super::compare::{compare_dirs, Comparison};
use super::inputs::BuildInputs;
use super::manifest::Manifest;
use crate::initramfs::machined;
use crate::spec::workspace::Workspace;
use crate::spec::Board;
use crate::uki::secure_boot::DB_KEY_ENV;
use crate::util::cmd::cmd;
use crate::util::progress;
use anyhow::{Context, Result};
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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

/// The Secure Boot key set both builds sign with. Nothing of this process's environment reaches the
/// builds, so the db key, when it comes from the environment, is handed on explicitly.
pub struct Signing {
    pub keys_dir: PathBuf,
    pub db_key_env: Option<std::ffi::OsString>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub identical: bool,
    /// Both builds signed the UKI with the same Secure Boot key set.
    pub signed_for_secure_boot: bool,
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

/// `build-image --check-reproducible`: see the module doc. `board_arg` is the `--board` the user gave.
/// Identical or not, the report says so; an error means a build could not be made.
pub fn check(ws: &Workspace, board_arg: Option<&str>, board: &Board, signing: Option<&Signing>) -> Result<CheckReport> {
    let started = std::time::Instant::now();
    // Bad inputs fail here, once, rather than in both builds.
    BuildInputs::load(ws)?.lock(ws)?;
    let exe = std::env::current_exe().context("finding the xtask executable to run the builds with")?;
    let root = tempfile::Builder::new()
        .prefix("xtask-reproducible-")
        .tempdir()
        .context("creating a temporary directory for the two builds")?;

    // Both builds read the inputs from copies taken at one moment (so an edit while the check runs
    // cannot tell them apart), at paths of different lengths: the second's copy is made from the
    // first's, with the group-writable modes a clone made under `umask 002` has.
    let repository = Checkout {
        machined_dir: machined::crate_dir(),
        spec: ws.spec_path(),
        boards_dir: ws.boards_dir(),
        overlays_dir: ws.overlays_dir(),
        board_file: match board_arg {
            Some(b) if b.ends_with(".toml") || b.contains('/') => Some(PathBuf::from(b)),
            _ => None,
        },
    };
    let first_dir = root.path().join("1");
    let first_inputs = repository.copy(&first_dir.join("src"), 0o022)?;
    let second_dir = root.path().join("second-build").join("at/a/longer/path/in/another/clone");
    let second_inputs = first_inputs.copy(&second_dir.join("src"), 0o002)?;
    let board_arg = |inputs: &Checkout| -> Vec<String> {
        match (&inputs.board_file, board_arg) {
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
        let run = plan.run(&exe, ws, &board.name, signing).with_context(|| format!("the {label} build failed"))?;
        step.done();
        progress::note(format!("{label} build done in {:.1} s", run.seconds));
        runs.push(run);
    }
    let comparison = compare_dirs(&runs[0].out_dir, &runs[1].out_dir)?;
    let manifest = Manifest::load(&runs[0].out_dir)?;
    let kept = if comparison.identical { None } else { Some(root.keep()) };
    let report = CheckReport {
        identical: comparison.identical,
        signed_for_secure_boot: signing.is_some(),
        board: board.name.clone(),
        image: manifest.image,
        version: manifest.version,
        arch: manifest.arch.to_string(),
        builds: runs,
        comparison,
        kept,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(report)
}

/// What a build reads from the repository.
struct Checkout {
    machined_dir: PathBuf,
    spec: PathBuf,
    boards_dir: PathBuf,
    overlays_dir: PathBuf,
    /// A board given as a file rather than by name.
    board_file: Option<PathBuf>,
}

impl Checkout {
    /// Copies the inputs under `to` in a repository's layout (machined/ — its Cargo.toml and src/ —
    /// with the workspace's manifests and Cargo.lock it builds from, the spec and its lock in image-spec/, boards/,
    /// overlays/), as checked out with `umask`.
    fn copy(&self, to: &Path, umask: u32) -> Result<Checkout> {
        // machined builds from the workspace: its manifests and the one lockfile, beside machined/src.
        let machined_dir = to.join("machined");
        let workspace = self.machined_dir.parent().unwrap_or(Path::new("."));
        for rel in machined::WORKSPACE_FILES {
            copy_tree(&workspace.join(rel), &to.join(rel), umask)?;
        }
        copy_tree(&self.machined_dir.join("src"), &machined_dir.join("src"), umask)?;
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
        Ok(Checkout { machined_dir, spec, boards_dir: to.join("boards"), overlays_dir, board_file })
    }
}

/// One build of the check: a child xtask process in its own directories and environment.
struct Plan {
    dir: PathBuf,
    inputs: Checkout,
    board: Vec<String>,
    umask: &'static str,
    tz: &'static str,
    locale: &'static str,
}

impl Plan {
    fn run(&self, exe: &Path, ws: &Workspace, board_name: &str, signing: Option<&Signing>) -> Result<BuildRun> {
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
        if let Some(mirror) = &ws.mirror {
            build = build.arg("--mirror").arg(mirror);
        }
        // Nothing of this process's configuration reaches the children but what is passed on here:
        // no XTASK_* variable (the minisign key among them: nothing is minisign-signed here), and the
        // Secure Boot key set only explicitly.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("XTASK_") {
                build = build.env_remove(key);
            }
        }
        build = build.arg("build-image").args(&self.board);
        if let Some(signing) = signing {
            build = build.arg("--secure-boot-keys").arg(&signing.keys_dir);
            if let Some(db_key) = &signing.db_key_env {
                build = build.env(DB_KEY_ENV, db_key);
            }
        }
        let stdout = build
            .dir(&self.dir)
            .env("TZ", self.tz)
            .env("LC_ALL", self.locale)
            .env("TMPDIR", &tmp)
            .env(machined::CRATE_DIR_ENV, &inputs.machined_dir)
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

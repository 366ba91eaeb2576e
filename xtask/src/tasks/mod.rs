//! The commands: one thin file each, holding its clap arguments, its `run`, and its printing. Only
//! this layer may use every stage; nothing uses it.

pub mod bench;
pub mod boot_test;
pub mod build_image;
pub mod check_extension;
pub mod check_layout;
pub mod compare_builds;
pub mod fetch;
pub mod host_tools;
pub mod keygen;
pub mod lock;
pub mod outdated;
pub mod release;
pub mod sign;
pub mod test_garage;
pub mod upload;
pub mod verify;

use crate::spec::workspace::Workspace;
use crate::spec::{select_board, Arch};
use anyhow::{ensure, Result};
use clap::Args;
use std::path::{Path, PathBuf};

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
    /// Debian archive URL for every suite [default: per suite, the host's apt sources]
    #[arg(long, global = true, env = "XTASK_DEBIAN_MIRROR")]
    pub mirror: Option<String>,
    /// Debian archive URL for one suite, as SUITE=URL (repeatable; XTASK_SUITE_MIRRORS takes a
    /// comma-separated list), e.g. trixie-security=http://mirror.example/debian-security
    #[arg(
        long = "suite-mirror",
        global = true,
        env = "XTASK_SUITE_MIRRORS",
        value_delimiter = ',',
        value_name = "SUITE=URL"
    )]
    pub suite_mirrors: Vec<String>,
    /// Print the result as JSON on stdout (for CI)
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    pub fn workspace(&self) -> Workspace {
        Workspace::new(
            self.spec.clone(),
            self.boards_dir.clone(),
            self.overlays_dir.clone(),
            self.out_dir.clone(),
            self.cache_dir.clone(),
            self.mirror.clone(),
            self.suite_mirrors.clone(),
        )
    }
}

/// `--arch` / `--board`: which out/<board>/ a command on an output directory works on, when it is not
/// given outright as DIR.
#[derive(Args, Clone, Debug)]
pub struct BoardDir {
    /// out/<board>/ of the default board for this arch
    #[arg(long)]
    pub arch: Option<Arch>,
    /// out/<board>/ of this board (a name in boards/ or a path to its .toml)
    #[arg(long)]
    pub board: Option<String>,
}

impl BoardDir {
    /// `dir` when given, else the output directory `--arch`/`--board` point at.
    pub fn resolve(&self, global: &Global, dir: Option<&Path>) -> Result<PathBuf> {
        target_dir(&global.workspace(), dir, self.board.as_deref(), self.arch)
    }
}

/// The output directory `--arch`/`--board` point at, unless one was given outright.
pub fn target_dir(ws: &Workspace, dir: Option<&Path>, board: Option<&str>, arch: Option<Arch>) -> Result<PathBuf> {
    if let Some(dir) = dir {
        ensure!(board.is_none() && arch.is_none(), "give either DIR or --arch/--board, not both");
        return Ok(dir.to_path_buf());
    }
    ensure!(board.is_some() || arch.is_some(), "say which directory: DIR, or --arch/--board for out/<board>/");
    let board = select_board(&ws.boards_dir(), board, arch)?;
    Ok(ws.board_out_dir(&board.name))
}

/// Prints a report as pretty JSON on stdout.
pub fn print_json(report: &impl serde::Serialize) -> Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let json = serde_json::to_string_pretty(report).context("serializing the report")?;
    writeln!(std::io::stdout(), "{json}").context("writing to stdout")
}

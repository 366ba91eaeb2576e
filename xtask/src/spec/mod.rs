//! Image specs (`image-spec/*.toml`) and boards (`boards/*.toml`): what to build and what to build it for.
//! Parsing is strict: an unknown key, a wrong type or a missing field is an error naming the file, the
//! line and the column, because a typo silently ignored would ship a different image than the one asked for.

pub mod glob;
pub mod names;
#[allow(dead_code)] // machined's side of the contract is in there too
#[path = "../../../machined/src/protocol.rs"]
pub mod protocol;
pub mod workspace;

use anyhow::{bail, Context, Result};
use protocol::{NETWORK_WAIT_ARG, SCRATCH_SERIAL_ARG, WRITABLE_DIRS};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The longest `[network] ready-wait-secs` a board may ask for.
const NETWORK_WAIT_LIMIT: u64 = 60;

/// A target CPU architecture, named as Debian names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target triple machined is compiled for.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Debian's multiarch triplet: where the arch's libraries lie (`/usr/lib/<triplet>`).
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The removable-media boot path firmware looks for on the ESP.
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::Amd64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// systemd-stub's file name inside the systemd-boot-efi package.
    pub fn efi_stub_file(self) -> &'static str {
        match self {
            Arch::Amd64 => "linuxx64.efi.stub",
            Arch::Arm64 => "linuxaa64.efi.stub",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

/// `image-spec/<name>.toml`: the image, independent of the board it runs on.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSpec {
    /// Image name; artifacts are `<name>-<arch>.*`.
    pub name: String,
    /// Image version, reported by machined at boot and checked by boot-test.
    pub version: String,
    /// Debian suites the packages come from, the release first, then its update suites, e.g.
    /// ["trixie", "trixie-updates", "trixie-security"]. A package's newest version across them wins.
    pub suites: Vec<String>,
    /// Archive components to search, e.g. ["main"].
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Packages installed into the root filesystem, with their Depends/Pre-Depends closure.
    pub packages: Vec<String>,
    /// Packages never installed; a dependency that only they satisfy is dropped (they exist to run
    /// maintainer scripts or give an interactive system, neither of which this image has).
    #[serde(default)]
    pub exclude_packages: Vec<String>,
    /// Directories under `overlays/` copied over the root filesystem, in order.
    #[serde(default)]
    pub overlays: Vec<String>,
    /// Extra kernel command-line arguments, after the board's.
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Board kernel arguments to leave out: an entry with `=` removes that exact argument, one without
    /// removes every argument with that key (`console` removes `console=ttyS0`).
    #[serde(default)]
    pub kernel_args_remove: Vec<String>,
    /// System extensions (directories under `overlays/extensions/`) baked into the initramfs as
    /// squashfs layers, in mount order.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Files removed from the root tree after the packages and overlays are in place (path globs such
    /// as `/usr/sbin/e2scrub*`, `**` for any depth): package files the image has no use for, like shell
    /// scripts that could never run without a shell. Each must match something.
    #[serde(default)]
    pub drop_files: Vec<String>,
    /// More files the no-shell policy refuses in any layer, besides its built-in list: basenames
    /// (`runuser`) or path globs (`/usr/bin/apt*`).
    #[serde(default)]
    pub deny_files: Vec<String>,
    /// Directories of the read-only root that get a writable overlay on the scratch disk at boot:
    /// what a CNI add-on or a kubelet writes to (/etc/cni, /opt/cni/bin, ...). The rest of the root
    /// stays read-only.
    #[serde(default)]
    pub writable_paths: Vec<String>,
    /// Directories of the kernel's module tree (relative to its `kernel/` directory, e.g. "net" or
    /// "drivers/net") shipped in the root, so that the kernel can load their modules on demand; the
    /// boot modules and every dependency come along.
    #[serde(default)]
    pub on_demand_modules: Vec<String>,
    /// The CNI plugins (names in Debian's /usr/lib/cni) the root carries, each linked into
    /// /opt/cni/bin; the package's others are left out. A CNI such as Cilium installs its own plugin
    /// into the writable /opt/cni/bin, so the default is the few a plain bridge network needs.
    #[serde(default = "default_cni_plugins")]
    pub cni_plugins: Vec<String>,
}

/// The CNI plugins a root carries when the spec does not say: a bridge network with host-local
/// addresses and host ports, and the loopback every pod needs (the reference plugins' basic set).
pub const DEFAULT_CNI_PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

fn default_cni_plugins() -> Vec<String> {
    DEFAULT_CNI_PLUGINS.iter().map(|p| p.to_string()).collect()
}

/// Where writable-paths may not point: already writable, or the kernel's.
const NOT_WRITABLE_PATHS: [&str; 6] = ["/var", "/run", "/tmp", "/proc", "/sys", "/dev"];

fn default_components() -> Vec<String> {
    vec!["main".to_string()]
}

/// `boards/<name>.toml`: one target machine.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BoardFile {
    pub arch: Arch,
    /// Whether `--arch <arch>` picks this board; exactly one board per arch says so.
    #[serde(default)]
    pub default: bool,
    /// The Debian kernel package (a metapackage is followed to its linux-image-* package).
    pub kernel_package: String,
    /// The serial console device, e.g. "ttyS0".
    pub console: String,
    /// Board-specific kernel arguments (before the spec's).
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// Kernel modules machined loads before mounting the root; their `depends=` closure is added.
    pub boot_modules: Vec<String>,
    pub firmware: Firmware,
    /// The firmware that enforces Secure Boot, for a build signed with a Secure Boot key: build-image
    /// enrols the key set into a copy of its variable store template; `boot-test --secure-boot` boots
    /// it. Without it, a signed build has no variable store and the board cannot boot-test Secure Boot.
    #[serde(default)]
    pub secure_boot: Option<SecureBootFirmware>,
    pub qemu: Qemu,
    pub disk: Disk,
    /// How machined finds the node's scratch disk (encrypted, formatted every boot, mounted on /var).
    /// Without it, /var is a tmpfs.
    #[serde(default)]
    pub scratch_disk: Option<ScratchDisk>,
    /// The node's network: NIC drivers and how long readiness may wait for it.
    #[serde(default)]
    pub network: Option<Network>,
}

/// `[network]`: what the board's NICs need.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Network {
    /// NIC drivers machined loads at boot, after the boot modules (with their depends= closure).
    pub modules: Vec<String>,
    /// How long the node's readiness may wait for its addresses (and first DHCP leases); the network's
    /// own readiness is reported apart. Reaches machined as `machined.network-wait=<secs>`.
    pub ready_wait_secs: u64,
}

/// `[scratch-disk]`: the rule naming the scratch disk. It reaches machined as the kernel argument
/// `machined.scratch-serial=<serial>`, added to the board's kernel-args when the board is loaded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScratchDisk {
    /// The disk's serial number (/sys/block/<disk>/serial; virtio-blk's `serial=` property, at most
    /// 20 bytes). machined never takes a disk that holds a partition table, whatever its serial.
    pub serial: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Firmware {
    /// Debian package that provides the UEFI firmware files.
    pub package: String,
    /// Read-only firmware code (pflash unit 0).
    pub code: PathBuf,
    /// Variable store template (pflash unit 1, used as a snapshot).
    pub vars: PathBuf,
}

/// `[secure-boot]`: the board's UEFI firmware in its Secure Boot build (same package as `[firmware]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecureBootFirmware {
    /// Firmware code that checks every image it starts against the enrolled db (pflash unit 0).
    pub code: PathBuf,
    /// A variable store to enrol into: its own PK, KEK, db and dbx (if any) are deleted, ours set, and
    /// Secure Boot turned on. Must hold a formatted store (an all-zero file cannot be edited).
    pub vars_template: PathBuf,
    /// Whether `code` keeps the variables in SMM, so QEMU needs `smm=on` and a secure pflash (without
    /// them OVMF's Secure Boot build hangs silently before printing anything).
    #[serde(default)]
    pub smm: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Qemu {
    /// The emulator binary, e.g. "qemu-system-aarch64".
    pub binary: String,
    /// Debian package that provides it.
    pub package: String,
    pub machine: String,
    #[serde(default)]
    pub cpu: Option<String>,
    pub memory_mib: u32,
    pub smp: u32,
    /// How long boot-test waits for the status line before failing.
    pub boot_timeout_secs: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    /// Size of the whole GPT disk.
    pub size_mib: u64,
    /// Output formats: "raw" (the disk as it is), "qcow2", "raw.zst" (the raw disk compressed with
    /// zstd, as Talos ships its images for download).
    pub formats: Vec<DiskFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
    #[serde(rename = "raw.zst")]
    RawZst,
}

/// A board with the name it was loaded under.
#[derive(Clone, Debug)]
pub struct Board {
    pub name: String,
    pub path: PathBuf,
    pub file: BoardFile,
}

impl Board {
    pub fn arch(&self) -> Arch {
        self.file.arch
    }
}

/// Reads and strictly parses one TOML file, with errors naming the file, line and column.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let position = e.span().map(|span| {
            let (line, column) = line_column(&text, span.start);
            format!(":{line}:{column}")
        });
        anyhow::anyhow!("{}{}: {}", path.display(), position.unwrap_or_default(), e.message())
    })
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, column)
}

pub fn load_spec(path: &Path) -> Result<ImageSpec> {
    let spec: ImageSpec = load_toml(path)?;
    let bad_name = |s: &str| s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if bad_name(&spec.name) {
        bail!(
            "{}: field `name`: {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
            path.display(),
            spec.name
        );
    }
    if bad_name(&spec.version) {
        bail!(
            "{}: field `version`: {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
            path.display(),
            spec.version
        );
    }
    if spec.packages.is_empty() {
        bail!("{}: field `packages`: must name at least one package", path.display());
    }
    check_fields(&spec, path)?;
    Ok(spec)
}

impl ImageSpec {
    /// The Debian release the image is made of: the first suite ("trixie").
    pub fn release(&self) -> &str {
        self.suites.first().map_or("", String::as_str)
    }
}

/// Checks the fields whose values have a syntax of their own, naming the field on error.
fn check_fields(spec: &ImageSpec, path: &Path) -> Result<()> {
    let field = |name: &str| format!("{}: field `{name}`", path.display());
    if spec.suites.is_empty() {
        bail!("{}: must name at least one suite, the release first (\"trixie\")", field("suites"));
    }
    let mut seen_suites = std::collections::BTreeSet::new();
    for suite in &spec.suites {
        if suite.is_empty() || !suite.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            bail!("{}: {suite:?} is not a Debian suite name (lowercase letters, digits and '-')", field("suites"));
        }
        if !seen_suites.insert(suite) {
            bail!("{}: {suite:?} is listed twice", field("suites"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in &spec.extensions {
        if !names::valid_name(name) {
            bail!(
                "{}: {name:?} is not an extension name (lowercase letters, digits, '-' and '_')",
                field("extensions")
            );
        }
        if !seen.insert(name) {
            bail!("{}: {name:?} is listed twice", field("extensions"));
        }
    }
    for pattern in &spec.drop_files {
        glob::path_glob(pattern).with_context(|| field("drop-files"))?;
    }
    for pattern in &spec.deny_files {
        glob::DenyPattern::parse(pattern).with_context(|| field("deny-files"))?;
    }
    let mut seen_paths = std::collections::BTreeSet::new();
    for dir in &spec.writable_paths {
        let clean = dir.starts_with('/')
            && dir.len() > 1
            && !dir.ends_with('/')
            && dir[1..].split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            bail!("{}: {dir:?} must be a clean absolute path (like /etc/cni)", field("writable-paths"));
        }
        if let Some(base) = NOT_WRITABLE_PATHS.iter().find(|b| dir == *b || dir.starts_with(&format!("{b}/"))) {
            bail!("{}: {dir:?} is under {base}, which is not part of the read-only root", field("writable-paths"));
        }
        if !seen_paths.insert(dir) {
            bail!("{}: {dir:?} is listed twice", field("writable-paths"));
        }
        if WRITABLE_DIRS.contains(&dir.as_str()) {
            bail!("{}: {dir:?} is always writable (machined's own list); remove the entry", field("writable-paths"));
        }
    }
    // One overlay inside another would hide the inner one's upper layer behind the outer's.
    let all_writable: Vec<&str> =
        WRITABLE_DIRS.iter().copied().chain(spec.writable_paths.iter().map(|d| d.as_str())).collect();
    for dir in &spec.writable_paths {
        if let Some(outer) = all_writable.iter().find(|o| dir.starts_with(&format!("{o}/"))) {
            bail!(
                "{}: {dir:?} is inside {outer:?}, which is writable already; remove the entry",
                field("writable-paths")
            );
        }
        if let Some(inner) = all_writable.iter().find(|i| i.starts_with(&format!("{dir}/"))) {
            bail!("{}: {dir:?} contains {inner:?}, another writable path; keep one of them", field("writable-paths"));
        }
    }
    for dir in &spec.on_demand_modules {
        let clean = !dir.is_empty() && dir.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean {
            bail!(
                "{}: {dir:?} must be a directory under the module tree's kernel/ (like \"net\" or \"drivers/net\")",
                field("on-demand-modules")
            );
        }
    }
    let mut seen_plugins = std::collections::BTreeSet::new();
    for plugin in &spec.cni_plugins {
        if !names::valid_name(plugin) {
            bail!("{}: {plugin:?} is not a CNI plugin name (like \"bridge\" or \"host-local\")", field("cni-plugins"));
        }
        if !seen_plugins.insert(plugin) {
            bail!("{}: {plugin:?} is listed twice", field("cni-plugins"));
        }
    }
    for arg in &spec.kernel_args_remove {
        if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("{}: {arg:?} must be one kernel argument (non-empty, no spaces)", field("kernel-args-remove"));
        }
    }
    Ok(())
}

/// Whether `arg` is removed by `kernel-args-remove`: an entry with `=` removes exactly that argument,
/// an entry without removes the key with any value (and the bare flag).
pub fn kernel_arg_removed(remove: &[String], arg: &str) -> bool {
    let key = arg.split_once('=').map_or(arg, |(key, _)| key);
    remove.iter().any(|entry| if entry.contains('=') { entry == arg } else { entry == key })
}

/// The kernel command line: the board's arguments less those the spec removes, then the spec's.
pub fn kernel_cmdline(board: &Board, spec: &ImageSpec) -> String {
    let kept = board.file.kernel_args.iter().filter(|arg| !kernel_arg_removed(&spec.kernel_args_remove, arg));
    kept.chain(&spec.kernel_args).cloned().collect::<Vec<_>>().join(" ")
}

/// Every board in `dir`, sorted by name.
pub fn load_boards(dir: &Path) -> Result<Vec<Board>> {
    let mut boards = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing the boards in {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            boards.push(load_board_file(&path)?);
        }
    }
    boards.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(boards)
}

pub fn load_board_file(path: &Path) -> Result<Board> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .with_context(|| format!("{}: board file name is not UTF-8", path.display()))?
        .to_string();
    let mut file: BoardFile = load_toml(path)?;
    if file.kernel_args.iter().any(|a| a.starts_with(&format!("{SCRATCH_SERIAL_ARG}="))) {
        bail!(
            "{}: field `kernel-args`: set the scratch disk with `[scratch-disk] serial`, not {SCRATCH_SERIAL_ARG}=",
            path.display()
        );
    }
    if let Some(scratch) = &file.scratch_disk {
        let serial = &scratch.serial;
        if serial.is_empty()
            || serial.len() > 20
            || !serial.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!(
                "{}: field `scratch-disk.serial`: {serial:?} must be 1 to 20 ASCII letters, digits, '-', '_' or '.'",
                path.display()
            );
        }
        file.kernel_args.push(format!("{SCRATCH_SERIAL_ARG}={serial}"));
    }
    if file.kernel_args.iter().any(|a| a.starts_with(&format!("{NETWORK_WAIT_ARG}="))) {
        bail!(
            "{}: field `kernel-args`: set the network wait with `[network] ready-wait-secs`, not {NETWORK_WAIT_ARG}=",
            path.display()
        );
    }
    if let Some(network) = &file.network {
        if network.ready_wait_secs > NETWORK_WAIT_LIMIT {
            bail!(
                "{}: field `network.ready-wait-secs`: {} is over {NETWORK_WAIT_LIMIT} (readiness would wait longer than a boot may take)",
                path.display(),
                network.ready_wait_secs
            );
        }
        file.kernel_args.push(format!("{NETWORK_WAIT_ARG}={}", network.ready_wait_secs));
    }
    Ok(Board { name, path: path.to_path_buf(), file })
}

/// Picks the board named by `--board` (a name in `boards_dir` or a path to a .toml), else the default
/// board for `--arch`. With both, they must agree.
pub fn select_board(boards_dir: &Path, board: Option<&str>, arch: Option<Arch>) -> Result<Board> {
    let chosen = match board {
        Some(name) if name.ends_with(".toml") || name.contains('/') => load_board_file(Path::new(name))?,
        Some(name) => {
            let path = boards_dir.join(format!("{name}.toml"));
            if !path.exists() {
                let known: Vec<String> = load_boards(boards_dir)?.into_iter().map(|b| b.name).collect();
                bail!("unknown board {name:?}: no {} (known boards: {})", path.display(), known.join(", "));
            }
            load_board_file(&path)?
        }
        None => {
            let arch = arch.context("say which target: --arch amd64|arm64 or --board NAME")?;
            let defaults: Vec<Board> =
                load_boards(boards_dir)?.into_iter().filter(|b| b.arch() == arch && b.file.default).collect();
            match defaults.len() {
                1 => defaults.into_iter().next().expect("one element"),
                0 => bail!("no board in {} has `arch = \"{arch}\"` and `default = true`", boards_dir.display()),
                _ => bail!(
                    "several boards in {} are the default for {arch}: {}",
                    boards_dir.display(),
                    defaults.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    if let Some(arch) = arch {
        if chosen.arch() != arch {
            bail!("board {} is for {}, not {arch}", chosen.name, chosen.arch());
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn scratch_disk_rule_becomes_a_kernel_argument() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(crate::util::paths::repo_root().join("boards/qemu-arm64.toml")).unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, &text).unwrap();
        let board = load_board_file(&path).unwrap();
        let serial = &board.file.scratch_disk.as_ref().unwrap().serial;
        assert!(board.file.kernel_args.contains(&format!("{SCRATCH_SERIAL_ARG}={serial}")));

        let without: String = text
            .lines()
            .filter(|l| !l.contains("scratch-disk") && !l.starts_with("serial"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, &without).unwrap();
        let board = load_board_file(&path).unwrap();
        assert!(board.file.scratch_disk.is_none());
        assert!(!board.file.kernel_args.iter().any(|a| a.starts_with(SCRATCH_SERIAL_ARG)));

        std::fs::write(&path, text.replace(&format!("serial = \"{serial}\""), "serial = \"has space\"")).unwrap();
        let err = format!("{:#}", load_board_file(&path).unwrap_err());
        assert!(err.contains("scratch-disk.serial"), "{err}");
        std::fs::write(&path, text.replace("kernel-args = [", "kernel-args = [\"machined.scratch-serial=x\", "))
            .unwrap();
        let err = format!("{:#}", load_board_file(&path).unwrap_err());
        assert!(err.contains("[scratch-disk]"), "{err}");
    }

    #[test]
    fn secure_boot_table_is_strict_and_optional() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        for board in ["qemu-amd64", "qemu-arm64"] {
            let text =
                std::fs::read_to_string(crate::util::paths::repo_root().join(format!("boards/{board}.toml"))).unwrap();
            std::fs::write(&path, &text).unwrap();
            let secure_boot = load_board_file(&path).unwrap().file.secure_boot.expect("both boards have [secure-boot]");
            assert_eq!(secure_boot.smm, board == "qemu-amd64");
            std::fs::write(&path, text.replace("vars-template =", "vars-templat =")).unwrap();
            let err = format!("{:#}", load_board_file(&path).unwrap_err());
            assert!(err.contains("b.toml:") && err.contains("vars-templat"), "{err}");
            let start = text.find("[secure-boot]").unwrap();
            let end = text[start..].find("\n\n").map_or(text.len(), |e| start + e);
            std::fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
            assert!(load_board_file(&path).unwrap().file.secure_boot.is_none());
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(
            &path,
            "name = \"n\"\nversion = \"1\"\nsuites = [\"bookworm\"]\npackages = [\"a\"]\npakages = 1\n",
        )
        .unwrap();
        let err = format!("{:#}", load_spec(&path).unwrap_err());
        assert!(err.contains("x.toml:5:1"), "{err}");
        assert!(err.contains("pakages"), "{err}");
    }

    #[test]
    fn kernel_args_are_removed_by_key_or_exactly() {
        let remove = vec!["console".to_string(), "quiet=1".to_string()];
        assert!(kernel_arg_removed(&remove, "console=ttyS0"));
        assert!(kernel_arg_removed(&remove, "console"));
        assert!(kernel_arg_removed(&remove, "quiet=1"));
        assert!(!kernel_arg_removed(&remove, "quiet"));
        assert!(!kernel_arg_removed(&remove, "consoleblank=0"));
    }

    #[test]
    fn bad_globs_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let mut spec =
            toml::from_str::<ImageSpec>("name = \"n\"\nversion = \"1\"\nsuites = [\"bookworm\"]\npackages = [\"a\"]\n")
                .unwrap();
        spec.drop_files = vec!["usr/bin/x".into()];
        let err = format!("{:#}", check_fields(&spec, &path).unwrap_err());
        assert!(err.contains("field `drop-files`") && err.contains("absolute"), "{err}");
        spec.drop_files.clear();
        spec.deny_files = vec!["/usr/[bin".into()];
        let err = format!("{:#}", check_fields(&spec, &path).unwrap_err());
        assert!(err.contains("field `deny-files`"), "{err}");
        spec.deny_files.clear();
        spec.extensions = vec!["Bad Name".into()];
        assert!(format!("{:#}", check_fields(&spec, &path).unwrap_err()).contains("field `extensions`"));
    }

    #[test]
    fn network_section_becomes_a_kernel_argument_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(crate::util::paths::repo_root().join("boards/qemu-arm64.toml")).unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, &text).unwrap();
        let board = load_board_file(&path).unwrap();
        let wait = board.file.network.as_ref().unwrap().ready_wait_secs;
        assert!(board.file.kernel_args.contains(&format!("{NETWORK_WAIT_ARG}={wait}")));
        std::fs::write(&path, text.replace(&format!("ready-wait-secs = {wait}"), "ready-wait-secs = 999")).unwrap();
        let err = format!("{:#}", load_board_file(&path).unwrap_err());
        assert!(err.contains("b.toml: field `network.ready-wait-secs`: 999 is over 60"), "{err}");
        std::fs::write(&path, text.replace("kernel-args = [", "kernel-args = [\"machined.network-wait=1\", ")).unwrap();
        let err = format!("{:#}", load_board_file(&path).unwrap_err());
        assert!(err.contains("[network] ready-wait-secs"), "{err}");
        std::fs::write(&path, text.replace("ready-wait-secs", "ready-wait")).unwrap();
        let err = format!("{:#}", load_board_file(&path).unwrap_err());
        assert!(err.contains("b.toml:") && err.contains("ready-wait"), "{err}");
    }

    #[test]
    fn writable_paths_and_module_dirs_are_checked_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(crate::util::paths::repo_root().join("image-spec/node.toml")).unwrap();
        let path = dir.path().join("node.toml");
        let with = |from: &str, to: &str| -> String {
            assert!(text.contains(from), "{from}");
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
            format!("{:#}", load_spec(&path).unwrap_err())
        };
        let paths = "writable-paths = [\"/etc/cni\"";
        for (bad, why) in [
            ("\"/var/lib/cni\"", "is under /var"),
            ("\"/proc/x\"", "is under /proc"),
            ("\"etc/cni\"", "must be a clean absolute path"),
            ("\"/etc/../cni\"", "must be a clean absolute path"),
            ("\"/etc/cni/\"", "must be a clean absolute path"),
            ("\"/etc/cni\", \"/etc/cni\"", "is listed twice"),
            ("\"/etc/iscsi\", \"/etc/cni\"", "is always writable"),
            ("\"/etc/cni/net.d\", \"/etc/cni\"", "is inside \"/etc/cni\""),
            ("\"/etc\", \"/etc/cni\"", "contains \"/etc/iscsi\""),
        ] {
            let err = with(paths, &format!("writable-paths = [{bad}"));
            assert!(err.contains("node.toml: field `writable-paths`") && err.contains(why), "{bad}: {err}");
        }
        for (bad, why) in [("\"../dhcp\"", "is not a CNI plugin name"), ("\"bridge\", \"bridge\"", "is listed twice")] {
            let err = with("cni-plugins = [", &format!("cni-plugins = [{bad}, "));
            assert!(err.contains("node.toml: field `cni-plugins`") && err.contains(why), "{bad}: {err}");
        }
        let err = with("on-demand-modules = [", "on-demand-modules = [\"../kernel\", ");
        assert!(err.contains("field `on-demand-modules`: \"../kernel\""), "{err}");
        let line = text.lines().position(|l| l.starts_with("writable-paths")).unwrap() + 1;
        let err = with("writable-paths = [", "writable-paths = [1, ");
        assert!(err.contains(&format!("node.toml:{line}:")) && err.contains("expected a string"), "{err}");
    }

    #[test]
    fn a_spec_without_cni_plugins_gets_the_small_default_set() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(crate::util::paths::repo_root().join("image-spec/node.toml")).unwrap();
        let without: String =
            text.lines().filter(|l| !l.starts_with("cni-plugins")).map(|l| format!("{l}\n")).collect();
        assert_ne!(without, text, "node.toml has no cni-plugins line");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, without).unwrap();
        assert_eq!(load_spec(&path).unwrap().cni_plugins, DEFAULT_CNI_PLUGINS);
    }
}

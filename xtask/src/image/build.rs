//! `cargo xtask build-image`: spec → locked packages → root squashfs → initramfs → UKI → ESP → GPT
//! disk (+ qcow2) → manifest.json, in out/<board>/. Everything is built in a staging directory inside
//! the board's output directory and renamed into place only when complete, so a failed or interrupted
//! build leaves the previous outputs as they were.

use crate::cpio::CpioWriter;
use crate::debian::lockfile::LockedPackage;
use crate::digest::{hex, sha256_file};
use crate::gpt::{Guid, PartitionContents, PartitionSize, PartitionSpec};
use crate::kmod::ModuleTree;
use crate::spec::{self, Arch, Board, DiskFormat, ImageSpec};
use crate::{cmd::cmd, hosttools, progress, Global};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct BuildImageArgs {
    /// Target architecture; picks that arch's default board
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Board name (in boards/) or path to a board file
    #[arg(long)]
    pub board: Option<String>,
    /// Sign out/<board>/ once it is published (a .minisig per artifact and SHA256SUMS, as `cargo xtask
    /// sign` does) with this unencrypted minisign secret key (mode 0600). Without it, $XTASK_SIGNING_KEY
    /// (the key file's contents) is used when set; with neither, the build is unsigned. Either way the
    /// signatures and SHA256SUMS of an earlier build are removed before the new artifacts are published
    #[arg(long, value_name = "FILE")]
    pub secret_key: Option<PathBuf>,
    /// Instead of publishing, build twice (separate processes, empty caches, output and temp
    /// directories at different paths, a different umask and time zone, machined, spec, boards and
    /// overlays read from two copies at different paths, as two clones would have them) and compare
    /// every artifact byte for byte. Prints the digests when identical; else the first differing
    /// artifact and byte offset, keeps both builds for inspection and exits non-zero
    #[arg(long, conflicts_with = "secret_key")]
    pub check_reproducible: bool,
}

/// `out/<board>/manifest.json`: what was built, from what, with each artifact's size and digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub image: String,
    pub version: String,
    pub arch: Arch,
    pub board: String,
    pub source_date_epoch: i64,
    /// sha256 of the lockfile the packages came from.
    pub lock_sha256: String,
    pub kernel: String,
    pub cmdline: String,
    /// System extensions baked into the initramfs, in mount order (absent in older manifests).
    #[serde(default)]
    pub extensions: Vec<crate::extensions::LayerRecord>,
    pub artifacts: Vec<Artifact>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

pub const MANIFEST: &str = "manifest.json";

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// What a build did, for the summary and `--json`.
#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub board: String,
    pub out_dir: PathBuf,
    pub downloaded: usize,
    pub downloaded_bytes: u64,
    pub cached: usize,
    pub seconds: f64,
    pub manifest: Manifest,
    /// The key id the published directory was signed with, if a signing key was configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_with_key_id: Option<String>,
}

pub fn run(global: &Global, args: &BuildImageArgs) -> Result<()> {
    let board = spec::select_board(&global.boards_dir(), args.board.as_deref(), args.arch)?;
    if args.check_reproducible {
        return crate::reproducible::check(global, args, &board);
    }
    // A bad key fails here, before anything is built or published.
    let key = crate::keys::SecretKey::load_configured(args.secret_key.as_deref())?;
    let mut report = build(global, &board)?;
    if let Some(key) = &key {
        crate::sign::sign_dir(&report.out_dir, key)?;
        report.signed_with_key_id = Some(key.key_id().to_string());
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "built {} {} for {} in {:.1} s (downloaded {} packages, {:.1} MB; {} cached) → {}",
            report.manifest.image,
            report.manifest.version,
            report.board,
            report.seconds,
            report.downloaded,
            report.downloaded_bytes as f64 / 1e6,
            report.cached,
            report.out_dir.display()
        );
        for a in &report.manifest.artifacts {
            println!("  {:<28} {:>12} bytes  sha256 {}", a.file, a.size, a.sha256);
        }
    }
    Ok(())
}

/// SOURCE_DATE_EPOCH, else the time of the repository's HEAD commit. Never the wall clock.
pub fn source_date_epoch() -> Result<i64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value.trim().parse().with_context(|| {
            format!("environment variable SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds")
        });
    }
    let out = cmd("git")
        .args(["log", "-1", "--format=%ct"])
        .dir(crate::paths::repo_root())
        .read()
        .context("SOURCE_DATE_EPOCH is not set and the commit time could not be read; set SOURCE_DATE_EPOCH")?;
    out.trim().parse().with_context(|| format!("git printed {out:?} as the commit time"))
}

pub fn build(global: &Global, board: &Board) -> Result<BuildReport> {
    let started = std::time::Instant::now();
    let arch = board.arch();
    // Everything that can be wrong with the inputs is checked before out/ is touched.
    let spec_path = global.spec_path();
    let spec = spec::load_spec(&spec_path)?;
    let boards = spec::load_boards(&global.boards_dir())?;
    let lock = crate::lock::load_checked(global, &spec, &boards)?;
    let extensions = crate::extensions::load(&global.overlays_dir(), &spec)?;
    let lock_sha256 = lock.sha256()?;
    let epoch = source_date_epoch()?;
    hosttools::ensure(&hosttools::for_build(arch))?;

    let wanted: Vec<&LockedPackage> = lock.packages.iter().filter(|p| p.target_arch == arch).collect();
    let step = progress::step("fetching packages");
    let fetched = crate::fetch::fetch(global, global.mirror.as_deref(), &lock, &global.lock_path(), &wanted)?;
    step.done();
    if fetched.downloaded > 0 {
        progress::note(format!(
            "downloaded {} packages ({:.1} MB), {} already cached",
            fetched.downloaded,
            fetched.downloaded_bytes as f64 / 1e6,
            fetched.cached
        ));
    }
    let debs: Vec<(&LockedPackage, &Path)> =
        wanted.iter().copied().zip(fetched.paths.iter().map(PathBuf::as_path)).collect();
    // The SBOM's license scan decompresses every .deb once more: on the other core, meanwhile.
    crate::sbom::read_ahead(&debs);
    // The root and extension trees are assembled and checked (Talos's rules, the no-shell policy) in the
    // cache, so a refused build never touches out/.
    let trees = crate::extensions::prepare(global, &spec, &spec_path, arch, &debs, &extensions)?;

    let step = progress::step(format!("compiling machined for {arch}"));
    let machined_work = tempfile::Builder::new()
        .prefix("machined-")
        .tempdir_in(ensure_dir(&global.cache_dir())?)
        .context("creating a work directory in the cache")?;
    let machined = crate::machined_build::build(arch, &global.cache_dir(), machined_work.path())?;
    step.done();

    let out = global.board_out_dir(&board.name);
    ensure_dir(&out)?;
    remove_stale_staging(&out);
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&out)
        .with_context(|| format!("creating a staging directory in {}", out.display()))?;
    let work = staging.path();
    let manifest = assemble(
        &Assembly { spec: &spec, board, epoch, lock_sha256, debs: &debs, machined: &machined, work, global },
        &trees,
    )?;
    publish(work, &out, &manifest)?;
    Ok(BuildReport {
        board: board.name.clone(),
        out_dir: out,
        downloaded: fetched.downloaded,
        downloaded_bytes: fetched.downloaded_bytes,
        cached: fetched.cached,
        seconds: started.elapsed().as_secs_f64(),
        manifest,
        signed_with_key_id: None,
    })
}

fn ensure_dir(dir: &Path) -> Result<&Path> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Staging directories left by a killed build (a normal failure removes its own).
fn remove_stale_staging(out: &Path) {
    if let Ok(entries) = fs::read_dir(out) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".staging-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

struct Assembly<'a> {
    spec: &'a ImageSpec,
    board: &'a Board,
    epoch: i64,
    lock_sha256: String,
    debs: &'a [(&'a LockedPackage, &'a Path)],
    machined: &'a Path,
    work: &'a Path,
    global: &'a Global,
}

/// Builds every artifact into `a.work` and returns the manifest describing them.
fn assemble(a: &Assembly, trees: &crate::extensions::Trees) -> Result<Manifest> {
    let arch = a.board.arch();
    let base = format!("{}-{}", a.spec.name, arch);
    let artifact = |ext: &str| a.work.join(format!("{base}.{ext}"));

    let step = progress::step("unpacking packages");
    let rootfs_dir = &trees.rootfs;
    let kernel_dir = unpacked_set(a.global, a.debs, "kernel")?;
    let stub_dir = unpacked_set(a.global, a.debs, "efi-stub")?;
    step.done();

    let modules = ModuleTree::open(&kernel_dir)?;
    let load_order = modules.load_order(&a.board.file.boot_modules, &a.board.path)?;
    verify_kernel_files(&kernel_dir, &stub_dir, arch, &modules, &load_order)?;

    let step = progress::step("making the root squashfs");
    let rootfs_sqsh = artifact("rootfs.sqsh");
    crate::squashfs::make(rootfs_dir, &rootfs_sqsh, a.epoch)?;
    step.done();
    let step = progress::step("making the extension layers");
    let layers = crate::extensions::make_layers(trees, a.work, &base, a.epoch)?;
    step.done();

    let step = progress::step("writing the initramfs");
    let initramfs = artifact("initramfs");
    let mut files = vec![
        ("init".to_string(), a.machined.to_path_buf(), 0o755),
        ("rootfs.sqsh".to_string(), rootfs_sqsh.clone(), 0o644),
    ];
    let mut list = String::new();
    for (_, rel) in &load_order {
        let inside = format!("lib/modules/{}/{}", modules.release, rel.display());
        list.push_str(&format!("/{inside}\n"));
        files.push((inside, modules.dir.join(rel), 0o644));
    }
    write_initramfs(&initramfs, a.epoch, &files, &[("etc/machined/modules", list.as_bytes())])?;
    crate::extensions::append_to_initramfs(&initramfs, &layers, a.epoch)?;
    step.done();

    let step = progress::step("making the UKI");
    let cmdline = kernel_cmdline(a.board, a.spec);
    let uki = artifact("efi");
    let image = make_uki(a.spec, arch, &stub_dir, &kernel_dir, &modules.release, &cmdline, &initramfs)?;
    fs::write(&uki, &image).with_context(|| format!("writing {}", uki.display()))?;
    step.done();

    let step = progress::step("writing the disk");
    let raw = artifact("raw");
    write_disk(a, &raw, &image)?;
    drop(image);
    let mut files = vec![raw.clone()];
    if a.board.file.disk.formats.contains(&DiskFormat::Qcow2) {
        let qcow2 = artifact("qcow2");
        // In-order writes (no -W) keep the output deterministic; the qcow2 options are spelled out so a
        // qemu-img with other defaults still writes the same file.
        cmd("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-o", crate::reproducible::QCOW2_OPTIONS])
            .arg(&raw)
            .arg(&qcow2)
            .run()?;
        files.push(qcow2);
    }
    step.done();
    files.extend([uki, initramfs, rootfs_sqsh]);
    files.extend(layers.iter().map(|layer| layer.sqsh.clone()));
    let sbom = artifact("spdx.json");
    crate::sbom::write(
        &sbom,
        &crate::sbom::Input {
            spec: a.spec,
            arch,
            epoch: a.epoch,
            lock_sha256: &a.lock_sha256,
            debs: a.debs,
            machined: a.machined,
        },
    )?;
    files.push(sbom);
    if !a.board.file.disk.formats.contains(&DiskFormat::Raw) {
        files.retain(|f| f != &raw);
    }

    let mut artifacts = Vec::new();
    for file in &files {
        artifacts.push(Artifact {
            file: file.file_name().and_then(|n| n.to_str()).context("artifact name")?.to_string(),
            size: fs::metadata(file)?.len(),
            sha256: sha256_file(file)?,
        });
    }
    let manifest = Manifest {
        image: a.spec.name.clone(),
        version: a.spec.version.clone(),
        arch,
        board: a.board.name.clone(),
        source_date_epoch: a.epoch,
        lock_sha256: a.lock_sha256.clone(),
        kernel: modules.release.clone(),
        cmdline,
        extensions: crate::extensions::records(&layers),
        artifacts,
    };
    fs::write(a.work.join(MANIFEST), serde_json::to_string_pretty(&manifest)? + "\n")?;
    Ok(manifest)
}

/// The kernel command line: the board's arguments less those the spec removes, then the spec's.
pub fn kernel_cmdline(board: &Board, spec: &ImageSpec) -> String {
    let kept =
        board.file.kernel_args.iter().filter(|arg| !crate::policy::kernel_arg_removed(&spec.kernel_args_remove, arg));
    kept.chain(&spec.kernel_args).cloned().collect::<Vec<_>>().join(" ")
}

/// Unpacks a package set (the kernel, the EFI stub) once into the cache, at
/// `<cache>/unpacked/<digest of the set's .debs>`, and returns that directory. Unpacking the kernel
/// takes seconds (100 MB of xz); a warm build reuses it. A digest of every file is kept beside the
/// tree and [`verify_unpacked`] checks each file a build reads, so a damaged tree is caught, not used.
fn unpacked_set(global: &Global, debs: &[(&LockedPackage, &Path)], set: &str) -> Result<PathBuf> {
    let members: Vec<&(&LockedPackage, &Path)> = debs.iter().filter(|(p, _)| p.set == set).collect();
    if members.is_empty() {
        bail!("the lock has no {set:?} packages for this arch");
    }
    let mut key = Sha256::new();
    for (package, _) in &members {
        key.update(format!("{} {}\n", package.name, package.sha256));
    }
    let base = global.cache_dir().join("unpacked");
    let dir = base.join(hex(&key.finalize()));
    if dir.join(UNPACKED_DIGESTS).exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let temp = tempfile::Builder::new().prefix(".unpacking-").tempdir_in(&base)?;
    let mut provenance = crate::deb::Provenance::new();
    for (package, deb) in &members {
        crate::deb::unpack(deb, &package.name, temp.path(), &mut provenance)?;
    }
    let mut digests = BTreeMap::new();
    for rel in provenance.keys() {
        let path = temp.path().join(rel);
        if fs::symlink_metadata(&path)?.is_file() {
            digests.insert(rel.to_string_lossy().into_owned(), sha256_file(&path)?);
        }
    }
    fs::write(temp.path().join(UNPACKED_DIGESTS), serde_json::to_vec(&digests)?)?;
    let temp = temp.keep();
    if fs::rename(&temp, &dir).is_err() {
        // Another build unpacked the same set meanwhile; theirs is as good as ours.
        let _ = fs::remove_dir_all(&temp);
    }
    Ok(dir)
}

const UNPACKED_DIGESTS: &str = ".sha256sums.json";

/// Checks that files read from an unpacked tree in the cache still have their recorded digests.
fn verify_unpacked(dir: &Path, rels: &[PathBuf]) -> Result<()> {
    let index = dir.join(UNPACKED_DIGESTS);
    let digests: BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(&index)?).with_context(|| format!("reading {}", index.display()))?;
    for rel in rels {
        let recorded = digests
            .get(rel.to_string_lossy().as_ref())
            .with_context(|| format!("{} is not part of the unpacked packages in {}", rel.display(), dir.display()))?;
        if &sha256_file(&dir.join(rel))? != recorded {
            bail!(
                "{} in the cache is damaged (its sha256 no longer matches); delete {} and build again",
                rel.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// The initramfs, in Talos's layout: /init (machined), /rootfs.sqsh, the boot modules, and
/// /etc/machined/modules listing them in load order. Not compressed: the squashfs inside already is,
/// and the kernel unpacks a plain cpio fastest. Entries are sorted, parents first.
fn write_initramfs(out: &Path, epoch: i64, files: &[(String, PathBuf, u32)], texts: &[(&str, &[u8])]) -> Result<()> {
    enum Entry<'a> {
        Dir,
        File(&'a Path, u32),
        Bytes(&'a [u8]),
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut add = |path: &str, entry| {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            entries.entry(dir.to_string_lossy().into_owned()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        entries.insert(path.to_string(), entry);
    };
    for (path, source, mode) in files {
        add(path, Entry::File(source, *mode));
    }
    for (path, data) in texts {
        add(path, Entry::Bytes(data));
    }
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = CpioWriter::new(std::io::BufWriter::new(file), epoch)?;
    for (path, entry) in &entries {
        match entry {
            Entry::Dir => cpio.add_dir(path, 0o755)?,
            Entry::File(source, mode) => cpio.add_file_from_path(path, *mode, source)?,
            Entry::Bytes(data) => cpio.add_file(path, 0o644, data)?,
        }
    }
    use std::io::Write;
    cpio.finish()?.flush().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// The UKI: the target arch's systemd-stub with the image's os-release, command line, kernel
/// release, initramfs and kernel as PE sections.
/// Everything a build reads from the unpacked kernel and stub: the kernel image, the stub and the
/// modules (whose .modinfo the dependency walk read).
fn verify_kernel_files(
    kernel_dir: &Path,
    stub_dir: &Path,
    arch: Arch,
    modules: &ModuleTree,
    load_order: &[(String, PathBuf)],
) -> Result<()> {
    let module_base = modules.dir.strip_prefix(kernel_dir)?;
    let mut kernel_files = vec![PathBuf::from(format!("boot/vmlinuz-{}", modules.release))];
    kernel_files.extend(load_order.iter().map(|(_, rel)| module_base.join(rel)));
    verify_unpacked(kernel_dir, &kernel_files)?;
    verify_unpacked(stub_dir, &[Path::new("usr/lib/systemd/boot/efi").join(arch.efi_stub_file())])
}

fn make_uki(
    spec: &ImageSpec,
    arch: Arch,
    stub_dir: &Path,
    kernel_dir: &Path,
    release: &str,
    cmdline: &str,
    initramfs: &Path,
) -> Result<Vec<u8>> {
    let stub_path = stub_dir.join("usr/lib/systemd/boot/efi").join(arch.efi_stub_file());
    let vmlinuz = kernel_dir.join(format!("boot/vmlinuz-{release}"));
    let stub = fs::read(&stub_path).with_context(|| format!("reading the EFI stub {}", stub_path.display()))?;
    let linux = fs::read(&vmlinuz).with_context(|| format!("reading the kernel {}", vmlinuz.display()))?;
    let initrd = fs::read(initramfs).with_context(|| format!("reading {}", initramfs.display()))?;
    let osrel = crate::rootfs::os_release(spec);
    crate::uki::build_uki(
        &stub,
        &[
            (".osrel", osrel.as_bytes()),
            (".cmdline", cmdline.as_bytes()),
            (".uname", release.as_bytes()),
            (".initrd", &initrd),
            (".linux", &linux),
        ],
    )
    .context("building the unified kernel image")
}

/// A GPT disk whose one partition is the ESP holding the UKI at the removable-media boot path.
fn write_disk(a: &Assembly, raw: &Path, uki: &[u8]) -> Result<()> {
    let arch = a.board.arch();
    let seed = format!("{}/{}/{}/{}", a.spec.name, a.spec.version, arch, a.board.name);
    let esp_type = crate::gpt::ESP_TYPE;
    let esp_guid = Guid::derived(format!("{seed}/esp").as_bytes());
    let disk_guid = Guid::derived(format!("{seed}/disk").as_bytes());
    let disk_size = a.board.file.disk.size_mib * 1024 * 1024;
    let esp_spec = |contents| PartitionSpec {
        name: "EFI System Partition",
        type_guid: esp_type,
        unique_guid: esp_guid,
        size: PartitionSize::Rest,
        attributes: 0,
        contents,
    };
    let layout = crate::gpt::plan_layout(disk_size, &[esp_spec(PartitionContents::Empty)])
        .with_context(|| format!("{}: field `disk.size-mib`", a.board.path.display()))?;
    let esp_size = layout[0].size_bytes();
    let esp_image = a.work.join("esp.img");
    let boot_path = format!("EFI/BOOT/{}", arch.efi_boot_file());
    let volume_id = u32::from_le_bytes(Sha256::digest(seed.as_bytes())[..4].try_into()?);
    crate::esp::build_esp(&esp_image, esp_size, &[(&boot_path, uki)], a.epoch, volume_id, "EFI").with_context(
        || {
            format!(
                "the UKI ({} MB) must fit the ESP; see {} field `disk.size-mib`",
                uki.len() / 1_000_000,
                a.board.path.display()
            )
        },
    )?;
    crate::gpt::write_gpt_disk(raw, disk_size, disk_guid, &[esp_spec(PartitionContents::File(&esp_image))])?;
    fs::remove_file(&esp_image)?;
    Ok(())
}

/// For bench: a disk with the same firmware path, stub and kernel as the board's image but a trivial
/// initramfs (machined alone, told by `machined.floor=1` to report at once and power off). Booting it
/// measures the floor that the real image's boot time is compared against.
pub fn build_floor_disk(global: &Global, board: &Board, dir: &Path) -> Result<PathBuf> {
    let arch = board.arch();
    let spec = spec::load_spec(&global.spec_path())?;
    let boards = spec::load_boards(&global.boards_dir())?;
    let lock = crate::lock::load_checked(global, &spec, &boards)?;
    let wanted: Vec<&LockedPackage> =
        lock.packages.iter().filter(|p| p.target_arch == arch && (p.set == "kernel" || p.set == "efi-stub")).collect();
    let fetched = crate::fetch::fetch(global, global.mirror.as_deref(), &lock, &global.lock_path(), &wanted)?;
    let debs: Vec<(&LockedPackage, &Path)> =
        wanted.iter().copied().zip(fetched.paths.iter().map(PathBuf::as_path)).collect();
    let machined = crate::machined_build::build(arch, &global.cache_dir(), dir)?;
    let kernel_dir = unpacked_set(global, &debs, "kernel")?;
    let stub_dir = unpacked_set(global, &debs, "efi-stub")?;
    let modules = ModuleTree::open(&kernel_dir)?;
    verify_kernel_files(&kernel_dir, &stub_dir, arch, &modules, &[])?;
    let initramfs = dir.join("floor.initramfs");
    write_initramfs(&initramfs, 0, &[("init".to_string(), machined.clone(), 0o755)], &[])?;
    let cmdline = format!("{} machined.floor=1", kernel_cmdline(board, &spec));
    let uki = make_uki(&spec, arch, &stub_dir, &kernel_dir, &modules.release, &cmdline, &initramfs)?;
    let raw = dir.join("floor.raw");
    let a = Assembly {
        spec: &spec,
        board,
        epoch: 0,
        lock_sha256: String::new(),
        debs: &debs,
        machined: &machined,
        work: dir,
        global,
    };
    write_disk(&a, &raw, &uki)?;
    Ok(raw)
}

/// Moves the finished artifacts into `out`, manifest.json last, each by an atomic rename.
fn publish(work: &Path, out: &Path, manifest: &Manifest) -> Result<()> {
    // Signatures of the previous build would otherwise sit next to files they do not vouch for.
    crate::sign::remove_signatures(out)?;
    for name in manifest.artifacts.iter().map(|a| a.file.as_str()).chain([MANIFEST]) {
        fs::rename(work.join(name), out.join(name))
            .with_context(|| format!("publishing {} into {}", name, out.display()))?;
    }
    Ok(())
}

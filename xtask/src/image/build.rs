//! The build pipeline, in the order it runs ([`build`]):
//!
//! 1. Inputs: spec, boards, extensions and lock loaded and checked ([`BuildInputs`]), SOURCE_DATE_EPOCH,
//!    host tools. Bad input fails here, before anything is fetched or written.
//! 2. Packages: the arch's debs from the lock, fetched into the content-addressed cache and checked.
//! 3. Trees: the root tree and one tree per extension, assembled and checked (Talos's content rules,
//!    the no-shell policy) in a work directory in the cache, so a refused build never touches out/.
//! 4. machined compiled for the arch.
//! 5. Kernel and stub: unpacked once into the cache; the boot modules' closure from their .modinfo;
//!    the kernel's configuration judged against Cilium's requirements.
//! 6. The root's machine parts: machined's copy (the kernel's modprobe helper, the guest agent's
//!    shutdown), and the on-demand module tree with depmod's indexes.
//! 7. Squashfs: the root and each extension layer.
//! 8. Initramfs: machined, the root squashfs, the boot modules, then the extension layers.
//! 9. UKI: stub + os-release, command line, kernel release, initramfs, kernel; signed with the Secure
//!    Boot db key when a key set is configured (before the disk is made, and before any minisign
//!    signature, so those cover the signed UKI).
//! 10. Disk: the ESP holding the UKI in a GPT disk, and its qcow2; for a signed build, the board's
//!     firmware variable store with the key set enrolled.
//! 11. SBOM.
//! 12. manifest.json, and the whole staging directory published as out/<board>/ (one atomic exchange).
//!
//! Steps 7 to 12 write into a staging directory beside out/<board>/, which step 12 exchanges with it
//! in one rename; see publish.rs.

use super::inputs::BuildInputs;
use super::manifest::{Artifact, KernelRequirements, Manifest, SecureBootRecord};
use super::publish::{self, Staging};
use super::root_parts;
use super::sbom;
use crate::archive::fetch::fetch;
use crate::archive::lockfile::LockedPackage;
use crate::disk::DiskName;
use crate::initramfs::archive::{self as initramfs, Contents};
use crate::initramfs::{kernel_requirements, machined};
use crate::layers::extension;
use crate::layers::layer::{self, LayerTree};
use crate::rootfs::policy::Policy;
use crate::rootfs::{squashfs, tree};
use crate::spec::names::{artifact, PackageSet};
use crate::spec::protocol::FLOOR_FLAG;
use crate::spec::workspace::Workspace;
use crate::spec::{kernel_cmdline, Arch, Board, DiskFormat};
use crate::uki::secure_boot::SecureBootKeys;
use crate::util::digest::sha256_file;
use crate::util::epoch::source_date_epoch;
use crate::util::fs::{ensure_dir, set_readable};
use crate::util::host::{self, Requirement};
use crate::util::progress;
use crate::{archive, disk, uki};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// Every host tool a build for `arch` runs.
pub fn requirements(arch: Arch) -> Vec<Requirement> {
    let mut reqs = archive::release::requirements();
    reqs.extend(squashfs::requirements());
    reqs.extend(disk::requirements());
    reqs.extend(machined::requirements(arch));
    reqs.extend(crate::initramfs::kmod::requirements());
    reqs
}

/// What a build signed for Secure Boot runs besides: the signer and, for a board with Secure Boot
/// firmware, the variable store writer and the template.
pub fn secure_boot_requirements(board: &Board) -> Vec<Requirement> {
    let mut reqs = uki::secure_boot::requirements();
    if let Some(firmware) = &board.file.secure_boot {
        reqs.extend(disk::vars::requirements());
        reqs.push(host::req(
            firmware.vars_template.display().to_string(),
            board.file.firmware.package.clone(),
            "the Secure Boot variable store template",
        ));
    }
    reqs
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

/// Builds the image for `board` into out/<board>/, its UKI signed with `secure_boot`'s db key if given.
pub fn build(ws: &Workspace, board: &Board, secure_boot: Option<&SecureBootKeys>) -> Result<BuildReport> {
    let started = std::time::Instant::now();
    let arch = board.arch();

    // 1. Inputs.
    let inputs = BuildInputs::load(ws)?;
    let lock = inputs.lock(ws)?;
    let lock_sha256 = lock.sha256()?;
    let epoch = source_date_epoch()?;
    let mut reqs = requirements(arch);
    if secure_boot.is_some() {
        reqs.extend(secure_boot_requirements(board));
    }
    host::ensure(&reqs)?;

    // 2. Packages.
    let wanted = lock.packages_for(arch);
    let step = progress::step("fetching packages");
    let fetched = fetch(ws, &wanted)?;
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
    sbom::read_ahead(&debs);

    // 3. Trees.
    let trees = Trees::build(ws, &inputs, arch, &debs)?;

    // 4. machined.
    let step = progress::step(format!("compiling machined for {arch}"));
    let machined_work = tempfile::Builder::new()
        .prefix("machined-")
        .tempdir_in(ensure_dir(&ws.cache_dir())?)
        .context("creating a work directory in the cache")?;
    let machined = machined::build(arch, &ws.cache_dir(), machined_work.path())?;
    step.done();

    // 5. Kernel and stub.
    let step = progress::step("unpacking the kernel and the EFI stub");
    let parts = uki::Parts::open(&ws.cache_dir(), arch, &debs)?;
    let network_modules = board.file.network.as_ref().map(|n| n.modules.clone()).unwrap_or_default();
    let mut load_order = parts.modules.load_order(&board.file.boot_modules, &board.path, "boot-modules")?;
    for module in parts.modules.load_order(&network_modules, &board.path, "network.modules")? {
        if !load_order.contains(&module) {
            load_order.push(module);
        }
    }
    parts.verify(&load_order)?;
    let cilium = kernel_requirements::cilium(&parts.modules.config()?);
    if !cilium.base_met {
        progress::note(format!(
            "kernel {} lacks Cilium's base requirements: {}",
            parts.modules.release,
            cilium.features[0].missing.join(", ")
        ));
    }
    step.done();

    // 6. The root's machine parts.
    let step = progress::step("adding machined and the on-demand modules to the root");
    root_parts::install_machined(&trees.rootfs, &machined)?;
    let boot_module_names: Vec<String> = load_order.iter().map(|(name, _)| name.clone()).collect();
    let on_demand_modules = parts.modules.install_on_demand(
        &trees.rootfs,
        &inputs.spec.on_demand_modules,
        &boot_module_names,
        &format!("{}: field `on-demand-modules`", inputs.spec_path.display()),
    )?;
    step.done();

    let out = ws.board_out_dir(&board.name);
    let staging = Staging::new(&out)?;
    let work = staging.path();
    let base = format!("{}-{}", inputs.spec.name, arch);
    let path_of = |kind: &str| work.join(artifact(&base, kind));

    // 7. Squashfs.
    let step = progress::step("making the root squashfs");
    let rootfs_sqsh = path_of("rootfs.sqsh");
    squashfs::make(&trees.rootfs, &rootfs_sqsh, epoch)?;
    step.done();
    let step = progress::step("making the extension layers");
    let layers = layer::make(&trees.layers, work, &base, epoch)?;
    step.done();

    // 8. Initramfs.
    let step = progress::step("writing the initramfs");
    let initramfs = path_of("initramfs");
    let contents = Contents {
        machined: &machined,
        rootfs_sqsh: &rootfs_sqsh,
        modules: &parts.modules,
        load_order: &load_order,
        layers: &layers,
    };
    initramfs::write_node(&initramfs, epoch, &contents)?;
    step.done();

    // 9. UKI.
    let step = progress::step("making the UKI");
    let cmdline = kernel_cmdline(board, &inputs.spec);
    let uki = path_of("efi");
    let mut image = parts.build(&inputs.spec, &cmdline, &initramfs)?;
    fs::write(&uki, &image).with_context(|| format!("writing {}", uki.display()))?;
    if let Some(keys) = secure_boot {
        step.set_message("signing the UKI for Secure Boot");
        keys.db.sign_in_place(&uki, epoch).context("signing the UKI")?;
        set_readable(&uki)?;
        image = fs::read(&uki).with_context(|| format!("reading the signed {}", uki.display()))?;
    }
    step.done();

    // 10. Disk.
    let step = progress::step("writing the disk");
    let raw = path_of("raw");
    let name = DiskName { image: &inputs.spec.name, version: &inputs.spec.version };
    disk::write_raw(name, board, epoch, &image, &raw, work)?;
    drop(image);
    let formats = &board.file.disk.formats;
    let mut files = Vec::new();
    if formats.contains(&DiskFormat::Raw) {
        files.push(raw.clone());
    }
    if formats.contains(&DiskFormat::Qcow2) {
        let qcow2 = path_of("qcow2");
        disk::write_qcow2(&raw, &qcow2)?;
        files.push(qcow2);
    }
    if formats.contains(&DiskFormat::RawZst) {
        step.set_message("compressing the disk (raw.zst)");
        let raw_zst = path_of("raw.zst");
        disk::write_raw_zst(&raw, &raw_zst)?;
        files.push(raw_zst);
    }
    if !formats.contains(&DiskFormat::Raw) {
        fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
    }
    let secure_boot_record = match secure_boot {
        Some(keys) => {
            let vars = match &board.file.secure_boot {
                Some(firmware) => {
                    step.set_message("enrolling the Secure Boot keys into the firmware variable store");
                    let vars = path_of(VARS_KIND);
                    disk::vars::write_vars(firmware, keys, &vars)?;
                    files.push(vars.clone());
                    Some(artifact(&base, VARS_KIND))
                }
                None => None,
            };
            Some(SecureBootRecord { db_certificate_sha256: keys.db_cert_sha256()?, vars })
        }
        None => None,
    };
    step.done();
    files.extend([uki, initramfs, rootfs_sqsh]);
    files.extend(layers.iter().map(|layer| layer.sqsh.clone()));

    // 11. SBOM.
    let sbom_path = path_of("spdx.json");
    let sbom_input =
        sbom::Input { spec: &inputs.spec, arch, epoch, lock_sha256: &lock_sha256, debs: &debs, machined: &machined };
    sbom::write(&sbom_path, &sbom_input)?;
    files.push(sbom_path);

    // 12. manifest.json, and publish.
    let mut artifacts = Vec::new();
    for file in &files {
        artifacts.push(Artifact {
            file: file.file_name().and_then(|n| n.to_str()).context("artifact name")?.to_string(),
            size: fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len(),
            sha256: sha256_file(file)?,
        });
    }
    let manifest = Manifest {
        image: inputs.spec.name.clone(),
        version: inputs.spec.version.clone(),
        arch,
        board: board.name.clone(),
        source_date_epoch: epoch,
        lock_sha256,
        kernel: parts.modules.release.clone(),
        cmdline,
        extensions: layer::records(&layers),
        on_demand_modules,
        kernel_requirements: Some(KernelRequirements { cilium }),
        artifacts,
        secure_boot: secure_boot_record,
    };
    staging.publish(&manifest)?;
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

/// The artifact kind of the firmware variable store: `<base>.secure-boot-vars.fd`.
const VARS_KIND: &str = "secure-boot-vars.fd";

/// The root tree and one tree per extension, assembled and checked in a work directory in the cache
/// (not in out/, so a refused build leaves out/ exactly as it was).
struct Trees {
    _work: tempfile::TempDir,
    rootfs: PathBuf,
    layers: Vec<LayerTree>,
}

const TREES_PREFIX: &str = "trees-";

impl Trees {
    fn build(ws: &Workspace, inputs: &BuildInputs, arch: Arch, debs: &[(&LockedPackage, &Path)]) -> Result<Trees> {
        let spec = &inputs.spec;
        let policy = Policy::from_spec(spec).with_context(|| format!("{}", inputs.spec_path.display()))?;
        let cache = ws.cache_dir();
        ensure_dir(&cache)?;
        publish::remove_abandoned(&cache, TREES_PREFIX);
        let work = tempfile::Builder::new()
            .prefix(TREES_PREFIX)
            .tempdir_in(&cache)
            .with_context(|| format!("creating a work directory in {}", cache.display()))?;

        let step = progress::step("unpacking the root filesystem");
        let rootfs = work.path().join("rootfs");
        let root_debs: Vec<tree::DebInput> = debs
            .iter()
            .filter(|(p, _)| p.set == PackageSet::Rootfs)
            .map(|(p, path)| tree::DebInput { name: &p.name, deb: path })
            .collect();
        tree::build(&rootfs, spec, &inputs.spec_path, arch, &root_debs, &ws.overlays_dir(), &policy)?;
        step.done();

        let mut layers = Vec::new();
        for extension in &inputs.extensions {
            let step = progress::step(format!("assembling extension {}", extension.name));
            let tree = work.path().join(format!("extension-{}", extension.name));
            extension::build_tree(extension, &tree, arch, debs, &policy)?;
            step.done();
            layers.push(LayerTree { metadata: extension.manifest.metadata.clone(), tree });
        }
        Ok(Trees { _work: work, rootfs, layers })
    }
}

/// For bench: a disk with the same firmware path, stub and kernel as the board's image but a trivial
/// initramfs (machined alone, told by `machined.floor=1` to report at once and power off). Booting it
/// measures the floor that the real image's boot time is compared against.
pub fn build_floor_disk(ws: &Workspace, board: &Board, dir: &Path) -> Result<PathBuf> {
    let arch = board.arch();
    let inputs = BuildInputs::load(ws)?;
    let lock = inputs.lock(ws)?;
    let wanted: Vec<&LockedPackage> = lock
        .packages_for(arch)
        .into_iter()
        .filter(|p| p.set == PackageSet::Kernel || p.set == PackageSet::EfiStub)
        .collect();
    let fetched = fetch(ws, &wanted)?;
    let debs: Vec<(&LockedPackage, &Path)> =
        wanted.iter().copied().zip(fetched.paths.iter().map(PathBuf::as_path)).collect();
    let machined = machined::build(arch, &ws.cache_dir(), dir)?;
    let parts = uki::Parts::open(&ws.cache_dir(), arch, &debs)?;
    parts.verify(&[])?;
    let initramfs = dir.join("floor.initramfs");
    initramfs::write_floor(&initramfs, &machined)?;
    let cmdline = format!("{} {FLOOR_FLAG}", kernel_cmdline(board, &inputs.spec));
    let uki = parts.build(&inputs.spec, &cmdline, &initramfs)?;
    let raw = dir.join("floor.raw");
    disk::write_raw(DiskName { image: &inputs.spec.name, version: &inputs.spec.version }, board, 0, &uki, &raw, dir)?;
    Ok(raw)
}

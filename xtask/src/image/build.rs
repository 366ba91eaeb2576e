//! The build pipeline, in the order it runs ([`build`]):
//!
//! 1. Inputs: spec, boards, extensions and lock loaded and checked ([`BuildInputs`]), SOURCE_DATE_EPOCH,
//!    host tools. Bad input fails here, before anything is fetched or written.
//! 2. Packages: the arch's debs from the lock, fetched into the content-addressed cache and checked
//!    when the first stage that reads one runs ([`OnDemand`]); with every stage cached, never.
//! 3. machined compiled for the arch.
//! 4. The kernel's facts: its release, the boot modules' load order (from each .modinfo), its
//!    configuration judged against Cilium's requirements.
//! 5. The root: its tree (packages, overlays, machined's copy as the kernel's modprobe helper and the
//!    guest agent's shutdown, the on-demand module tree with depmod's indexes), checked (the no-shell
//!    policy) in a work directory in the cache, so a refused build never touches out/; then squashfs.
//! 6. Each extension layer: its tree assembled and checked (Talos's content rules, the policy), squashfs.
//! 7. Initramfs: machined, the root squashfs, the boot modules, then the extension layers.
//! 8. UKI: stub + os-release, command line, kernel release, initramfs, kernel; signed with the Secure
//!    Boot db key when a key set is configured (before the disk is made, and before any minisign
//!    signature, so those cover the signed UKI).
//! 9. Disk: the ESP holding the UKI in a GPT disk, in the board's formats.
//! 10. For a signed build, the board's firmware variable store with the key set enrolled.
//! 11. SBOM.
//! 12. manifest.json, and the whole staging directory published as out/<board>/ (one atomic exchange).
//!
//! Steps 3 to 9 and 11 are stages of the stage cache (util/stage_cache.rs): each is run only when
//! the cache holds no intact output for its key, the digest of its inputs and code. Every output is
//! made in a work directory in the cache (so a failed build never touches out/); step 12 moves them
//! into a staging directory beside out/<board>/ and exchanges it with out/<board>/ in one rename; see
//! publish.rs.

use super::inputs::BuildInputs;
use super::manifest::{Artifact, KernelRequirements, Manifest, SecureBootRecord};
use super::publish::{self, Staging};
use super::root_parts;
use super::sbom;
use crate::archive::fetch::{fetch, FetchReport};
use crate::archive::lockfile::LockedPackage;
use crate::disk::DiskName;
use crate::initramfs::archive::{self as initramfs, Contents};
use crate::initramfs::{kernel_requirements, machined};
use crate::layers::extension;
use crate::layers::layer::{self, Layer, LayerTree};
use crate::rootfs::policy::Policy;
use crate::rootfs::{squashfs, tree};
use crate::spec::names::{artifact, layer_artifact, PackageSet};
use crate::spec::protocol::FLOOR_FLAG;
use crate::spec::workspace::Workspace;
use crate::spec::{kernel_cmdline, Arch, Board, DiskFormat};
use crate::uki::secure_boot::SecureBootKeys;
use crate::util::cmd::cmd;
use crate::util::digest::sha256_file;
use crate::util::epoch::source_date_epoch;
use crate::util::fs::{ensure_dir, set_executable, set_readable};
use crate::util::host::{self, Requirement};
use crate::util::progress;
use crate::util::stage_cache::{code_digest, dir_digest, FileRecord, Key, Outcome, Source, StageCache};
use crate::{archive, disk, uki};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::cell::OnceCell;
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
    /// Each stage, and whether it was built or taken from the local or the remote stage cache.
    pub stages: Vec<Outcome>,
    /// Bytes of stage outputs read from the remote stage cache.
    pub stage_cache_remote_bytes: u64,
    /// The key id the published directory was signed with, if a signing key was configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_with_key_id: Option<String>,
}

impl BuildReport {
    /// `stages: 9 cached, 2 built (ext-iscsi-tools-amd64, initramfs-amd64)`.
    pub fn stages_line(&self) -> String {
        let built: Vec<&str> =
            self.stages.iter().filter(|o| o.source == Source::Built).map(|o| o.stage.as_str()).collect();
        let count = |source| self.stages.iter().filter(|o| o.source == source).count();
        let mut line = format!("stages: {} from the local cache", count(Source::Local));
        if count(Source::Remote) > 0 {
            line += &format!(", {} from the remote cache", count(Source::Remote));
        }
        line += &format!(", {} built", built.len());
        if !built.is_empty() {
            line += &format!(" ({})", built.join(", "));
        }
        line
    }
}

/// The code each stage runs, for its cache key: util/, spec/, the stages up to its own (a stage uses
/// only earlier ones), and this folder, whose steps call them.
fn code(up_to: &str) -> String {
    const FLOW: [&str; 7] = ["archive", "rootfs", "layers", "initramfs", "uki", "disk", "image"];
    let mut folders = vec!["util", "spec", "image"];
    folders.extend(FLOW.iter().take(FLOW.iter().position(|f| *f == up_to).expect("a stage folder") + 1));
    code_digest(&folders)
}

/// A host tool's version line, for the keys of the stages that run it.
fn tool_version(program: &str, arg: &str) -> Result<String> {
    let text = cmd(program).arg(arg).read()?;
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// The packages of `set` as the keys see them: name, version and sha256 from the lock.
fn set_digests(wanted: &[&LockedPackage], set: &PackageSet) -> serde_json::Value {
    let mut digests: Vec<(String, String, String)> = wanted
        .iter()
        .filter(|p| &p.set == set)
        .map(|p| (p.name.clone(), p.version.clone(), p.sha256.clone()))
        .collect();
    digests.sort();
    json!(digests)
}

/// What a stage needs only when it runs: the packages (fetched on first use), the unpacked kernel
/// and stub, the boot modules' load order, a work directory for the trees.
struct OnDemand<'a> {
    ws: &'a Workspace,
    board: &'a Board,
    arch: Arch,
    wanted: &'a [&'a LockedPackage],
    read_ahead_licenses: bool,
    fetched: OnceCell<FetchReport>,
    parts: OnceCell<uki::Parts>,
    load_order: OnceCell<Vec<(String, PathBuf)>>,
    work: &'a Path,
}

/// The build's work directories in the cache: `build-*`.
const WORK_PREFIX: &str = "build-";

impl<'a> OnDemand<'a> {
    fn debs(&self) -> Result<Vec<(&'a LockedPackage, &Path)>> {
        if self.fetched.get().is_none() {
            let step = progress::step("fetching packages");
            let fetched = fetch(self.ws, self.wanted)?;
            step.done();
            if fetched.downloaded > 0 {
                progress::note(format!(
                    "downloaded {} packages ({:.1} MB), {} already cached",
                    fetched.downloaded,
                    fetched.downloaded_bytes as f64 / 1e6,
                    fetched.cached
                ));
            }
            let _ = self.fetched.set(fetched);
            if self.read_ahead_licenses {
                // The SBOM's license scan decompresses every .deb once more: on the other core, meanwhile.
                sbom::read_ahead(&self.paired());
            }
        }
        Ok(self.paired())
    }

    fn paired(&self) -> Vec<(&'a LockedPackage, &Path)> {
        let fetched = self.fetched.get().expect("fetched before");
        self.wanted.iter().copied().zip(fetched.paths.iter().map(PathBuf::as_path)).collect()
    }

    fn parts(&self) -> Result<&uki::Parts> {
        if self.parts.get().is_none() {
            let debs = self.debs()?;
            let step = progress::step("unpacking the kernel and the EFI stub");
            let parts = uki::Parts::open(&self.ws.cache_dir(), self.arch, &debs)?;
            step.done();
            let _ = self.parts.set(parts);
        }
        Ok(self.parts.get().expect("set above"))
    }

    /// The boot modules, then the NIC drivers of the board's `[network]`, with their dependencies.
    fn load_order(&self) -> Result<&[(String, PathBuf)]> {
        if self.load_order.get().is_none() {
            let parts = self.parts()?;
            let board = self.board;
            let network_modules = board.file.network.as_ref().map(|n| n.modules.clone()).unwrap_or_default();
            let mut load_order = parts.modules.load_order(&board.file.boot_modules, &board.path, "boot-modules")?;
            for module in parts.modules.load_order(&network_modules, &board.path, "network.modules")? {
                if !load_order.contains(&module) {
                    load_order.push(module);
                }
            }
            parts.verify(&load_order)?;
            let _ = self.load_order.set(load_order);
        }
        Ok(self.load_order.get().expect("set above"))
    }

    /// Where the tree `name` is assembled: in the work directory, not in out/, so a refused build
    /// leaves out/ exactly as it was.
    fn tree_dir(&self, name: &str) -> Result<PathBuf> {
        let trees = self.work.join("trees");
        ensure_dir(&trees)?;
        Ok(trees.join(name))
    }
}

/// Builds the image for `board` into out/<board>/, its UKI signed with `secure_boot`'s db key if
/// given; each stage taken from `cache` when its inputs are unchanged.
pub fn build(
    ws: &Workspace,
    board: &Board,
    secure_boot: Option<&SecureBootKeys>,
    cache: &StageCache,
) -> Result<BuildReport> {
    let started = std::time::Instant::now();
    let arch = board.arch();

    // 1. Inputs, and what every stage's key shares: the arch, the time, the whole spec and board.
    let inputs = BuildInputs::load(ws)?;
    let spec = &inputs.spec;
    let lock = inputs.lock(ws)?;
    let lock_sha256 = lock.sha256()?;
    let epoch = source_date_epoch()?;
    let policy = Policy::from_spec(spec).with_context(|| format!("{}", inputs.spec_path.display()))?;
    let mut reqs = requirements(arch);
    if secure_boot.is_some() {
        reqs.extend(secure_boot_requirements(board));
    }
    host::ensure(&reqs)?;
    // Every output is made in a work directory in the cache and moved into out/ only at the end.
    let cache_dir = ws.cache_dir();
    ensure_dir(&cache_dir)?;
    publish::remove_abandoned(&cache_dir, WORK_PREFIX);
    let work_dir = tempfile::Builder::new()
        .prefix(WORK_PREFIX)
        .tempdir_in(&cache_dir)
        .with_context(|| format!("creating a work directory in {}", cache_dir.display()))?;
    let work = work_dir.path();
    let common = json!({ "arch": arch, "epoch": epoch, "spec": spec, "board": &board.file });
    let mksquashfs = tool_version("mksquashfs", "-version")?;
    let machined_inputs = machined::cache_key(arch)?;

    // 2. Packages: fetched when the first stage that reads one runs (none, when every stage is cached).
    let wanted = lock.packages_for(arch);
    let sbom_key = Key::new(
        format!("sbom-{arch}"),
        code("image"),
        &json!({ "common": common, "lock": lock_sha256, "machined": machined_inputs }),
    );
    let on_demand = OnDemand {
        ws,
        board,
        arch,
        wanted: &wanted,
        read_ahead_licenses: !cache.holds(&sbom_key),
        fetched: OnceCell::new(),
        parts: OnceCell::new(),
        load_order: OnceCell::new(),
        work,
    };

    let base = format!("{}-{}", spec.name, arch);
    let path_of = |kind: &str| work.join(artifact(&base, kind));

    // 3. machined, compiled for the arch.
    let machined_path = work.join(format!("machined-{arch}"));
    let machined_key = Key::new(format!("machined-{arch}"), code("initramfs"), &json!({ "key": machined_inputs }));
    let machined_stored = cache.run(&machined_key, &[("machined", &machined_path)], || {
        let step = progress::step(format!("compiling machined for {arch}"));
        let built = machined::build(arch, &ws.cache_dir(), &work.join("machined-build"))?;
        fs::rename(&built, &machined_path).with_context(|| format!("moving {}", built.display()))?;
        step.done();
        Ok(json!({}))
    })?;
    set_executable(&machined_path)?;
    let machined_sha256 = machined_stored.file("machined")?.sha256.clone();

    // 4. The kernel's facts: its release, the boot modules' load order, Cilium's requirements.
    let kernel_inputs = json!({
        "kernel": set_digests(&wanted, &PackageSet::Kernel),
        "stub": set_digests(&wanted, &PackageSet::EfiStub),
        "boot-modules": board.file.boot_modules,
        "network": board.file.network.as_ref().map(|n| &n.modules),
    });
    let kernel_key = Key::new(format!("kernel-{arch}"), code("uki"), &kernel_inputs);
    let kernel = cache.run(&kernel_key, &[], || {
        let parts = on_demand.parts()?;
        let load_order = on_demand.load_order()?;
        let facts = KernelFacts {
            release: parts.modules.release.clone(),
            boot_modules: load_order.iter().map(|(name, _)| name.clone()).collect(),
            cilium: kernel_requirements::cilium(&parts.modules.config()?),
        };
        Ok(serde_json::to_value(facts)?)
    })?;
    let kernel: KernelFacts = serde_json::from_value(kernel.facts).context("the kernel stage's facts")?;
    if !kernel.cilium.base_met {
        progress::note(format!(
            "kernel {} lacks Cilium's base requirements: {}",
            kernel.release,
            kernel.cilium.features[0].missing.join(", ")
        ));
    }

    // 5. The root: its tree (packages, overlays, machined's copy, the on-demand module tree) checked
    //    and packed as squashfs.
    let rootfs_sqsh = path_of("rootfs.sqsh");
    let root_packages = set_digests(&wanted, &PackageSet::Rootfs);
    let mut overlays = Vec::new();
    for overlay in &spec.overlays {
        overlays.push((overlay.clone(), dir_digest(&ws.overlays_dir().join(overlay))?));
    }
    let rootfs_key = Key::new(
        format!("rootfs-{arch}"),
        // The on-demand module tree comes from the unpacked kernel (uki/) through initramfs/kmod.rs.
        code("uki"),
        &json!({
            "common": common,
            "packages": root_packages,
            "kernel": kernel_key.digest,
            "overlays": overlays,
            "machined": machined_sha256,
            "tools": [&mksquashfs, tool_version("/usr/sbin/depmod", "--version")?],
        }),
    );
    let rootfs = cache.run(&rootfs_key, &[("rootfs.sqsh", &rootfs_sqsh)], || {
        let debs = on_demand.debs()?;
        let step = progress::step("unpacking the root filesystem");
        let tree_dir = on_demand.tree_dir("rootfs")?;
        let root_debs: Vec<tree::DebInput> = debs
            .iter()
            .filter(|(p, _)| p.set == PackageSet::Rootfs)
            .map(|(p, path)| tree::DebInput { name: &p.name, deb: path })
            .collect();
        tree::build(&tree_dir, spec, &inputs.spec_path, arch, &root_debs, &ws.overlays_dir(), &policy)?;
        step.done();
        let step = progress::step("adding machined and the on-demand modules to the root");
        root_parts::install_machined(&tree_dir, &machined_path)?;
        let on_demand_modules = on_demand.parts()?.modules.install_on_demand(
            &tree_dir,
            &spec.on_demand_modules,
            &kernel.boot_modules,
            &format!("{}: field `on-demand-modules`", inputs.spec_path.display()),
        )?;
        step.done();
        let step = progress::step("making the root squashfs");
        squashfs::make(&tree_dir, &rootfs_sqsh, epoch)?;
        step.done();
        Ok(json!({ "on-demand-modules": on_demand_modules }))
    })?;
    let on_demand_modules = rootfs.facts["on-demand-modules"].as_u64().context("the root stage's facts")? as usize;

    // 6. Each extension: its tree assembled, checked (Talos's content rules, the no-shell policy) and packed.
    let mut layers = Vec::new();
    let mut layer_files = Vec::new();
    let mut layer_digests = Vec::new();
    for extension in &inputs.extensions {
        let sqsh = work.join(layer_artifact(&base, &extension.name));
        let key = Key::new(
            format!("ext-{}-{arch}", extension.name),
            code("layers"),
            &json!({
                "common": common,
                "dir": dir_digest(&extension.dir)?,
                "packages": set_digests(&wanted, &PackageSet::Extension(extension.name.clone())),
                // Its ld.so.cache leaves out what the node's root has, named by the root's packages.
                "root-packages": root_packages,
                "tools": [&mksquashfs],
            }),
        );
        let stored = cache.run(&key, &[("layer.sqsh", &sqsh)], || {
            let debs = on_demand.debs()?;
            let step = progress::step(format!("assembling extension {}", extension.name));
            let tree_dir = on_demand.tree_dir(&format!("extension-{}", extension.name))?;
            extension::build_tree(extension, &tree_dir, arch, &debs, &policy)?;
            let tree = LayerTree { metadata: extension.manifest.metadata.clone(), tree: tree_dir };
            layer::make(&tree, &sqsh, epoch)?;
            step.done();
            Ok(json!({}))
        })?;
        // The metadata goes into extensions.yaml and machined's list, not into the layer's bytes.
        let file = stored.file("layer.sqsh")?.clone();
        layer_digests.push(json!([&extension.manifest.metadata, file.sha256]));
        layers.push(Layer { metadata: extension.manifest.metadata.clone(), sqsh });
        layer_files.push(file);
    }

    // 7. Initramfs: machined, the root squashfs, the boot modules, then the extension layers.
    let initramfs = path_of("initramfs");
    let initramfs_key = Key::new(
        format!("initramfs-{arch}"),
        code("uki"),
        &json!({
            "common": common,
            "machined": machined_sha256,
            "rootfs": rootfs.file("rootfs.sqsh")?.sha256,
            "kernel": kernel_key.digest,
            "layers": layer_digests,
        }),
    );
    let initramfs_stored = cache.run(&initramfs_key, &[("initramfs", &initramfs)], || {
        let step = progress::step("writing the initramfs");
        let parts = on_demand.parts()?;
        let contents = Contents {
            machined: &machined_path,
            rootfs_sqsh: &rootfs_sqsh,
            modules: &parts.modules,
            load_order: on_demand.load_order()?,
            layers: &layers,
        };
        initramfs::write_node(&initramfs, epoch, &contents)?;
        step.done();
        Ok(json!({}))
    })?;

    // 8. UKI: stub + os-release, command line, kernel release, initramfs, kernel; signed with the
    //    Secure Boot db key when a key set is configured (before the disk is made, and before any
    //    minisign signature, so those cover the signed UKI).
    let cmdline = kernel_cmdline(board, spec);
    let uki = path_of("efi");
    let signer = match secure_boot {
        Some(keys) => Some((keys.db_cert_sha256()?, tool_version("osslsigncode", "--version")?)),
        None => None,
    };
    let uki_key = Key::new(
        format!("uki-{arch}"),
        code("uki"),
        &json!({
            "common": common,
            "kernel": kernel_key.digest,
            "cmdline": cmdline,
            "initramfs": initramfs_stored.file("initramfs")?.sha256,
            "signer": signer,
        }),
    );
    let uki_stored = cache.run(&uki_key, &[("uki.efi", &uki)], || {
        let step = progress::step("making the UKI");
        let image = on_demand.parts()?.build(spec, &cmdline, &initramfs)?;
        fs::write(&uki, &image).with_context(|| format!("writing {}", uki.display()))?;
        if let Some(keys) = secure_boot {
            step.set_message("signing the UKI for Secure Boot");
            keys.db.sign_in_place(&uki, epoch).context("signing the UKI")?;
            set_readable(&uki)?;
        }
        step.done();
        Ok(json!({}))
    })?;

    // 9. Disk: the ESP holding the UKI in a GPT disk, in the board's formats (raw, qcow2, raw.zst).
    let formats = &board.file.disk.formats;
    let raw = path_of("raw");
    let disk_outputs: Vec<(&str, PathBuf)> =
        [(DiskFormat::Raw, "raw"), (DiskFormat::Qcow2, "qcow2"), (DiskFormat::RawZst, "raw.zst")]
            .into_iter()
            .filter(|(format, _)| formats.contains(format))
            .map(|(_, kind)| (kind, path_of(kind)))
            .collect();
    let disk_key = Key::new(
        format!("disk-{arch}"),
        code("disk"),
        &json!({
            "common": common,
            "uki": uki_stored.file("uki.efi")?.sha256,
            "tools": [tool_version("qemu-img", "--version")?],
        }),
    );
    let disk_paths: Vec<(&str, &Path)> = disk_outputs.iter().map(|(kind, path)| (*kind, path.as_path())).collect();
    let disk_stored = cache.run(&disk_key, &disk_paths, || {
        let step = progress::step("writing the disk");
        let image = fs::read(&uki).with_context(|| format!("reading {}", uki.display()))?;
        let name = DiskName { image: &spec.name, version: &spec.version };
        disk::write_raw(name, board, epoch, &image, &raw, work)?;
        drop(image);
        if formats.contains(&DiskFormat::Qcow2) {
            disk::write_qcow2(&raw, &path_of("qcow2"))?;
        }
        if formats.contains(&DiskFormat::RawZst) {
            step.set_message("compressing the disk (raw.zst)");
            disk::write_raw_zst(&raw, &path_of("raw.zst"))?;
        }
        if !formats.contains(&DiskFormat::Raw) {
            fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
        }
        step.done();
        Ok(json!({}))
    })?;
    let mut artifacts = Vec::new();
    for (kind, path) in &disk_outputs {
        artifacts.push(record(path, disk_stored.file(kind)?));
    }

    // 10. For a signed build, the board's firmware variable store with the key set enrolled (not
    //     cached: it is quick, and it would put the key set's digests in another key).
    let secure_boot_record = match secure_boot {
        Some(keys) => {
            let vars = match &board.file.secure_boot {
                Some(firmware) => {
                    let step = progress::step("enrolling the Secure Boot keys into the firmware variable store");
                    let vars = path_of(VARS_KIND);
                    disk::vars::write_vars(firmware, keys, &vars)?;
                    step.done();
                    artifacts.push(Artifact {
                        file: artifact(&base, VARS_KIND),
                        size: fs::metadata(&vars).with_context(|| format!("reading {}", vars.display()))?.len(),
                        sha256: sha256_file(&vars)?,
                    });
                    Some(artifact(&base, VARS_KIND))
                }
                None => None,
            };
            Some(SecureBootRecord { db_certificate_sha256: keys.db_cert_sha256()?, vars })
        }
        None => None,
    };
    artifacts.push(record(&uki, uki_stored.file("uki.efi")?));
    artifacts.push(record(&initramfs, initramfs_stored.file("initramfs")?));
    artifacts.push(record(&rootfs_sqsh, rootfs.file("rootfs.sqsh")?));
    for (layer, file) in layers.iter().zip(&layer_files) {
        artifacts.push(record(&layer.sqsh, file));
    }

    // 11. SBOM.
    let sbom_path = path_of("spdx.json");
    let sbom_stored = cache.run(&sbom_key, &[("spdx.json", &sbom_path)], || {
        let debs = on_demand.debs()?;
        let sbom_input =
            sbom::Input { spec, arch, epoch, lock_sha256: &lock_sha256, debs: &debs, machined: &machined_path };
        sbom::write(&sbom_path, &sbom_input)?;
        Ok(json!({}))
    })?;
    artifacts.push(record(&sbom_path, sbom_stored.file("spdx.json")?));

    // 12. manifest.json, and publish.
    let manifest = Manifest {
        image: spec.name.clone(),
        version: spec.version.clone(),
        arch,
        board: board.name.clone(),
        source_date_epoch: epoch,
        lock_sha256,
        kernel: kernel.release.clone(),
        cmdline,
        extensions: layer::records(&layers),
        on_demand_modules,
        kernel_requirements: Some(KernelRequirements { cilium: kernel.cilium }),
        artifacts,
        secure_boot: secure_boot_record,
    };
    let out = ws.board_out_dir(&board.name);
    let staging = Staging::new(&out)?;
    for artifact in &manifest.artifacts {
        staging.adopt(&work.join(&artifact.file))?;
    }
    staging.publish(&manifest)?;
    let fetched = on_demand.fetched.into_inner().unwrap_or_default();
    Ok(BuildReport {
        board: board.name.clone(),
        out_dir: out,
        downloaded: fetched.downloaded,
        downloaded_bytes: fetched.downloaded_bytes,
        cached: fetched.cached,
        seconds: started.elapsed().as_secs_f64(),
        manifest,
        stages: cache.outcomes(),
        stage_cache_remote_bytes: cache.remote_bytes(),
        signed_with_key_id: None,
    })
}

/// What the kernel stage found, kept as its facts.
#[derive(Serialize, Deserialize)]
struct KernelFacts {
    release: String,
    boot_modules: Vec<String>,
    cilium: kernel_requirements::Report,
}

/// An artifact as manifest.json lists it, from its stage's record (checked when it was stored or
/// taken from the cache, so nothing is hashed twice).
fn record(path: &Path, file: &FileRecord) -> Artifact {
    Artifact {
        file: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        size: file.size,
        sha256: file.sha256.clone(),
    }
}

/// The artifact kind of the firmware variable store: `<base>.secure-boot-vars.fd`.
const VARS_KIND: &str = "secure-boot-vars.fd";

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

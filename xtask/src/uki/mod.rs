//! The Unified Kernel Image: the target arch's systemd-stub with the image's os-release, kernel
//! command line, kernel release, initramfs and kernel as PE sections (pe.rs writes them). The kernel
//! and the stub come from their package sets, unpacked once into the cache; every file read from
//! there is checked against the digests recorded when it was unpacked.

pub mod pe;
pub mod secure_boot;

use crate::archive::lockfile::LockedPackage;
use crate::archive::unpacked::{unpacked_set, verify_unpacked};
use crate::initramfs::kmod::ModuleTree;
use crate::rootfs::tree::os_release;
use crate::spec::names::PackageSet;
use crate::spec::{Arch, ImageSpec};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Where systemd-boot-efi keeps its stubs.
const STUB_DIR: &str = "usr/lib/systemd/boot/efi";

/// The unpacked kernel and stub of one arch.
pub struct Parts {
    arch: Arch,
    kernel_dir: PathBuf,
    stub_dir: PathBuf,
    pub modules: ModuleTree,
}

impl Parts {
    /// Unpacks (or finds in the cache) the kernel and efi-stub sets of `debs`.
    pub fn open(cache_dir: &Path, arch: Arch, debs: &[(&LockedPackage, &Path)]) -> Result<Parts> {
        let kernel_dir = unpacked_set(cache_dir, debs, &PackageSet::Kernel)?;
        let stub_dir = unpacked_set(cache_dir, debs, &PackageSet::EfiStub)?;
        let modules = ModuleTree::open(&kernel_dir)?;
        Ok(Parts { arch, kernel_dir, stub_dir, modules })
    }

    fn vmlinuz(&self) -> PathBuf {
        PathBuf::from(format!("boot/vmlinuz-{}", self.modules.release))
    }

    fn stub(&self) -> PathBuf {
        Path::new(STUB_DIR).join(self.arch.efi_stub_file())
    }

    /// Checks everything a build reads from the unpacked trees: the kernel image, the stub and the
    /// modules to load (whose .modinfo the dependency walk read).
    pub fn verify(&self, load_order: &[(String, PathBuf)]) -> Result<()> {
        let module_base = self.modules.dir.strip_prefix(&self.kernel_dir)?;
        let mut kernel_files = vec![self.vmlinuz()];
        kernel_files.extend(load_order.iter().map(|(_, rel)| module_base.join(rel)));
        verify_unpacked(&self.kernel_dir, &kernel_files)?;
        verify_unpacked(&self.stub_dir, &[self.stub()])
    }

    /// The UKI's bytes: the stub with .osrel, .cmdline, .uname, .initrd and .linux.
    pub fn build(&self, spec: &ImageSpec, cmdline: &str, initramfs: &Path) -> Result<Vec<u8>> {
        let stub_path = self.stub_dir.join(self.stub());
        let vmlinuz = self.kernel_dir.join(self.vmlinuz());
        let stub = fs::read(&stub_path).with_context(|| format!("reading the EFI stub {}", stub_path.display()))?;
        let linux = fs::read(&vmlinuz).with_context(|| format!("reading the kernel {}", vmlinuz.display()))?;
        let initrd = fs::read(initramfs).with_context(|| format!("reading {}", initramfs.display()))?;
        let osrel = os_release(spec);
        pe::build_uki(
            &stub,
            &[
                (".osrel", osrel.as_bytes()),
                (".cmdline", cmdline.as_bytes()),
                (".uname", self.modules.release.as_bytes()),
                (".initrd", &initrd),
                (".linux", &linux),
            ],
        )
        .context("building the unified kernel image")
    }
}

//! Host tools: every program the tasks run, which Debian package provides it, and the one place
//! that installs what is missing (saying so). A fresh machine needs nothing installed by hand.

use crate::cmd::cmd;
use crate::progress;
use crate::spec::{Arch, Board};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Something the host must have: a file (a program, a firmware image, a library) and its package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// An absolute path, or a program name looked up on PATH.
    pub file: String,
    /// Debian package that provides it, with `:arm64` for foreign-arch packages.
    pub package: String,
    /// What needs it, for the message.
    pub why: &'static str,
}

fn req(file: impl Into<String>, package: impl Into<String>, why: &'static str) -> Requirement {
    Requirement { file: file.into(), package: package.into(), why }
}

/// What reading the Debian archive (`lock`) needs.
pub fn for_archive() -> Vec<Requirement> {
    vec![
        req("gpgv", "gpgv", "verifying the Debian archive's InRelease"),
        req("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring", "verifying the Debian archive"),
    ]
}

/// What building an image for `arch` needs.
pub fn for_build(arch: Arch) -> Vec<Requirement> {
    let mut reqs = for_archive();
    reqs.extend([
        req("mksquashfs", "squashfs-tools", "making squashfs layers"),
        req("qemu-img", "qemu-utils", "writing qcow2 disks"),
    ]);
    reqs.extend(for_machined(arch));
    reqs
}

/// What compiling machined for `arch` needs: Debian's rustc (the one toolchain here with std for
/// both arches), the target's std, and the GNU gcc and static libc that link it.
pub fn for_machined(arch: Arch) -> Vec<Requirement> {
    let mut reqs = vec![req("/usr/bin/rustc", "rustc", "compiling machined with a toolchain that targets both arches")];
    match arch {
        Arch::Amd64 => reqs.extend([
            req("/usr/lib/rustlib/x86_64-unknown-linux-gnu/lib", "libstd-rust-dev", "compiling machined for amd64"),
            req("x86_64-linux-gnu-gcc", "gcc", "linking machined for amd64"),
            req("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev", "linking machined statically for amd64"),
        ]),
        Arch::Arm64 => reqs.extend([
            req(
                "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib",
                "libstd-rust-dev:arm64",
                "compiling machined for arm64",
            ),
            req("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", "linking machined for arm64"),
            req("/usr/aarch64-linux-gnu/lib/libc.a", "libc6-dev-arm64-cross", "linking machined statically for arm64"),
        ]),
    }
    reqs
}

/// What booting `board` in QEMU needs.
pub fn for_boot(board: &Board) -> Vec<Requirement> {
    let f = &board.file;
    vec![
        req(f.qemu.binary.clone(), f.qemu.package.clone(), "boot-test"),
        req(f.firmware.code.display().to_string(), f.firmware.package.clone(), "boot-test (UEFI firmware)"),
        req(f.firmware.vars.display().to_string(), f.firmware.package.clone(), "boot-test (UEFI variables)"),
    ]
}

/// What the test suite uses to check outputs with independent tools.
pub fn for_tests() -> Vec<Requirement> {
    vec![
        req("minisign", "minisign", "checking our signatures with minisign's own verifier"),
        req("sgdisk", "gdisk", "checking GPT disks"),
        req("fsck.vfat", "dosfstools", "checking the ESP"),
        req("mdir", "mtools", "reading files back from the ESP"),
        req("unsquashfs", "squashfs-tools", "listing squashfs layers"),
        req("cpio", "cpio", "listing initramfs archives"),
        req("x86_64-linux-gnu-objdump", "binutils", "checking UKI sections (x86-64)"),
        req("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu", "checking UKI sections (arm64)"),
    ]
}

fn present(file: &str) -> bool {
    if file.starts_with('/') {
        Path::new(file).exists()
    } else {
        crate::cmd::Cmd::exists(file)
    }
}

/// Installs the packages behind every missing requirement, or does nothing when all are present.
pub fn ensure(reqs: &[Requirement]) -> Result<()> {
    let mut missing: Vec<&Requirement> = reqs.iter().filter(|r| !present(&r.file)).collect();
    missing.dedup_by(|a, b| a.package == b.package);
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|r| r.package.clone()).collect();
    packages.sort();
    packages.dedup();
    for r in &missing {
        progress::note(format!("installing {} for {} (missing {})", r.package, r.why, r.file));
    }
    if !is_root() {
        bail!(
            "host tools are missing and installing them needs root: run `sudo apt-get install {}`",
            packages.join(" ")
        );
    }
    if packages.iter().any(|p| p.ends_with(":arm64")) {
        add_foreign_arch("arm64")?;
    }
    let packages = with_qemu_from_backports(packages)?;
    progress::note("running apt-get update");
    cmd("apt-get").args(["update", "-q"]).run().context("apt-get update")?;
    progress::note(format!("running apt-get install {}", packages.join(" ")));
    cmd("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
        .with_context(|| format!("installing host tools {}", packages.join(" ")))?;
    let still: Vec<&str> = reqs.iter().filter(|r| !present(&r.file)).map(|r| r.file.as_str()).collect();
    if !still.is_empty() {
        bail!("installed {} but still missing: {}", packages.join(" "), still.join(", "));
    }
    Ok(())
}

fn is_root() -> bool {
    cmd("id").arg("-u").read().map(|uid| uid.trim() == "0").unwrap_or(false)
}

fn add_foreign_arch(arch: &str) -> Result<()> {
    let archs = cmd("dpkg").arg("--print-foreign-architectures").read()?;
    if !archs.lines().any(|a| a.trim() == arch) {
        progress::note(format!("adding the {arch} architecture to dpkg (for cross-compiling machined)"));
        cmd("dpkg").args(["--add-architecture", arch]).run()?;
    }
    Ok(())
}

/// This machine kind ships qemu-utils from bookworm-backports, which breaks bookworm's own
/// qemu-system packages (see shared/FACTS.md). Then the emulator must come from backports too; the
/// backports source reuses the URI of the host's existing Debian source (no mirror is hard-coded).
fn with_qemu_from_backports(packages: Vec<String>) -> Result<Vec<String>> {
    if !packages.iter().any(|p| p.starts_with("qemu-system-")) {
        return Ok(packages);
    }
    let installed = cmd("dpkg-query").args(["-W", "-f=${Version}", "qemu-utils"]).read().unwrap_or_default();
    if !installed.contains("bpo") {
        return Ok(packages);
    }
    let suite = cmd("sh").args(["-c", ". /etc/os-release && echo $VERSION_CODENAME"]).read()?.trim().to_string();
    let backports = format!("{suite}-backports");
    let source = Path::new("/etc/apt/sources.list.d/nodeimg-backports.sources");
    if !source.exists() && !apt_sources_mention(&backports)? {
        let uri = crate::debian::mirror::resolve(None, &suite).context("finding the Debian mirror for backports")?;
        progress::note(format!("adding {backports} (from {uri}) to apt sources, for qemu-system matching qemu-utils"));
        let text = format!(
            "Types: deb\nURIs: {uri}\nSuites: {backports}\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        std::fs::write(source, text).with_context(|| format!("writing {}", source.display()))?;
    }
    let mut out = Vec::new();
    for p in packages {
        if p.starts_with("qemu-system-") {
            out.push(format!("{p}/{backports}"));
        } else {
            out.push(p);
        }
    }
    for p in ["qemu-system-common", "qemu-system-data", "seabios"] {
        out.push(format!("{p}/{backports}"));
    }
    Ok(out)
}

fn apt_sources_mention(suite: &str) -> Result<bool> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            if let Ok(t) = std::fs::read_to_string(entry.path()) {
                texts.push(t);
            }
        }
    }
    Ok(texts.iter().any(|t| t.lines().any(|l| !l.trim_start().starts_with('#') && l.contains(suite))))
}

/// For unit tests that check outputs with independent tools (sgdisk, fsck.vfat, minisign, Debian's
/// rustc, ...): installs everything once per test process, so `cargo test` works on a fresh machine.
#[cfg(test)]
pub fn for_unit_tests() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut reqs = for_tests();
        for arch in Arch::ALL {
            reqs.extend(for_build(arch));
        }
        if let Err(e) = ensure(&reqs) {
            panic!("installing host tools for the tests: {e:#}");
        }
    });
}

//! Compiles machined (the image's PID 1, `machined/`) for a target architecture.
//!
//! rustup here has only the host target and cannot fetch others, so machined is compiled with
//! Debian's rustc-web and cargo-web (1.96 in bookworm-security) and their `libstd-rust-web-dev[:arm64]`,
//! linked statically by the GNU cross gcc. cargo-web builds machined and its few crates from the
//! workspace (`Cargo.toml`, the one `Cargo.lock`, `--locked`) with the workspace's `image` profile.
//!
//! The result is reproducible (the checkout's and the registry's paths are remapped; no debug info;
//! symbols stripped) and cached under `<cache>/machined/<sha256>`, keyed on everything that decides the
//! output: the rustc and cargo versions, the target and flags, the linker's version, the static libc,
//! the manifests, the lockfile (which pins every crate by checksum) and every source file.

use crate::spec::Arch;
use crate::util::cmd::{cmd, Cmd};
use crate::util::digest::hex;
use crate::util::fs::set_executable;
use crate::util::host::{pkg_req, req, Requirement};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Debian's rustc-web and cargo-web: the one toolchain here that has std for both arches.
const RUSTC: &str = "/usr/bin/rustc";
const CARGO: &str = "/usr/bin/cargo";
/// The workspace profile machined is built with for the image (root Cargo.toml).
const PROFILE: &str = "image";
/// The oldest rustc that builds machined and its crates (rust-version in machined/Cargo.toml).
const MIN_RUSTC: (u32, u32) = (1, 85);

/// What compiling machined for `arch` needs: Debian's rustc-web and cargo-web, the target's std, and
/// the GNU gcc and static libc that link it. (rustc-web replaces Debian's older rustc.)
pub fn requirements(arch: Arch) -> Vec<Requirement> {
    let mut reqs = vec![
        pkg_req("rustc-web", "compiling machined with a toolchain that targets both arches"),
        pkg_req("cargo-web", "building machined and its crates"),
        pkg_req("libstd-rust-web-dev", "compiling machined (and the crates' build-time code) for amd64"),
    ];
    match arch {
        Arch::Amd64 => reqs.extend([
            req("x86_64-linux-gnu-gcc", "gcc", "linking machined for amd64"),
            req("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev", "linking machined statically for amd64"),
        ]),
        Arch::Arm64 => reqs.extend([
            pkg_req("libstd-rust-web-dev:arm64", "compiling machined for arm64"),
            req("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", "linking machined for arm64"),
            req("/usr/aarch64-linux-gnu/lib/libc.a", "libc6-dev-arm64-cross", "linking machined statically for arm64"),
        ]),
    }
    reqs
}

/// Every Debian package machined's build needs, for both arches.
fn packages() -> Vec<String> {
    let mut packages: Vec<String> = Vec::new();
    for requirement in Arch::ALL.iter().flat_map(|&arch| requirements(arch)) {
        if !packages.contains(&requirement.package) {
            packages.push(requirement.package);
        }
    }
    packages
}

/// Bumped when the way the binary is built changes in a way the key would not see.
const KEY_VERSION: &str = "machined-build/2";

fn linker(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu-gcc",
        Arch::Arm64 => "aarch64-linux-gnu-gcc",
    }
}

/// ELF e_machine of the target.
fn elf_machine(arch: Arch) -> u16 {
    match arch {
        Arch::Amd64 => 62,
        Arch::Arm64 => 183,
    }
}

/// The rustc flags for the target that decide the output, without any path (they are part of the
/// cache key). The rest is the `image` profile.
const RUSTFLAGS: [&str; 2] = ["-C", "target-feature=+crt-static"];

/// Compiles machined for `arch` (or takes it from the cache) and returns the path of a copy in
/// `work_dir`: `machined-<arch>`, a static ELF executable for the target.
pub fn build(arch: Arch, cache_dir: &Path, work_dir: &Path) -> Result<PathBuf> {
    Ok(build_from(&crate_dir(), arch, cache_dir, work_dir)?.path)
}

/// Environment variable naming another copy of the machined crate to compile (and describe in the SBOM):
/// `build-image --check-reproducible` builds its second image from a copy at another path, as a
/// second clone would. Its parent directory must hold the workspace (Cargo.toml, Cargo.lock,
/// xtask/Cargo.toml).
pub const CRATE_DIR_ENV: &str = "XTASK_MACHINED_DIR";

/// The machined crate a build compiles: the repository's `machined/`, unless $XTASK_MACHINED_DIR names one.
pub fn crate_dir() -> PathBuf {
    match std::env::var_os(CRATE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => crate::util::paths::repo_root().join("machined"),
    }
}

/// The files of the workspace a machined build reads besides machined's sources, relative to the
/// workspace root.
pub const WORKSPACE_FILES: [&str; 4] = ["Cargo.toml", "Cargo.lock", "xtask/Cargo.toml", "machined/Cargo.toml"];

fn workspace_root(crate_dir: &Path) -> Result<&Path> {
    crate_dir.parent().with_context(|| format!("{} has no parent (the workspace)", crate_dir.display()))
}

struct Built {
    path: PathBuf,
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests' checks
    cache_hit: bool,
}

fn build_from(crate_dir: &Path, arch: Arch, cache_dir: &Path, work_dir: &Path) -> Result<Built> {
    check_toolchain(arch)?;
    let key = key_of(crate_dir, arch)?;
    let entry_dir = cache_dir.join("machined");
    let entry = entry_dir.join(&key);

    let cached = std::fs::read(&entry).ok().filter(|bytes| check_elf(bytes, arch).is_ok());
    let cache_hit = cached.is_some();
    if !cache_hit {
        std::fs::create_dir_all(&entry_dir).with_context(|| format!("creating {}", entry_dir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&entry_dir)
            .with_context(|| format!("creating a temporary directory in {}", entry_dir.display()))?;
        let out = compile(crate_dir, arch, tmp.path())?;
        let bytes = std::fs::read(&out).with_context(|| format!("reading {}", out.display()))?;
        check_elf(&bytes, arch)
            .with_context(|| format!("cargo built a wrong binary for {arch} ({})", out.display()))?;
        std::fs::rename(&out, &entry).with_context(|| format!("moving {} to {}", out.display(), entry.display()))?;
    }

    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let path = work_dir.join(format!("machined-{arch}"));
    let tmp = tempfile::NamedTempFile::new_in(work_dir)
        .with_context(|| format!("creating a temporary file in {}", work_dir.display()))?;
    std::fs::copy(&entry, tmp.path())
        .with_context(|| format!("copying {} to {}", entry.display(), tmp.path().display()))?;
    set_executable(tmp.path())?;
    tmp.persist(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Built { path, cache_hit })
}

/// Where cargo keeps the crates it downloaded (their sources' paths are remapped).
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Runs cargo-web for the target in `scratch` and returns the binary's path there.
fn compile(crate_dir: &Path, arch: Arch, scratch: &Path) -> Result<PathBuf> {
    let root = workspace_root(crate_dir)?;
    let target = arch.rust_target();
    // Panic locations then read /build/machined/src/… and /cargo/…, whichever checkout built the binary.
    let mut rustflags: Vec<String> = RUSTFLAGS.iter().map(|f| f.to_string()).collect();
    rustflags.push(format!("--remap-path-prefix={}=/build", root.display()));
    rustflags.push(format!("--remap-path-prefix={}=/cargo", cargo_home().display()));
    let target_dir = scratch.join("target");
    let mut build = cmd(CARGO)
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", "machined", "--profile", PROFILE, "--target", target, "--locked", "--quiet"])
        .env("RUSTC", RUSTC)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(format!("CARGO_TARGET_{}_LINKER", target.to_uppercase().replace('-', "_")), linker(arch))
        // 0x1f separates the flags, so a path with a space stays one flag.
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\u{1f}"))
        .env("CARGO_INCREMENTAL", "0")
        .dir(root);
    // Whatever the caller's environment says about flags and wrappers must not reach the image.
    for var in [
        "RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_PROFILE_IMAGE_OPT_LEVEL",
    ] {
        build = build.env_remove(var);
    }
    build.run().with_context(|| format!("compiling machined for {arch}"))?;
    Ok(target_dir.join(target).join(PROFILE).join("machined"))
}

fn missing(arch: Arch, what: String) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot compile machined for {arch}: {what}. machined is built with Debian's rustc-web, cargo-web and \
         cross tools; install them with `apt-get install {}` (after `dpkg --add-architecture arm64` and \
         `apt-get update`), or run `cargo xtask host-tools`",
        packages().join(" ")
    )
}

/// The version rustc reports: "rustc 1.96.0 (...)" → (1, 96).
fn rustc_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Checks that Debian's rustc-web and cargo-web, the target's std, the linker and the static libc
/// are installed.
fn check_toolchain(arch: Arch) -> Result<()> {
    for (tool, package) in [(RUSTC, "rustc-web"), (CARGO, "cargo-web")] {
        if !Path::new(tool).is_file() {
            return Err(missing(arch, format!("{tool} is missing (package {package})")));
        }
    }
    let version = cmd(RUSTC).arg("-V").read()?;
    match rustc_version(&version) {
        Some(found) if found >= MIN_RUSTC => {}
        _ => {
            return Err(missing(
                arch,
                format!(
                    "{RUSTC} is `{}`, older than {}.{} (Debian's rustc, not rustc-web)",
                    version.trim(),
                    MIN_RUSTC.0,
                    MIN_RUSTC.1
                ),
            ))
        }
    }
    let std_package = match arch {
        Arch::Amd64 => "libstd-rust-web-dev",
        Arch::Arm64 => "libstd-rust-web-dev:arm64",
    };
    let libdir = cmd(RUSTC).args(["--print", "target-libdir", "--target", arch.rust_target()]).read()?;
    let libdir = PathBuf::from(libdir.trim());
    let has_std = std::fs::read_dir(&libdir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("libstd-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false);
    if !has_std {
        return Err(missing(
            arch,
            format!("no Rust std for {} in {} (package {std_package})", arch.rust_target(), libdir.display()),
        ));
    }
    let (gcc_package, libc_package) = match arch {
        Arch::Amd64 => ("gcc", "libc6-dev"),
        Arch::Arm64 => ("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
    };
    let linker = linker(arch);
    if !Cmd::exists(linker) {
        return Err(missing(arch, format!("the linker {linker} is not on PATH (package {gcc_package})")));
    }
    if static_libc(arch).is_err() {
        return Err(missing(arch, format!("{linker} finds no static libc.a (package {libc_package})")));
    }
    Ok(())
}

/// The libc.a the linker would use for a static link.
fn static_libc(arch: Arch) -> Result<PathBuf> {
    let out = cmd(linker(arch)).arg("-print-file-name=libc.a").read()?;
    let path = PathBuf::from(out.trim());
    // gcc prints the bare name back when it finds nothing.
    if !path.is_absolute() || !path.is_file() {
        bail!("{} -print-file-name=libc.a found nothing", linker(arch));
    }
    Ok(path)
}

/// Hex sha256 over everything that decides the binary. Paths of the checkout do not enter it.
/// The digest of everything that decides machined's binary for `arch` (the stage cache's key too).
pub fn cache_key(arch: Arch) -> Result<String> {
    check_toolchain(arch)?;
    key_of(&crate_dir(), arch)
}

fn key_of(crate_dir: &Path, arch: Arch) -> Result<String> {
    let root = workspace_root(crate_dir)?;
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(KEY_VERSION.as_bytes());
    field(cmd(RUSTC).arg("-vV").read()?.as_bytes());
    field(cmd(CARGO).arg("-V").read()?.as_bytes());
    field(arch.rust_target().as_bytes());
    field(PROFILE.as_bytes());
    for flag in RUSTFLAGS {
        field(flag.as_bytes());
    }
    field(cmd(linker(arch)).arg("--version").read()?.as_bytes());
    let libc = static_libc(arch)?;
    let libc_bytes = std::fs::read(&libc).with_context(|| format!("reading {}", libc.display()))?;
    field(&Sha256::digest(&libc_bytes));
    for rel in WORKSPACE_FILES {
        let path = root.join(rel);
        field(rel.as_bytes());
        field(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
    }
    for (rel, contents) in sources(crate_dir)? {
        field(rel.as_bytes());
        field(&contents);
    }
    Ok(hex(&h.finalize()))
}

/// Every file under `<crate>/src` (paths relative to the crate, sorted) with its contents.
fn sources(crate_dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(&src).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing {}", src.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(crate_dir).expect("walkdir stays under its root");
        let rel = rel.to_str().with_context(|| format!("{} is not a UTF-8 path", entry.path().display()))?.to_string();
        let contents = std::fs::read(entry.path()).with_context(|| format!("reading {}", entry.path().display()))?;
        files.push((rel, contents));
    }
    if files.is_empty() {
        bail!("no machined sources in {}", src.display());
    }
    Ok(files)
}

const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;

/// Checks `bytes` is a 64-bit little-endian ELF executable for `arch` that needs no dynamic loader:
/// no PT_INTERP and no DT_NEEDED (static-pie keeps a PT_DYNAMIC for self-relocation, nothing more).
fn check_elf(bytes: &[u8], arch: Arch) -> Result<()> {
    let u16_at = |o: usize| bytes.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| bytes.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |o: usize| bytes.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("not an ELF file");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        bail!("not a 64-bit little-endian ELF file (class {}, data {})", bytes[4], bytes[5]);
    }
    let e_type = u16_at(16).unwrap_or(0);
    if e_type != 2 && e_type != 3 {
        bail!("ELF type {e_type} is not an executable");
    }
    let machine = u16_at(18).unwrap_or(0);
    if machine != elf_machine(arch) {
        bail!("ELF machine is {machine}, but {arch} needs {}", elf_machine(arch));
    }
    let phoff = u64_at(32).unwrap_or(0) as usize;
    let phentsize = u16_at(54).unwrap_or(0) as usize;
    let phnum = u16_at(56).unwrap_or(0) as usize;
    if phnum == 0 || phentsize < 56 {
        bail!("ELF file has no usable program headers");
    }
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph).context("program header past the end of the file")?;
        if p_type == PT_INTERP {
            bail!("ELF file asks for a program interpreter (dynamically linked), machined must be static");
        }
        if p_type == PT_DYNAMIC {
            let offset = u64_at(ph + 8).context("truncated program header")? as usize;
            let size = u64_at(ph + 32).context("truncated program header")? as usize;
            for d in (offset..offset.saturating_add(size)).step_by(16) {
                match u64_at(d) {
                    Some(0) | None => break,
                    Some(DT_NEEDED) => bail!("ELF file needs shared libraries (DT_NEEDED), machined must be static"),
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program_header_types(bytes: &[u8]) -> Vec<u32> {
        let phoff = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
        let phentsize = u16::from_le_bytes([bytes[54], bytes[55]]) as usize;
        let phnum = u16::from_le_bytes([bytes[56], bytes[57]]) as usize;
        (0..phnum)
            .map(|i| {
                let o = phoff + i * phentsize;
                u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn builds_static_binaries_for_both_arches_and_caches_them() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let (cache, work) = (dir.path().join("cache"), dir.path().join("work"));
        let crate_dir = crate::util::paths::repo_root().join("machined");
        for arch in Arch::ALL {
            let built = build_from(&crate_dir, arch, &cache, &work).unwrap();
            assert!(!built.cache_hit);
            assert_eq!(built.path, work.join(format!("machined-{arch}")));
            let bytes = std::fs::read(&built.path).unwrap();
            assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), elf_machine(arch), "{arch}");
            let types = program_header_types(&bytes);
            assert!(!types.is_empty());
            assert!(!types.contains(&PT_INTERP), "{arch}: has PT_INTERP");
            check_elf(&bytes, arch).unwrap();
            let other = if arch == Arch::Amd64 { Arch::Arm64 } else { Arch::Amd64 };
            assert!(check_elf(&bytes, other).is_err());

            let again = build_from(&crate_dir, arch, &cache, &work).unwrap();
            assert!(again.cache_hit, "{arch}: warm build recompiled");
            assert_eq!(std::fs::read(&again.path).unwrap(), bytes);
        }
        let entries: Vec<_> =
            std::fs::read_dir(cache.join("machined")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries.len(), 2, "one cache entry per arch, no leftovers: {entries:?}");
    }

    /// Copies the workspace files a machined build reads, and machined's sources, under `to`.
    fn copy_workspace(to: &Path) -> PathBuf {
        let root = crate::util::paths::repo_root();
        let original = root.join("machined");
        for rel in WORKSPACE_FILES {
            std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(root.join(rel), to.join(rel)).unwrap();
        }
        let copy = to.join("machined");
        for rel in sources(&original).unwrap().into_iter().map(|(rel, _)| rel) {
            std::fs::create_dir_all(copy.join(&rel).parent().unwrap()).unwrap();
            std::fs::copy(original.join(&rel), copy.join(&rel)).unwrap();
        }
        copy
    }

    #[test]
    fn output_is_identical_from_another_checkout() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let original = crate::util::paths::repo_root().join("machined");
        let copy = copy_workspace(&dir.path().join("a/much/longer/path/to/another/clone"));
        for arch in Arch::ALL {
            assert_eq!(
                key_of(&original, arch).unwrap(),
                key_of(&copy, arch).unwrap(),
                "{arch}: key depends on the path"
            );
            let a = build_from(&original, arch, &dir.path().join("cache-a"), &dir.path().join("work-a")).unwrap();
            let b = build_from(&copy, arch, &dir.path().join("cache-b"), &dir.path().join("work-b")).unwrap();
            assert!(!a.cache_hit && !b.cache_hit);
            assert!(std::fs::read(&a.path).unwrap() == std::fs::read(&b.path).unwrap(), "{arch}: binaries differ");
        }
    }

    #[test]
    fn cache_key_follows_the_sources_and_the_lock() {
        crate::tasks::host_tools::for_unit_tests();
        let dir = tempfile::tempdir().unwrap();
        let crate_dir = copy_workspace(dir.path());
        let one = key_of(&crate_dir, Arch::Amd64).unwrap();
        assert_ne!(one, key_of(&crate_dir, Arch::Arm64).unwrap());
        std::fs::write(crate_dir.join("src/extra.rs"), "").unwrap();
        let two = key_of(&crate_dir, Arch::Amd64).unwrap();
        assert_ne!(one, two);
        let main = std::fs::read_to_string(crate_dir.join("src/main.rs")).unwrap();
        std::fs::write(crate_dir.join("src/main.rs"), format!("{main}\n")).unwrap();
        let three = key_of(&crate_dir, Arch::Amd64).unwrap();
        assert_ne!(two, three);
        let lock = std::fs::read_to_string(dir.path().join("Cargo.lock")).unwrap();
        std::fs::write(dir.path().join("Cargo.lock"), format!("{lock}\n")).unwrap();
        assert_ne!(three, key_of(&crate_dir, Arch::Amd64).unwrap(), "the lock pins the crates");
    }

    #[test]
    fn rustc_versions_are_read_and_compared() {
        assert_eq!(rustc_version("rustc 1.96.0 (dfsg 2026)"), Some((1, 96)));
        assert_eq!(rustc_version("rustc 1.63.0"), Some((1, 63)));
        assert!(rustc_version("rustc 1.63.0").unwrap() < MIN_RUSTC);
        assert_eq!(rustc_version("garbage"), None);
    }

    #[test]
    fn rejects_dynamic_and_foreign_files() {
        let sh = std::fs::read("/bin/sh").unwrap();
        let err = check_elf(&sh, Arch::Amd64).unwrap_err().to_string();
        assert!(err.contains("interpreter"), "{err}");
        assert!(check_elf(b"#!/bin/sh\n", Arch::Amd64).unwrap_err().to_string().contains("not an ELF"));
        assert!(check_elf(&sh[..40], Arch::Amd64).is_err());
    }

    #[test]
    fn missing_tools_name_the_packages() {
        let msg = missing(Arch::Arm64, "x".into()).to_string();
        for package in [
            "rustc-web",
            "cargo-web",
            "libstd-rust-web-dev",
            "libstd-rust-web-dev:arm64",
            "gcc-aarch64-linux-gnu",
            "libc6-dev-arm64-cross",
        ] {
            assert!(msg.contains(package), "{msg}");
        }
    }
}

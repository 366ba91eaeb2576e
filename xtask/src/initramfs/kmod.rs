//! Kernel modules needed to boot. Debian's kernel debs ship no modules.dep (depmod runs in postinst,
//! which we never run), so dependencies are read from each .ko's `.modinfo` section (`depends=`).
//! Modules may be compressed (trixie ships `.ko.xz`): they go into the initramfs as they are, and
//! machined asks the kernel to decompress them (finit_module's MODULE_INIT_COMPRESSED_FILE).

use crate::util::cmd::cmd;
use crate::util::elf;
use crate::util::host::{req, Requirement};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// depmod indexes the root's module tree.
pub fn requirements() -> Vec<Requirement> {
    vec![req("/usr/sbin/depmod", "kmod", "indexing the on-demand module tree (depmod)")]
}

/// The kernel's index files copied with the modules (depmod makes the rest).
const TREE_FILES: [&str; 3] = ["modules.builtin", "modules.builtin.modinfo", "modules.order"];

/// The kernel's modules directory inside an unpacked kernel package: `<root>/usr/lib/modules/<release>`.
pub struct ModuleTree {
    pub release: String,
    pub dir: PathBuf,
    /// Module name (with '_' for '-') → path relative to `dir`.
    by_name: BTreeMap<String, PathBuf>,
    /// Names built into the kernel image (modules.builtin), which need no loading.
    builtin: BTreeSet<String>,
}

/// Module file endings: plain, and the compressions a kernel can decompress itself.
const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = MODULE_SUFFIXES.iter().find_map(|suffix| name.strip_suffix(suffix))?;
    Some(stem.replace('-', "_"))
}

/// A module file's ELF bytes, decompressed if it is compressed.
fn module_bytes(ko: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let data = std::fs::read(ko).with_context(|| format!("reading {}", ko.display()))?;
    let name = ko.to_string_lossy();
    let mut out = Vec::new();
    let decompressed = if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new(&data[..]).read_to_end(&mut out)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&data[..]).and_then(|mut d| d.read_to_end(&mut out))
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut out)
    } else {
        return Ok(data);
    };
    decompressed.with_context(|| format!("decompressing {}", ko.display()))?;
    Ok(out)
}

impl ModuleTree {
    /// Finds the single kernel release under `root/usr/lib/modules`.
    pub fn open(root: &Path) -> Result<ModuleTree> {
        let base = root.join("usr/lib/modules");
        let releases: Vec<PathBuf> = std::fs::read_dir(&base)
            .with_context(|| format!("the kernel package has no {}", base.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        let [dir] = releases.as_slice() else {
            bail!("expected one kernel release in {}, found {}", base.display(), releases.len());
        };
        let release = dir.file_name().and_then(|n| n.to_str()).context("kernel release is not UTF-8")?.to_string();
        let mut by_name = BTreeMap::new();
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry?;
            if let Some(name) = module_name(entry.path()) {
                by_name.insert(name, entry.path().strip_prefix(dir)?.to_path_buf());
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name(Path::new(l)))
            .collect();
        Ok(ModuleTree { release, dir: dir.clone(), by_name, builtin })
    }

    /// The modules to load for `wanted`, dependencies first, as paths relative to the release dir.
    /// Built-in modules are skipped; an unknown one is an error naming `source` (the board file) and
    /// its `field`.
    pub fn load_order(&self, wanted: &[String], source: &Path, field: &str) -> Result<Vec<(String, PathBuf)>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in wanted {
            let name = name.replace('-', "_");
            if !self.by_name.contains_key(&name) && !self.builtin.contains(&name) {
                bail!("{}: field `{field}`: kernel {} has no module {name:?}", source.display(), self.release);
            }
            self.visit(&name, &mut seen, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    /// Copies the modules under `dirs` (paths relative to the release's `kernel/` directory: a
    /// directory, or a module without its suffix), plus `also`, plus every dependency, into `root`'s
    /// `usr/lib/modules/<release>` and indexes them with depmod, so that the running kernel's module
    /// requests can be served from the root. `field` names the spec field for errors. Returns how
    /// many modules were shipped.
    pub fn install_on_demand(&self, root: &Path, dirs: &[String], also: &[String], field: &str) -> Result<usize> {
        let mut wanted: Vec<String> = also.to_vec();
        for dir in dirs {
            let prefix = format!("kernel/{dir}");
            let matched: Vec<&String> = self
                .by_name
                .iter()
                .filter(|(_, rel)| {
                    let rel = rel.to_string_lossy();
                    rel.starts_with(&format!("{prefix}/"))
                        || MODULE_SUFFIXES.iter().any(|suffix| rel == format!("{prefix}{suffix}"))
                })
                .map(|(name, _)| name)
                .collect();
            if matched.is_empty() {
                bail!("{field}: {dir:?} holds no module of kernel {}", self.release);
            }
            wanted.extend(matched.into_iter().cloned());
        }
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &wanted {
            self.visit(name, &mut seen, &mut order, &mut Vec::new())?;
        }
        let dest = root.join("usr/lib/modules").join(&self.release);
        for (_, rel) in &order {
            let to = dest.join(rel);
            let parent = to.parent().context("module path has a parent")?;
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            std::fs::copy(self.dir.join(rel), &to).with_context(|| format!("copying {}", rel.display()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644))?;
        }
        for file in TREE_FILES {
            let from = self.dir.join(file);
            if from.exists() {
                std::fs::copy(&from, dest.join(file)).with_context(|| format!("copying {}", from.display()))?;
                std::fs::set_permissions(dest.join(file), std::fs::Permissions::from_mode(0o644))?;
            }
        }
        cmd("depmod").arg("-b").arg(root).arg(&self.release).run().context("indexing the on-demand modules")?;
        // What create_dir_all and depmod made carries the builder's umask; the image must not.
        for entry in walkdir::WalkDir::new(root.join("usr/lib/modules")) {
            let entry = entry?;
            if entry.file_type().is_symlink() {
                continue; // a link has no mode of its own; chmod would reach its target
            }
            let mode = if entry.file_type().is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", entry.path().display()))?;
        }
        Ok(order.len())
    }

    /// Reads the kernel's build configuration (`boot/config-<release>` in the unpacked package) as
    /// option → value (`y`, `m`, a number or a string); unset options are absent.
    pub fn config(&self) -> Result<BTreeMap<String, String>> {
        let package_root = self.dir.ancestors().nth(4).context("the module tree is not inside a package root")?;
        let path = package_root.join(format!("boot/config-{}", self.release));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(key, _)| key.starts_with("CONFIG_"))
            .map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string()))
            .collect())
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<(String, PathBuf)>,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if seen.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let rel = self.by_name.get(name).with_context(|| {
            format!("module {} depends on {name:?}, which kernel {} lacks", stack.join(" -> "), self.release)
        })?;
        stack.push(name.to_string());
        for dep in depends(&self.dir.join(rel))? {
            self.visit(&dep, seen, order, stack)?;
        }
        stack.pop();
        seen.insert(name.to_string());
        order.push((name.to_string(), rel.clone()));
        Ok(())
    }
}

/// The `depends=` list of a .ko file, read from its ELF `.modinfo` section.
pub fn depends(ko: &Path) -> Result<Vec<String>> {
    let data = module_bytes(ko)?;
    let modinfo = elf::section(&data, ".modinfo").with_context(|| format!("{}: reading .modinfo", ko.display()))?;
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|field| std::str::from_utf8(field).ok()?.strip_prefix("depends="))
        .flat_map(|list| list.split(',').filter(|d| !d.is_empty()).map(|d| d.replace('-', "_")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 file whose only sections are `.modinfo` (holding `modinfo`) and
    /// the section-name table.
    fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let modinfo_at = elf.len();
        elf.extend_from_slice(modinfo);
        let names_at = elf.len();
        elf.extend_from_slice(names);
        let shoff = elf.len();
        let header = |name: u32, offset: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let table = [header(0, 0, 0), header(1, modinfo_at, modinfo.len()), header(10, names_at, names.len())];
        for h in table {
            elf.extend(h);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn depends_are_read_from_plain_and_compressed_modules() {
        let dir = tempfile::tempdir().unwrap();
        let elf = elf_with_modinfo(b"license=GPL\0depends=dm-mod,libcrc32c\0name=dm_crypt\0");
        std::fs::write(dir.path().join("dm-crypt.ko"), &elf).unwrap();
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
        std::io::Write::write_all(&mut encoder, &elf).unwrap();
        let xz = encoder.finish().unwrap();
        std::fs::write(dir.path().join("dm-crypt.ko.xz"), &xz).unwrap();
        std::fs::write(dir.path().join("dm-crypt.ko.zst"), zstd::encode_all(&elf[..], 3).unwrap()).unwrap();
        for file in ["dm-crypt.ko", "dm-crypt.ko.xz", "dm-crypt.ko.zst"] {
            let path = dir.path().join(file);
            assert_eq!(depends(&path).unwrap(), ["dm_mod", "libcrc32c"], "{file}");
            assert_eq!(module_name(&path).as_deref(), Some("dm_crypt"), "{file}");
        }
        std::fs::write(dir.path().join("bad.ko.xz"), b"not xz").unwrap();
        assert!(format!("{:#}", depends(&dir.path().join("bad.ko.xz")).unwrap_err()).contains("decompressing"));
        assert_eq!(module_name(Path::new("x.ko.bz2")), None);
    }
}

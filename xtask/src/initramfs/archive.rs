//! The one initramfs writer. An archive is a set of paths (sorted, parents first, every parent a
//! directory), written as newc cpio with root ownership and one mtime; the first archive goes out
//! plain (the squashfs inside is compressed already and the kernel unpacks a plain cpio fastest),
//! the extensions' archive zstd-compressed and appended.

use super::cpio::CpioWriter;
use super::kmod::ModuleTree;
use crate::layers::layer::{self, Layer};
use crate::spec::protocol::{EXTENSION_LIST, INIT, MODULE_LIST, ROOT_IMAGE};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// zstd level of the appended archive. Its payload is squashfs, already compressed, so a higher level
/// buys nothing; one thread, because the multi-threaded encoder's output differs from the
/// single-threaded one's and must not vary with the machine.
const ZSTD_LEVEL: i32 = 3;

/// The appended archive's window: 32 MiB, with long-distance matching. Each layer carries its own copy
/// of the libraries its service needs (glibc and others), compressed alike in every layer, and a
/// default window (8 MiB at level 3) does not reach from one layer to the next: 3.9 MB less for the
/// firmware to read on amd64. The kernel's unpacker holds the window in memory while it unpacks, so
/// it is kept to what the layers fill.
const ZSTD_WINDOW_LOG: u32 = 25;

enum Entry<'a> {
    Dir,
    File(PathBuf, u32),
    Bytes(&'a [u8]),
}

/// The entries of one archive, by path (relative, as the kernel's unpacker wants them).
#[derive(Default)]
pub struct Archive<'a> {
    entries: BTreeMap<String, Entry<'a>>,
}

impl<'a> Archive<'a> {
    fn add(&mut self, path: &str, entry: Entry<'a>) {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries.entry(dir.to_string_lossy().into_owned()).or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// A file copied from the host (streamed: rootfs.sqsh can be 100 MB), with this mode.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) {
        self.add(path, Entry::File(source.to_path_buf(), mode));
    }

    /// A file held in memory, mode 0644.
    pub fn bytes(&mut self, path: &str, data: &'a [u8]) {
        self.add(path, Entry::Bytes(data));
    }

    fn write_to<W: Write>(&self, out: W, epoch: i64) -> Result<W> {
        let mut cpio = CpioWriter::new(out, epoch)?;
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir => cpio.add_dir(path, 0o755)?,
                Entry::File(source, mode) => cpio.add_file_from_path(path, *mode, source)?,
                Entry::Bytes(data) => cpio.add_file(path, 0o644, data)?,
            }
        }
        cpio.finish()
    }

    /// Writes the archive, uncompressed, as a new file `out`.
    pub fn write(&self, out: &Path, epoch: i64) -> Result<()> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        self.write_to(std::io::BufWriter::new(file), epoch)?
            .flush()
            .with_context(|| format!("writing {}", out.display()))
    }

    /// Appends the archive, zstd-compressed, to `out`.
    pub fn append_zstd(&self, out: &Path, epoch: i64) -> Result<()> {
        let file = fs::OpenOptions::new()
            .append(true)
            .open(out)
            .with_context(|| format!("opening {} to append to it", out.display()))?;
        let mut encoder = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), ZSTD_LEVEL)
            .context("starting the zstd encoder")?;
        encoder.window_log(ZSTD_WINDOW_LOG).context("setting zstd's window")?;
        encoder.long_distance_matching(true).context("asking zstd for long-distance matching")?;
        self.write_to(encoder, epoch)?
            .finish()
            .context("finishing the zstd stream")?
            .flush()
            .with_context(|| format!("writing {}", out.display()))
    }
}

/// What goes into a node's initramfs.
pub struct Contents<'a> {
    pub machined: &'a Path,
    pub rootfs_sqsh: &'a Path,
    pub modules: &'a ModuleTree,
    /// Boot modules in load order: (name, path relative to the modules' release directory).
    pub load_order: &'a [(String, PathBuf)],
    pub layers: &'a [Layer],
}

/// Writes the node's initramfs at `out`: the first archive, then the extensions' if there are layers.
pub fn write_node(out: &Path, epoch: i64, contents: &Contents) -> Result<()> {
    let rel = |absolute: &str| absolute.trim_start_matches('/').to_string();
    let mut list = String::new();
    let mut first = Archive::default();
    first.file(&rel(INIT), contents.machined, 0o755);
    first.file(&rel(ROOT_IMAGE), contents.rootfs_sqsh, 0o644);
    for (_, module) in contents.load_order {
        let inside = format!("lib/modules/{}/{}", contents.modules.release, module.display());
        list.push_str(&format!("/{inside}\n"));
        first.file(&inside, &contents.modules.dir.join(module), 0o644);
    }
    first.bytes(&rel(MODULE_LIST), list.as_bytes());
    first.write(out, epoch)?;

    if contents.layers.is_empty() {
        return Ok(());
    }
    let yaml = layer::extensions_yaml(contents.layers)?;
    let layer_list = layer::machined_list(contents.layers);
    let mut extensions = Archive::default();
    extensions.bytes(&rel(EXTENSION_LIST), layer_list.as_bytes());
    extensions.bytes("extensions.yaml", yaml.as_bytes());
    for layer in contents.layers {
        extensions.file(&layer::image_path(layer), &layer.sqsh, 0o644);
    }
    extensions.append_zstd(out, epoch)
}

/// bench's floor initramfs: machined alone.
pub fn write_floor(out: &Path, machined: &Path) -> Result<()> {
    let mut archive = Archive::default();
    archive.file(INIT.trim_start_matches('/'), machined, 0o755);
    archive.write(out, 0)
}

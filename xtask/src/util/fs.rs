//! File-system helpers with the modes and atomicity the image and its caches rely on.

use anyhow::{Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use zeroize::Zeroizing;

/// Creates `dir` and its parents if missing, and hands it back.
pub fn ensure_dir(dir: &Path) -> Result<&Path> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The names of `dir`'s entries, sorted.
pub fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// A new directory with mode 0755 whatever the umask (a group- or world-writable one would reach the image).
pub fn make_dir(path: &Path) -> Result<()> {
    fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Writes a file that must not exist yet, mode 0644.
pub fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Mode 0755: an executable the image or a build runs.
pub fn set_executable(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// Temporary files are created 0600; cache entries and lockfiles are ordinary 0644 files.
pub fn set_readable(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Writes through a temporary file in the same directory (prefix `.xtask-write-`) and renames it over
/// `path`, mode 0644, so a reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    replace(path, contents, true)
}

/// [`write_atomic`] without waiting for the disk: for a record of progress rewritten many times a
/// second (an upload journal), where losing the last writes to a power cut only repeats some work.
pub fn write_atomic_unsynced(path: &Path, contents: &[u8]) -> Result<()> {
    replace(path, contents, false)
}

fn replace(path: &Path, contents: &[u8], sync: bool) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    temp.write_all(contents)
        .and_then(|()| if sync { temp.as_file().sync_all() } else { Ok(()) })
        .with_context(|| format!("writing {}", temp.path().display()))?;
    temp.persist(path).map_err(|e| e.error).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Writes a file through a temporary file created with `mode` from the start (so a secret key is
/// never readable by others, not even for a moment), then renames it into place; without `replace`,
/// an existing file is never overwritten (even one created meanwhile).
pub fn write_with_mode(path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    temp.write_all(contents)
        .and_then(|()| temp.as_file().sync_all())
        .with_context(|| format!("writing {}", temp.path().display()))?;
    let persisted = if replace { temp.persist(path) } else { temp.persist_noclobber(path) };
    persisted.map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads a secret (`what`: "secret key", "Secure Boot db key"), refusing a file that group or others
/// may access. The mode is checked on the open handle, so the file judged is the file read.
pub fn read_secret(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let mode = file.metadata().with_context(|| format!("reading the metadata of {what} {}", path.display()))?.mode();
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{}: {what} file has mode {:04o}, which lets group or others access it; run `chmod 600 {}` (and \
             consider the key leaked if others could read it)",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).with_context(|| format!("reading {what} {}", path.display()))?;
    Ok(text)
}

/// The prefix of [`write_atomic`]'s temporary files, for cleaning up after an interrupted run.
pub const TEMP_PREFIX: &str = ".xtask-write-";

/// The mode a file or directory from the repository gets in the image: what git records (755 for
/// directories and executables, 644 for the rest), whatever umask the clone was checked out with.
pub fn checkout_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        0o755
    } else {
        0o644
    }
}

/// Reads until `buffer` is full or the source ends; returns how many bytes it holds. (A plain `read`
/// may return less at any time, which would misalign two files read side by side.)
pub fn read_full(source: &mut dyn std::io::Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match source.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_modes_are_what_git_keeps() {
        assert_eq!(checkout_mode(0o664, false), 0o644);
        assert_eq!(checkout_mode(0o600, false), 0o644);
        assert_eq!(checkout_mode(0o775, false), 0o755);
        assert_eq!(checkout_mode(0o700, true), 0o755);
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_new(&path, b"x").is_err(), "write_new replaced an existing file");
    }
}

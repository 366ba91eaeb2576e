//! Where a signed release is read from when it is verified: a directory here ([`Dir`]), or the objects
//! under a bucket prefix (`upload/source.rs`, a later stage, implements the same trait). Verification
//! needs no more than this: list the names, learn a size, and stream each file once.

use std::io::Read;
use std::path::{Path, PathBuf};

pub trait Source: Sync {
    /// Where the release lies, for messages: a directory or an `s3://` URL.
    fn location(&self) -> String;

    /// One file of it, for messages.
    fn path(&self, name: &str) -> String;

    /// Whether everything [`Source::names`] lists belongs to the release, so that anything the index
    /// does not name is a problem. A bucket prefix holds the release alone; a build's output directory
    /// also holds boot-test's log and scratch disk.
    fn exclusive(&self) -> bool;

    /// Why the release cannot be there at all (no such directory), if so.
    fn absent(&self) -> Option<String>;

    /// The names of the files directly in it (only asked of exclusive sources).
    fn names(&self) -> std::io::Result<Vec<String>>;

    /// A file's size; an error of kind NotFound when it is missing.
    fn size(&self, name: &str) -> std::io::Result<u64>;

    /// A reader over a file's bytes; an error of kind NotFound when it is missing.
    fn open(&self, name: &str) -> std::io::Result<Box<dyn Read + Send + '_>>;

    /// A small file's bytes, whole.
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open(name)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

/// A signed output directory on this machine.
pub struct Dir {
    dir: PathBuf,
}

impl Dir {
    pub fn new(dir: &Path) -> Dir {
        Dir { dir: dir.to_path_buf() }
    }
}

impl Source for Dir {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn absent(&self) -> Option<String> {
        (!self.dir.is_dir()).then(|| "no such directory".to_string())
    }

    fn names(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn size(&self, name: &str) -> std::io::Result<u64> {
        Ok(self.dir.join(name).symlink_metadata()?.len())
    }

    fn open(&self, name: &str) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(std::fs::File::open(self.dir.join(name))?))
    }
}

//! Kernel modules from /etc/machined/modules (paths in load order, dependencies first), loaded with
//! finit_module(2) by a background thread so that machined can go on as soon as the modules a step
//! needs are in: the root needs loop, squashfs and overlay, the scratch disk virtio_blk and dm_crypt,
//! and the rest (input, iSCSI, …) loads while the node comes up. Before reporting, machined waits
//! for all of them; a module that fails to load is fatal, as it would be loaded in line.
//!
//! The files are opened up front (they are in the initramfs, gone from view once the root is
//! switched). The thread only makes the system call and records names; machined forks children
//! meanwhile, which glibc's fork makes safe for its allocator, and no child touches the loader.

use crate::fallible::{Context, Fallible};
use crate::protocol::MODULE_LIST;
use crate::{parse, sys};
use std::fs::{self, File};
use std::io;
use std::os::raw::c_long;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

#[derive(Default)]
struct Progress {
    loaded: Vec<String>,
    /// The first failure; loading stops there.
    error: Option<String>,
    done: bool,
}

pub struct Loader {
    state: Arc<(Mutex<Progress>, Condvar)>,
    thread: Option<JoinHandle<()>>,
    /// Every module the list names, in order.
    pub names: Vec<String>,
}

/// Reads the list and starts loading in the background.
pub fn start() -> Fallible<Loader> {
    let list = fs::read_to_string(MODULE_LIST).ctx(|| format!("read {MODULE_LIST}"))?;
    let paths = parse::module_list(&list);
    let names = paths.iter().map(|p| parse::module_name(p)).collect();
    // Opened now: the files are in the initramfs, out of reach once the root is switched.
    let mut files = Vec::new();
    for path in paths {
        let file = File::open(&path).ctx(|| format!("load module: open {path}"))?;
        files.push((path, file));
    }
    let state = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
    let shared = Arc::clone(&state);
    let thread = std::thread::Builder::new()
        .name("modules".into())
        .spawn(move || {
            let (lock, changed) = &*shared;
            for (path, file) in files {
                let result = load(&path, &file);
                let mut progress = lock.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(()) => progress.loaded.push(parse::module_name(&path)),
                    Err(e) => {
                        progress.error = Some(e);
                        break;
                    }
                }
                changed.notify_all();
            }
            lock.lock().unwrap_or_else(|e| e.into_inner()).done = true;
            changed.notify_all();
        })
        .map_err(|e| format!("start the module loader thread: {e}"))?;
    Ok(Loader { state, thread: Some(thread), names })
}

/// finit_module(2)'s flag asking the kernel to decompress the module itself (Linux 5.17+, with
/// CONFIG_MODULE_DECOMPRESS; the signature inside is checked after decompression).
const MODULE_INIT_COMPRESSED_FILE: c_long = 4;

fn load(path: &str, file: &File) -> Fallible<()> {
    insert(path, file).map(drop)
}

/// finit_module(2) on an open module file; Ok(false) when the kernel already has it.
pub fn insert(path: &str, file: &File) -> Fallible<bool> {
    let params = b"\0";
    // An uncompressed module with the flag is refused (EINVAL), a compressed one without it too.
    let flags = if parse::is_compressed_module(path) { MODULE_INIT_COMPRESSED_FILE } else { 0 };
    // SAFETY: fd is open, params is NUL-terminated; the kernel only reads them.
    let ret = unsafe { sys::syscall(sys::SYS_FINIT_MODULE, file.as_raw_fd() as c_long, params.as_ptr(), flags) };
    if ret != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(sys::EEXIST) {
            return Ok(false);
        }
        return Err(format!("load module {path}: finit_module: {err}"));
    }
    Ok(true)
}

impl Loader {
    /// Blocks until each of `wanted` that the list names is loaded (names the list lacks are the
    /// kernel's built-ins or not this board's: nothing to wait for).
    pub fn wait_for(&self, wanted: &[&str]) -> Fallible<()> {
        let wanted: Vec<&str> = wanted.iter().copied().filter(|w| self.names.iter().any(|n| n == w)).collect();
        let (lock, changed) = &*self.state;
        let mut progress = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = &progress.error {
                return Err(e.clone());
            }
            if wanted.iter().all(|w| progress.loaded.iter().any(|l| l == w)) {
                return Ok(());
            }
            if progress.done {
                return Err(format!("the module loader finished without {wanted:?}"));
            }
            progress = changed.wait(progress).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits for every module; returns their names in load order.
    pub fn finish(mut self) -> Fallible<Vec<String>> {
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| "the module loader thread panicked".to_string())?;
        }
        let (lock, _) = &*self.state;
        let progress = lock.lock().unwrap_or_else(|e| e.into_inner());
        match &progress.error {
            Some(e) => Err(e.clone()),
            None => Ok(progress.loaded.clone()),
        }
    }
}

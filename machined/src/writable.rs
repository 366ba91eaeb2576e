//! Directories of the read-only root made writable at boot (`WRITABLE_DIRS`, e.g. /etc/iscsi, where
//! iscsid finds the node's initiator name): an overlay of the image's directory under an upper layer
//! on /run's tmpfs, so what the node writes there is its own and gone at the next boot.
//!
//! Merge note: the generic mechanism (`/etc/machined/writable`, uppers on the scratch disk) replaces
//! this module; /etc/iscsi then becomes one of its entries.

use crate::fallible::{Context, Fallible};
use crate::protocol::WRITABLE_DIRS;
use crate::sys;
use std::fs;

/// Where the upper and work directories live, one pair per writable directory.
const UPPERS: &str = "/run/machined/writable";

/// Mounts each writable directory's overlay.
pub fn mount_writable_dirs() -> Fallible<()> {
    for dir in WRITABLE_DIRS {
        let base = format!("{UPPERS}/{}", dir.trim_start_matches('/').replace('/', "-"));
        let (upper, work) = (format!("{base}/upper"), format!("{base}/work"));
        for d in [&upper, &work] {
            fs::create_dir_all(d).ctx(|| format!("create {d}"))?;
        }
        let options = format!("lowerdir={dir},upperdir={upper},workdir={work}");
        sys::do_mount(Some("overlay"), dir, Some("overlay"), sys::MS_NOSUID | sys::MS_NODEV, Some(&options))
            .ctx(|| format!("make {dir} writable (overlay {options})"))?;
    }
    Ok(())
}

//! The firmware variable store a Secure Boot board boots with: a copy of the board's template
//! (`[secure-boot] vars-template`) with its own PK, KEK, db and dbx deleted, our PK, KEK and db
//! certificates enrolled (each under the key set's owner GUID), and Secure Boot turned on. QEMU opens
//! it as the second pflash (as a snapshot, so one store serves every boot).
//!
//! Written by virt-fw-vars from PyPI's virt-firmware, pinned: the store is edk2's authenticated
//! variable format with its timestamps and counters, which we would rather not write ourselves. Its
//! output is deterministic (each variable is stamped with its certificate's notBefore), so the store
//! is byte-identical across builds with the same keys and template.

use crate::spec::SecureBootFirmware;
use crate::uki::secure_boot::SecureBootKeys;
use crate::util::cmd::cmd;
use crate::util::fs::set_readable;
use crate::util::host::{pip_program, pip_req, Requirement};
use anyhow::{ensure, Context, Result};
use std::path::Path;

/// The pinned PyPI requirement: another version may lay the store out differently.
const VIRT_FIRMWARE: &str = "virt-firmware==26.10";
const VIRT_FW_VARS: &str = "virt-fw-vars";

pub fn requirements() -> Vec<Requirement> {
    vec![pip_req(VIRT_FIRMWARE, VIRT_FW_VARS, "writing the Secure Boot variable stores")]
}

/// Writes `out`: the template of `firmware` with `keys` enrolled and Secure Boot on.
pub fn write_vars(firmware: &SecureBootFirmware, keys: &SecureBootKeys, out: &Path) -> Result<()> {
    let template = &firmware.vars_template;
    ensure!(template.is_file(), "the variable store template {} does not exist", template.display());
    let writing = out.with_extension("writing");
    let _ = std::fs::remove_file(&writing);
    let guid = keys.owner_guid.as_str();
    let run = cmd(pip_program(VIRT_FIRMWARE, VIRT_FW_VARS))
        .args(["--loglevel", "warning", "--input"])
        .arg(template)
        .arg("--output")
        .arg(&writing)
        .args(["--delete", "PK", "--delete", "KEK", "--delete", "db", "--delete", "dbx"])
        .args(["--set-pk", guid])
        .arg(&keys.pk_cert)
        .args(["--add-kek", guid])
        .arg(&keys.kek_cert)
        .args(["--add-db", guid])
        .arg(keys.db.cert())
        .arg("--secure-boot")
        .run();
    if let Err(e) = run {
        let _ = std::fs::remove_file(&writing);
        return Err(e.context(format!("enrolling the key set {} into {}", keys.dir.display(), template.display())));
    }
    set_readable(&writing)?;
    std::fs::rename(&writing, out).with_context(|| format!("writing {}", out.display()))
}

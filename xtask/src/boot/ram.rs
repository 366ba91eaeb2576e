//! The RAM proof: memory dumps of a running node searched for the marker machined derives from a
//! nonce this boot handed it (machined's ram_marker.rs). The nonce is fresh per boot and goes to the
//! guest through QEMU fw_cfg, never the console; the marker is computed here (sha256 with the sha2 crate,
//! as machined computes it) and kept only in this process's memory. Each dump
//! (QMP `dump-guest-memory`, paging off: guest RAM as QEMU holds it, not what the guest's page tables
//! map) goes to a temporary file that is scanned with scan.rs and deleted at once. The nonce and pause
//! files live in a temporary directory deleted with the proof.

use super::qmp::Qmp;
use super::scan;
use crate::spec::protocol::{RAM_MARKER_PREFIX, RAM_NONCE_BYTES, RAM_NONCE_FW_CFG, SHRED_PAUSE_FW_CFG};
use crate::util::digest::{hex, random_bytes};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long machined waits after reporting shredding done: the host sees the line, then freezes the
/// guest (QMP `stop`) well within it, dumps, and lets it go on (`cont`) to power off.
pub const SHRED_PAUSE_SECS: u64 = 5;
/// How long one dump may take (1 GiB of guest RAM to a local file).
const DUMP_LIMIT: Duration = Duration::from_secs(300);

/// One memory dump and what the scan found.
#[derive(Clone, Debug, Serialize)]
pub struct DumpScan {
    pub size_bytes: u64,
    pub nonzero_bytes: u64,
    pub dump_secs: f64,
    pub scan_secs: f64,
    /// Where the marker first occurs in the dump (an offset into the ELF dump file).
    pub marker_offset: Option<u64>,
}

/// A boot's nonce, its fw_cfg entries and the marker (held here only).
pub struct RamProof {
    dir: tempfile::TempDir,
    marker: Vec<u8>,
}

impl RamProof {
    /// A fresh nonce and the pause file, in a temporary directory under `parent`.
    pub fn new(parent: &Path) -> Result<RamProof> {
        let dir = tempfile::Builder::new()
            .prefix(".ram-proof-")
            .tempdir_in(parent)
            .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
        let mut nonce = [0u8; RAM_NONCE_BYTES];
        random_bytes(&mut nonce)?;
        let marker = marker_for(&nonce);
        for (name, bytes) in [("nonce", nonce.to_vec()), ("pause", format!("{SHRED_PAUSE_SECS}\n").into_bytes())] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(RamProof { dir, marker })
    }

    /// The `-fw_cfg` entries that hand the guest the nonce and the pause.
    pub fn fw_cfg(&self) -> Vec<(String, PathBuf)> {
        vec![
            (RAM_NONCE_FW_CFG.to_string(), self.dir.path().join("nonce")),
            (SHRED_PAUSE_FW_CFG.to_string(), self.dir.path().join("pause")),
        ]
    }

    /// Dumps the guest's memory through QMP (frozen with `stop` first and let go with `cont` after,
    /// when `freeze`), scans the dump for the marker, and deletes it.
    pub fn dump_and_scan(&self, qmp_socket: &Path, freeze: bool) -> Result<DumpScan> {
        let mut qmp = Qmp::connect(qmp_socket, Duration::from_secs(5))?;
        if freeze {
            qmp.execute("stop")?;
        }
        let dump = self.dir.path().join("memory.elf");
        let started = Instant::now();
        let dumped = qmp.execute_with(
            "dump-guest-memory",
            serde_json::json!({"paging": false, "protocol": format!("file:{}", dump.display())}),
            DUMP_LIMIT,
        );
        let dump_secs = started.elapsed().as_secs_f64();
        if freeze {
            qmp.execute("cont")?;
        }
        dumped.context("dumping the guest's memory (QMP dump-guest-memory)")?;
        let started = Instant::now();
        let findings = scan::scan(&dump, &[&self.marker]);
        let _ = std::fs::remove_file(&dump);
        let findings = findings?;
        Ok(DumpScan {
            size_bytes: findings.size_bytes,
            nonzero_bytes: findings.nonzero_bytes,
            dump_secs,
            scan_secs: started.elapsed().as_secs_f64(),
            marker_offset: findings.first_hits[0],
        })
    }
}

/// machined's marker for `nonce`: the prefix and the hex sha256.
pub fn marker_for(nonce: &[u8]) -> Vec<u8> {
    format!("{RAM_MARKER_PREFIX}{}", hex(&Sha256::digest(nonce))).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same value machined's own sha256 gives for 32 zero bytes (its ram_marker test).
    #[test]
    fn the_marker_matches_machined_for_a_known_nonce() {
        assert_eq!(
            String::from_utf8(marker_for(&[0u8; 32])).unwrap(),
            format!("{RAM_MARKER_PREFIX}66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925")
        );
    }
}

//! A real S3-compatible store on loopback for the tests and bench: a single Garage node (Garage is a
//! production object store written in Rust). Installed from crates.io with `cargo install --locked`
//! into the download cache when missing (util/host.rs), configured on random free ports bound to
//! 127.0.0.1 only, with its own directory for data, metadata, log and state. Its metadata database is
//! lmdb: with sqlite, Garage 2.5 once left a part upload unanswered under parallel uploads.
//!
//! [`start`] makes a fresh node (layout, a bucket, a key allowed on it) or restarts the one whose
//! state is in the directory, on the same ports with the same data; the server runs detached, so a
//! test can kill it mid-upload and start it again. [`stop`] ends it.

use crate::util::cmd::{self, cmd};
use crate::util::digest::hex;
use crate::util::host::{self, req, Requirement};
use crate::util::progress;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const VERSION: &str = "2.5.0";
/// The region the node answers to (its `s3_region`).
pub const REGION: &str = "garage";

/// The independent S3 client the tests read uploads back with and bench compares against: Debian's
/// awscli, installed like every host tool (an `aws` already on PATH, e.g. pip's, is used as it is).
pub fn client_requirements() -> Vec<Requirement> {
    vec![req("aws", "awscli", "reading uploads back with an independent S3 client (tests, bench)")]
}

/// The Garage binary, installed into `cache_dir/tools/garage-<version>/` when missing.
pub fn install(cache_dir: &Path) -> Result<PathBuf> {
    let root = cache_dir.join("tools").join(format!("garage-{VERSION}"));
    host::cargo_tool("garage", VERSION, &root, "the object-storage tests and bench (a loopback S3 store)")
}

/// A running node, as its state file records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub dir: PathBuf,
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    /// The throwaway node's own key, generated for it; the state file is mode 0600.
    pub secret_access_key: String,
    pub pid: u32,
    pub log: PathBuf,
    ports: Ports,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Ports {
    s3: u16,
    rpc: u16,
    admin: u16,
}

const STATE_FILE: &str = "node.json";
const CONFIG_FILE: &str = "garage.toml";

/// Starts the node whose state is in `dir`, or makes a fresh one there with `bucket`.
pub fn start(garage: &Path, dir: &Path, bucket: &str) -> Result<Node> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let config = dir.join(CONFIG_FILE);
    let state = dir.join(STATE_FILE);
    let previous: Option<Node> = match std::fs::read(&state) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| format!("reading {}", state.display()))?),
        Err(_) => None,
    };
    if let Some(node) = &previous {
        if running(node.pid) {
            bail!("the Garage node in {} is running already (pid {})", dir.display(), node.pid);
        }
    }
    let ports = match &previous {
        Some(node) => node.ports,
        None => {
            let ports = free_ports()?;
            write_private(&config, config_text(&dir, ports)?.as_bytes())?;
            ports
        }
    };
    let log_path = dir.join("garage.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let started = Instant::now();
    let pid = cmd(garage).arg("-c").arg(&config).arg("server").env("RUST_LOG", "garage=info").spawn_detached(log)?;
    let cli = |args: &[&str]| cmd(garage).arg("-c").arg(&config).args(args.iter().copied());
    let setup = || -> Result<Node> {
        wait_for(&log_path, || cli(&["status"]).run().is_ok(), "its RPC port")?;
        let mut node = match previous.clone() {
            Some(node) => node,
            None => {
                let id = cli(&["node", "id", "-q"]).read()?;
                let id = id.trim().split('@').next().unwrap_or_default().to_string();
                cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id]).run()?;
                cli(&["layout", "apply", "--version", "1"]).run()?;
                cli(&["bucket", "create", bucket]).run()?;
                let created = cli(&["key", "create", "nodeimg-test"]).read()?;
                let field = |name: &str| {
                    created
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                        .with_context(|| format!("`garage key create` printed no {name:?} line"))
                };
                let (access_key_id, secret_access_key) = (field("Key ID:")?, field("Secret key:")?);
                cli(&["bucket", "allow", "--read", "--write", "--owner", bucket, "--key", "nodeimg-test"]).run()?;
                Node {
                    dir: dir.clone(),
                    endpoint: format!("http://127.0.0.1:{}", ports.s3),
                    region: REGION.to_string(),
                    bucket: bucket.to_string(),
                    access_key_id,
                    secret_access_key,
                    pid,
                    log: log_path.clone(),
                    ports,
                }
            }
        };
        node.pid = pid;
        wait_for(&log_path, || answers_http(ports.s3), "its S3 port")?;
        write_private(&state, &serde_json::to_vec_pretty(&node).context("serializing the node's state")?)?;
        Ok(node)
    };
    match setup() {
        Ok(node) => {
            progress::note(format!(
                "Garage {VERSION} serving {} on {} (pid {pid}, ready in {:.2} s)",
                node.bucket,
                node.endpoint,
                started.elapsed().as_secs_f64()
            ));
            Ok(node)
        }
        Err(e) => {
            let _ = cmd::stop(pid, true, Duration::from_secs(10));
            Err(e.context(format!("starting Garage in {}", dir.display())))
        }
    }
}

/// Ends the node (SIGKILL when `kill`, as a crash would; else SIGTERM).
pub fn stop(node: &Node, kill: bool) -> Result<()> {
    cmd::stop(node.pid, kill, Duration::from_secs(30)).with_context(|| format!("stopping Garage (pid {})", node.pid))
}

fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("garage"))
}

/// Three distinct free loopback ports, held open together while they are chosen.
fn free_ports() -> Result<Ports> {
    let sockets: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("finding free loopback ports")?;
    let port = |i: usize| sockets[i].local_addr().map(|a| a.port()).context("reading a bound port");
    Ok(Ports { s3: port(0)?, rpc: port(1)?, admin: port(2)? })
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buffer)).context("reading /dev/urandom")?;
    Ok(hex(&buffer))
}

fn config_text(dir: &Path, ports: Ports) -> Result<String> {
    let (meta, data) = (dir.join("meta"), dir.join("data"));
    Ok(format!(
        r#"metadata_dir = "{}"
data_dir = "{}"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{}"
"#,
        meta.display(),
        data.display(),
        random_hex(32)?,
        random_hex(32)?,
        rpc = ports.rpc,
        s3 = ports.s3,
        admin = ports.admin,
    ))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

/// Polls `ready` every 50 ms for up to 30 s; on timeout the error carries the log's tail.
fn wait_for(log: &Path, mut ready: impl FnMut() -> bool, what: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    bail!("Garage did not answer on {what} within 30 s; the end of {}:\n{}", log.display(), cmd::tail(&text, 20))
}

/// Whether an HTTP server answers on the port (an unsigned request gets an error document back).
fn answers_http(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut first = [0u8; 4];
    stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
        && stream.read_exact(&mut first).is_ok()
        && &first == b"HTTP"
}

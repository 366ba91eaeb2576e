//! containerd as a system service from the node's root, and the probe that proves it answers: the
//! gRPC call `ctr version` makes for its `Server:` section (containerd.services.version.v1.Version/
//! Version), spoken directly over the socket. Only a serving containerd can answer it, and machined
//! saves starting ctr, a 23 MB Go program that takes seconds to start under emulation.

use crate::fallible::Fallible;
use crate::service_spec::{Container, Restart, Security, ServiceSpec};
use crate::sys;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BINARY: &str = "/usr/bin/containerd";
pub const SOCKET: &str = "/run/containerd/containerd.sock";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CONFIG_DIR: &str = "/run/machined/containerd";
const CONFIG: &str = "/run/machined/containerd/config.toml";
const VERSION_METHOD: &str = "/containerd.services.version.v1.Version/Version";
/// One probe never holds machined's loop longer than this.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// The root is read-only, so the configuration is written to /run at every boot. State lives on /var
/// (the scratch disk) and /run; the CNI directories are where Kubernetes add-ons expect them
/// (protocol::CNI_BIN_DIR and CNI_CONF_DIR, writable overlays on the scratch disk; Debian's plugins
/// are linked into the first).
const CONFIG_TEXT: &str = r#"# Written by machined at boot.
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
# Plugins this node cannot use: snapshotters for other filesystems (blockfile has no scratch file
# generator), tracing without an endpoint, opt (its directory is on the read-only root) and NRI
# (disabled by default in 1.7). Each would load only to skip or fail, and containerd orders its
# plugin graph by walking every path to every plugin (about 30 % of its start-up CPU in a native
# profile): each plugin left out shortens the walk.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "/run/containerd/containerd.sock"

# Writable overlays on the scratch disk: the cluster's CNI add-on installs its plugin and config here.
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/opt/cni/bin"
  conf_dir = "/etc/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
"#;

pub fn present() -> bool {
    Path::new(BINARY).is_file()
}

/// containerd's configuration, held back. containerd is started while the scratch disk is still
/// being formatted: its Go runtime and some 430 package initialisers run before its main (1.3-2.8 s
/// under TCG) and need nothing from /var. Its main then reads the configuration, and until /var is
/// ready for containerd's state that is a FIFO whose text has not been written yet.
pub struct ConfigGate {
    path: String,
    /// Opened for reading and writing: this end keeps the FIFO open, so containerd's open(2) returns
    /// at once and its read waits for the text; its end of file comes when this end is closed.
    fifo: File,
}

/// Creates the held-back configuration and returns the service definition.
pub fn prepare() -> Fallible<(ServiceSpec, ConfigGate)> {
    fs::create_dir_all(CONFIG_DIR).map_err(|e| format!("create {CONFIG_DIR}: {e}"))?;
    Ok((spec(), ConfigGate::create(CONFIG)?))
}

/// How long the FIFO's end is held for a containerd that has not read it yet.
const GATE_LIMIT: Duration = Duration::from_secs(60);

/// When containerd read its configuration through the FIFO (the kernel's clock in ms, 0: it did
/// not), as the gate's watcher saw it, to 5 ms.
static FIFO_READ_MS: AtomicU64 = AtomicU64::new(0);

/// When containerd read its configuration (the kernel's clock, ms): just after the gate opened if it
/// was already waiting at the FIFO, later if its own start-up (the Go runtime and its package
/// initialisers) was still running; then it read the regular file, and the file's access time tells
/// when (/run is a tmpfs with relatime: the first read after the write sets it). The milestone says
/// which of the two held containerd back. `given` is when the gate opened: an access time that
/// converts to before it, or to after now, was taken across a clock step (SNTP) and is not used.
pub fn config_read_ms(given: u64) -> Option<u64> {
    if let Some(ms) = Some(FIFO_READ_MS.load(Ordering::Relaxed)).filter(|&ms| ms > 0) {
        return Some(ms);
    }
    let meta = fs::metadata(CONFIG).ok()?;
    let at_ms = |secs: i64, nanos: i64| secs * 1000 + nanos / 1_000_000;
    let (read, written) = (at_ms(meta.atime(), meta.atime_nsec()), at_ms(meta.mtime(), meta.mtime_nsec()));
    if read <= written {
        return None;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    let boot_now = sys::boot_ms();
    u64::try_from(boot_now as i64 - (now - read)).ok().filter(|&ms| ms >= given && ms <= boot_now)
}

impl ConfigGate {
    fn create(path: &str) -> Fallible<ConfigGate> {
        let _ = fs::remove_file(path);
        let c_path = sys::cstr(path);
        // SAFETY: c_path is NUL-terminated.
        sys::check(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) })
            .map_err(|e| format!("create the FIFO {path}: {e}"))?;
        let fifo = OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("open {path}: {e}"))?;
        Ok(ConfigGate { path: path.to_string(), fifo })
    }

    /// Lets containerd read its configuration.
    pub fn open(self) -> Fallible<()> {
        self.release(CONFIG_TEXT).map(drop)
    }

    /// Writes `text` through the FIFO, for an instance already reading it, and as a regular file in
    /// the FIFO's place, for any later start. This end is closed once the text has been read (by the
    /// returned thread, so the boot does not wait on containerd), or after [`GATE_LIMIT`]: by then no
    /// containerd can still be opening the FIFO the file replaced.
    fn release(self, text: &str) -> Fallible<Option<JoinHandle<()>>> {
        let ConfigGate { path, mut fifo } = self;
        fifo.write_all(text.as_bytes()).map_err(|e| format!("write {path} (FIFO): {e}"))?;
        sys::write_atomic(&path, text).map_err(|e| format!("write {path} (regular file over the FIFO): {e}"))?;
        // Should the thread not start, this end closes at once, which still serves a reader that
        // has the FIFO open.
        let watcher = std::thread::Builder::new().name("containerd-config".into()).spawn(move || {
            let start = Instant::now();
            while unread_bytes(&fifo) > 0 && start.elapsed() < GATE_LIMIT {
                std::thread::sleep(Duration::from_millis(5));
            }
            if unread_bytes(&fifo) == 0 {
                FIFO_READ_MS.store(sys::boot_ms(), Ordering::Relaxed);
            }
        });
        Ok(watcher.ok())
    }
}

/// Bytes waiting in a pipe (0 on error: the caller then stops waiting).
fn unread_bytes(pipe: &File) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the valid pointer.
    match unsafe { sys::ioctl(pipe.as_raw_fd(), libc::FIONREAD as libc::c_ulong, &mut n) } {
        0 => n.max(0) as usize,
        _ => 0,
    }
}

fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "containerd".to_string(),
        depends: Vec::new(),
        container: Container {
            entrypoint: BINARY.to_string(),
            args: vec!["--config".to_string(), CONFIG.to_string()],
            mounts: Vec::new(),
            // It starts runc and the shims by name.
            environment: vec![("PATH".to_string(), PATH.to_string())],
            environment_file: None,
            security: Security::default(),
        },
        restart: Restart::Always,
        // The node's own runtime: its output is the console's.
        log_to_console: true,
    }
}

/// Reads containerd's binary once in a background thread as containerd starts: its pages are
/// decompressed from the squashfs ahead of containerd's own faults, on the other CPU, instead of
/// one by one as its start-up touches them. Best effort: a failure only means a slower start.
pub fn prefetch() {
    let _ = std::thread::Builder::new().name("prefetch".into()).spawn(|| {
        let mut buf = vec![0u8; 1 << 20];
        if let Ok(mut file) = fs::File::open(BINARY) {
            while let Ok(n) = file.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    });
}

/// Whether something accepts connections on the socket (containerd listens just before it serves).
pub fn socket_accepts() -> bool {
    UnixStream::connect(SOCKET).is_ok()
}

// HTTP/2 (RFC 9113) frame types and flags, as far as one unary gRPC call needs them.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Asks containerd for its version over its socket: (version, revision).
pub fn version() -> Result<(String, Option<String>), String> {
    let mut stream = UnixStream::connect(SOCKET).map_err(|e| format!("connect {SOCKET}: {e}"))?;
    let deadline = Instant::now() + PROBE_LIMIT;
    stream.set_read_timeout(Some(PROBE_LIMIT)).map_err(|e| format!("{SOCKET}: {e}"))?;
    stream.write_all(&version_request()).map_err(|e| format!("send to {SOCKET}: {e}"))?;
    let mut body = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(format!("no complete gRPC answer on {SOCKET} within {} s", PROBE_LIMIT.as_secs()));
        }
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).map_err(|e| format!("read from {SOCKET}: {e}"))?;
        let length = (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream_id = u32::from_be_bytes([header[5] & 0x7f, header[6], header[7], header[8]]);
        if length > 1 << 20 {
            return Err(format!("{SOCKET}: HTTP/2 frame of {length} bytes, expected a short answer"));
        }
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).map_err(|e| format!("read from {SOCKET}: {e}"))?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                stream.write_all(&frame(SETTINGS, ACK, 0, &[])).map_err(|e| format!("send to {SOCKET}: {e}"))?;
            }
            PING if flags & ACK == 0 => {
                stream.write_all(&frame(PING, ACK, 0, &payload)).map_err(|e| format!("send to {SOCKET}: {e}"))?;
            }
            GOAWAY => return Err(format!("containerd closed the connection (GOAWAY {payload:02x?})")),
            RST_STREAM if stream_id == 1 => {
                return Err(format!("containerd reset the call (RST_STREAM {payload:02x?})"))
            }
            DATA if stream_id == 1 => body.extend_from_slice(&payload),
            _ => {}
        }
        if stream_id == 1 && (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 {
            break;
        }
    }
    parse_version_reply(&body)
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK literal header field without indexing and with a new name (RFC 7541 6.2.2), strings
/// short enough for a one-byte length, not Huffman-coded.
fn literal_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    for s in [name, value] {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
}

/// The whole client side of the call: preface, SETTINGS, HEADERS, and a DATA frame holding the empty
/// request message (google.protobuf.Empty), which ends the stream.
fn version_request() -> Vec<u8> {
    let mut headers = vec![0x83, 0x86]; // :method POST, :scheme http (HPACK static table 3 and 6)
    for (name, value) in [
        (":path", VERSION_METHOD),
        (":authority", "containerd"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        literal_header(&mut headers, name, value);
    }
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, 1, &headers));
    // gRPC message: not compressed, length 0.
    out.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    out
}

/// Decodes the gRPC body of a VersionResponse { string version = 1; string revision = 2; }.
fn parse_version_reply(body: &[u8]) -> Result<(String, Option<String>), String> {
    if body.len() < 5 {
        return Err("containerd answered without a message (gRPC error status?)".to_string());
    }
    if body[0] != 0 {
        return Err("containerd answered with a compressed message".to_string());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let message = body.get(5..5 + len).ok_or("containerd's answer is shorter than its length prefix")?;
    let (mut version, mut revision) = (None, None);
    let mut at = 0;
    while at < message.len() {
        let key = message[at];
        at += 1;
        let (field, wire_type) = (key >> 3, key & 7);
        if wire_type != 2 {
            return Err(format!("unexpected protobuf wire type {wire_type} in containerd's answer"));
        }
        let (len, used) = varint(&message[at..]).ok_or("truncated protobuf length in containerd's answer")?;
        at += used;
        let value = message.get(at..at + len as usize).ok_or("truncated protobuf string in containerd's answer")?;
        at += len as usize;
        let text = String::from_utf8_lossy(value).into_owned();
        match field {
            1 => version = Some(text),
            2 => revision = Some(text),
            _ => {}
        }
    }
    match version {
        Some(v) if !v.is_empty() => Ok((v, revision.filter(|r| !r.is_empty()))),
        _ => Err("containerd's answer holds no version".to_string()),
    }
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cni_directories_are_the_ones_the_builder_lays_out() {
        use crate::protocol::{CNI_BIN_DIR, CNI_CONF_DIR};
        assert!(CONFIG_TEXT.contains(&format!("bin_dir = \"{CNI_BIN_DIR}\"")));
        assert!(CONFIG_TEXT.contains(&format!("conf_dir = \"{CNI_CONF_DIR}\"")));
    }
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn gate_path(case: &str) -> String {
        let dir = std::env::temp_dir().join(format!("machined-gate-{case}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("config.toml").to_string_lossy().into_owned()
    }

    #[test]
    fn a_reader_waiting_at_the_gate_gets_the_text_once_it_opens_and_later_starts_read_a_file() {
        let path = gate_path("waiting");
        let gate = ConfigGate::create(&path).unwrap();
        assert!(fs::metadata(&path).unwrap().file_type().is_fifo(), "the gate is a FIFO until it opens");
        // As containerd's main reads it: open, then read to the end of file.
        let (sent, read) = std::sync::mpsc::channel();
        {
            let path = path.clone();
            std::thread::spawn(move || sent.send(fs::read_to_string(path).unwrap()));
        }
        let wait = |limit| read.recv_timeout(Duration::from_millis(limit));
        assert!(wait(200).is_err(), "the reader must wait while the gate is shut");
        let watcher = gate.release("version = 2\n").unwrap().expect("the watcher thread");
        assert_eq!(wait(10_000).expect("the text and its end of file"), "version = 2\n");
        watcher.join().unwrap();
        assert!(fs::metadata(&path).unwrap().is_file(), "a later start reads a regular file");
        assert_eq!(fs::read_to_string(&path).unwrap(), "version = 2\n");
        assert!(!Path::new(&format!("{path}.new")).exists(), "nothing staged is left beside it");
    }

    #[test]
    fn a_gate_nobody_read_before_it_opened_leaves_the_file_for_the_first_start() {
        let path = gate_path("unread");
        let gate = ConfigGate::create(&path).unwrap();
        let watcher = gate.release("version = 2\n").unwrap().expect("the watcher thread");
        assert_eq!(fs::read_to_string(&path).unwrap(), "version = 2\n");
        assert!(!watcher.is_finished(), "the FIFO's end is held for a reader that may still be opening it");
    }

    #[test]
    fn a_gate_in_a_missing_directory_is_an_error_naming_the_path() {
        let path = format!("{}/absent/config.toml", gate_path("missing"));
        let err = ConfigGate::create(&path).err().expect("an error");
        assert!(err.contains(&path) && err.contains("FIFO"), "{err}");
    }

    #[test]
    fn request_is_preface_settings_headers_data() {
        let req = version_request();
        assert!(req.starts_with(PREFACE));
        let rest = &req[PREFACE.len()..];
        assert_eq!(&rest[..9], &[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        let headers = &rest[9..];
        let len = (usize::from(headers[1]) << 8) | usize::from(headers[2]);
        assert_eq!((headers[3], headers[4]), (HEADERS, END_HEADERS));
        assert_eq!(&headers[5..9], &[0, 0, 0, 1]);
        let block = &headers[9..9 + len];
        assert_eq!(&block[..2], &[0x83, 0x86]);
        assert_eq!(block[2], 0);
        assert_eq!(block[3] as usize, ":path".len());
        let data = &headers[9 + len..];
        assert_eq!(data, &[0, 0, 5, DATA, END_STREAM, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn version_reply_decodes() {
        let mut message = vec![0x0a, 10];
        message.extend_from_slice(b"1.6.20~ds1");
        message.extend_from_slice(&[0x12, 3]);
        message.extend_from_slice(b"abc");
        let mut body = vec![0, 0, 0, 0, message.len() as u8];
        body.extend_from_slice(&message);
        assert_eq!(parse_version_reply(&body), Ok(("1.6.20~ds1".to_string(), Some("abc".to_string()))));
        assert!(parse_version_reply(&body[..body.len() - 1]).is_err());
        assert!(parse_version_reply(&[]).is_err());
        assert!(parse_version_reply(&[0, 0, 0, 0, 0]).unwrap_err().contains("no version"));
        assert!(parse_version_reply(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn varints() {
        assert_eq!(varint(&[5]), Some((5, 1)));
        assert_eq!(varint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(varint(&[0x80]), None);
    }
}

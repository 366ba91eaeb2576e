//! The wire contract between the image and the host that builds and tests it, written once: the
//! console lines machined prints (boot-test and bench read them), the kernel arguments it obeys, and
//! the files the image builder lays out for it. xtask and the integration tests include this file
//! (`#[path]`), so it holds only constants, and depends on nothing.

/// Prefix of the one line machined prints when the node is up: `MACHINED-STATUS {json}`.
pub const STATUS: &str = "MACHINED-STATUS ";
/// `MACHINED-SHUTDOWN reason=<why>`: the shutdown sequence has begun.
pub const SHUTDOWN: &str = "MACHINED-SHUTDOWN";
/// `MACHINED-SCRATCH <what became of the scratch disk>`.
pub const SCRATCH: &str = "MACHINED-SCRATCH ";
/// `MACHINED-SCRATCH-CLOSED <steps>`: /var unmounted and the dm-crypt mapping (and its key) removed.
pub const SCRATCH_CLOSED: &str = "MACHINED-SCRATCH-CLOSED";
/// `MACHINED-SCRATCH-CLOSE-FAILED <error>`: closing the scratch disk failed; a boot that shows it failed.
pub const SCRATCH_CLOSE_FAILED: &str = "MACHINED-SCRATCH-CLOSE-FAILED";
/// `MACHINED-SERVICE name=<name> <event>`: a supervised service started, exited or is restarting.
pub const SERVICE: &str = "MACHINED-SERVICE name=";
/// The event text of a service exit that will be followed by a restart.
pub const SERVICE_RESTARTING: &str = "restarting in";
/// `MACHINED-FLOOR ready_ms=<ms>`: a floor boot (see [`FLOOR_FLAG`]) reached machined.
pub const FLOOR: &str = "MACHINED-FLOOR";
/// `MACHINED-FATAL: <error>`: machined failed and is powering off.
pub const FATAL: &str = "MACHINED-FATAL";
/// `MACHINED-NOT-READY after <s> s`: the node did not become ready in time; the status follows anyway.
pub const NOT_READY: &str = "MACHINED-NOT-READY";

/// The scratch-disk marker machined writes to /var starts with this; the rest is random hex.
pub const MARKER_PREFIX: &str = "NODEIMG-MARKER-";

/// Kernel argument: report at once and power off (bench's floor boot: firmware, stub, kernel, init).
pub const FLOOR_FLAG: &str = "machined.floor=1";
/// Kernel argument: shut down right after reporting the status.
pub const SMOKE_FLAG: &str = "machined.smoke=1";
/// Kernel argument key: `machined.scratch-serial=<serial>` names the scratch disk by its serial.
pub const SCRATCH_SERIAL_ARG: &str = "machined.scratch-serial";

/// Files in the initramfs, as absolute paths on the node (the cpio holds them without the leading '/').
pub const INIT: &str = "/init";
pub const ROOT_IMAGE: &str = "/rootfs.sqsh";
/// The boot modules to load, one path per line, in order.
pub const MODULE_LIST: &str = "/etc/machined/modules";
/// The extension layers, one `<name> <version> <path>` line each, in mount order.
pub const EXTENSION_LIST: &str = "/etc/machined/extensions";
/// Where the extension layers lie: `<EXTENSION_IMAGES>/<name>.sqsh`.
pub const EXTENSION_IMAGES: &str = "/extensions";

/// Extension service roots on the node: `<SERVICE_ROOTS>/<name>` (as in Talos).
pub const SERVICE_ROOTS: &str = "/usr/local/lib/containers";
/// Extension service specs on the node: `<SERVICE_SPECS>/<name>.yaml`, Talos's format, read by
/// machined as they are (service_spec.rs).
pub const SERVICE_SPECS: &str = "/usr/local/etc/containers";
/// The files an extension asks machined to create on each node before its services start (its
/// packages.toml `create-file`): `<CREATE_FILES>/<extension>.yaml`, a YAML list of `{path, content}`,
/// where `{random}` in the content stands for 32 random hex digits. Talos reads nothing here.
pub const CREATE_FILES: &str = "/usr/local/etc/machined/create-files";
/// Directories of the read-only root that machined makes writable at boot (a tmpfs-backed overlay
/// over the image's contents), so per-node files can live where programs expect them. The image
/// keeps an (empty) directory for each.
pub const WRITABLE_DIRS: [&str; 1] = ["/etc/iscsi"];

/// machined's own tmpfs, as in Talos (`/system`), and the API socket on it that extension services
/// bind (Talos's qemu-guest-agent.yaml depends on it; /sbin/init's `shutdown` applet talks to it).
pub const SYSTEM_DIR: &str = "/system";
pub const MACHINE_SOCKET: &str = "/system/run/machined/machine.sock";
/// Where the root holds machined itself, so a service can bind it as `/sbin/shutdown` (Talos's
/// qemu-guest-agent.yaml binds `/sbin/init` there): the image keeps an empty file that machined
/// bind-mounts its own binary over.
pub const INIT_IN_ROOT: &str = "/usr/sbin/init";

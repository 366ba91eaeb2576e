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
/// `MACHINED-SHRED-DONE ms=<ms since the shutdown began> <what was done>`: the shutdown's shredding is
/// over (services and every other process gone, machined's tmpfs mounts unmounted, the scratch disk
/// closed, the page cache dropped); after it only the power-off (or, in a test boot given
/// [`SHRED_PAUSE_FW_CFG`], a pause for the host's memory dump). With [`SHRED_OFF_FLAG`] the line says
/// `skipped`.
pub const SHRED_DONE: &str = "MACHINED-SHRED-DONE";
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

/// The RAM marker machined derives from the host's nonce (ram_marker.rs): this prefix and the hex
/// sha256 of the nonce. It is never printed; the host computes it too and looks for it in memory dumps.
pub const RAM_MARKER_PREFIX: &str = "NODEIMG-RAM-MARKER-";
/// The nonce's size in bytes; anything else is reported as invalid and no marker is made.
pub const RAM_NONCE_BYTES: usize = 32;
/// QEMU fw_cfg entries a test boot gets (`-fw_cfg name=<entry>,file=<host file>`), never part of the
/// signed image: a fresh random nonce for the RAM marker, and the seconds machined waits after
/// [`SHRED_DONE`] before powering off (so the host can dump the memory). Production boots have neither.
pub const RAM_NONCE_FW_CFG: &str = "opt/nodeimg/ram-nonce";
pub const SHRED_PAUSE_FW_CFG: &str = "opt/nodeimg/shred-pause";
/// Where the qemu_fw_cfg driver shows the entries: `<FW_CFG_BY_NAME>/<entry>/raw`.
pub const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// The tmpfs file that holds the RAM marker while the node runs (besides the holder's heap).
pub const RAM_MARKER_FILE: &str = "/run/machined/ram-marker";
/// The applet name (argv[0]) of the process that keeps the marker in its memory until it is killed.
pub const RAM_MARKER_HOLDER: &str = "ram-marker-holder";

/// Kernel argument: report at once and power off (bench's floor boot: firmware, stub, kernel, init).
pub const FLOOR_FLAG: &str = "machined.floor=1";
/// Kernel argument: shut down right after reporting the status.
pub const SMOKE_FLAG: &str = "machined.smoke=1";
/// Kernel argument: shut down without shredding (no tmpfs unmount, marker file kept, no page-cache
/// drop). Only for the test that proves boot-test's memory scan can fail; never in a real image.
pub const SHRED_OFF_FLAG: &str = "machined.shred=off";
/// Kernel argument key: `machined.scratch-serial=<serial>` names the scratch disk by its serial.
pub const SCRATCH_SERIAL_ARG: &str = "machined.scratch-serial";
/// Kernel argument key: `machined.network-wait=<seconds>`, how long the node's readiness may wait for
/// the network (addresses and DHCP leases); the board sets it. The network's own readiness is
/// reported separately.
pub const NETWORK_WAIT_ARG: &str = "machined.network-wait";

/// The machine config: a NoCloud volume with this filesystem label (either case) holding
/// `user-data`, or an SMBIOS OEM string starting with [`CONFIG_OEM_STRING`] and then the document
/// in base64.
pub const CONFIG_VOLUME_LABEL: &str = "CIDATA";
pub const CONFIG_OEM_STRING: &str = "machined.config=";
/// The node's API: TCP, all addresses; a connection gets the current status as one JSON line.
pub const API_PORT: u16 = 50000;

/// Files in the initramfs, as absolute paths on the node (the cpio holds them without the leading '/').
pub const INIT: &str = "/init";
pub const ROOT_IMAGE: &str = "/rootfs.sqsh";
/// The boot modules to load, one path per line, in order.
pub const MODULE_LIST: &str = "/etc/machined/modules";
/// The extension layers, one `<name> <version> <path>` line each, in mount order.
pub const EXTENSION_LIST: &str = "/etc/machined/extensions";
/// Where the extension layers lie: `<EXTENSION_IMAGES>/<name>.sqsh`.
pub const EXTENSION_IMAGES: &str = "/extensions";

/// Files the image builder puts in the root for machined.
/// Directories of the read-only root that get a writable overlay backed by the scratch disk (what a
/// CNI or a kubelet writes to), one absolute path per line.
pub const WRITABLE_LIST: &str = "/etc/machined/writable";
/// machined itself in the root (the initramfs's copy is gone once the root is switched): what the
/// kernel runs as its modprobe helper, through [`MODPROBE`], a link whose name selects the applet,
/// and what a service binds under another name (Talos's qemu-guest-agent.yaml binds `/sbin/init`,
/// the same file through the merged /usr, as `/sbin/shutdown`).
pub const MACHINED_IN_ROOT: &str = "/usr/sbin/init";
pub const MODPROBE: &str = "/usr/lib/machined/modprobe";
/// Where a CNI add-on finds and installs plugins and writes its network config, as Kubernetes
/// expects; the builder links Debian's plugins (in [`DEBIAN_CNI_PLUGINS`]) into the first. Both must
/// be among the spec's writable paths for an add-on to install anything.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEBIAN_CNI_PLUGINS: &str = "/usr/lib/cni";
/// What the modprobe helper did, one line per request: `<request> <result>`.
pub const MODPROBE_LOG: &str = "/run/machined/modprobe.log";

/// Extension service roots on the node: `<SERVICE_ROOTS>/<name>` (as in Talos).
pub const SERVICE_ROOTS: &str = "/usr/local/lib/containers";
/// Extension service specs on the node: `<SERVICE_SPECS>/<name>.yaml`, Talos's format, read by
/// machined as they are (service_spec.rs).
pub const SERVICE_SPECS: &str = "/usr/local/etc/containers";
/// The files an extension asks machined to create on each node before its services start (its
/// packages.toml `create-file`): `<CREATE_FILES>/<extension>.yaml`, a YAML list of `{path, content}`,
/// where `{random}` in the content stands for 32 random hex digits. Talos reads nothing here.
pub const CREATE_FILES: &str = "/usr/local/etc/machined/create-files";
/// Directories of the read-only root writable on every node whatever the spec lists (the builder
/// adds them to [`WRITABLE_LIST`]), so per-node files extensions ask for (`CREATE_FILES`) can live
/// where programs expect them: iscsid's initiator name.
pub const WRITABLE_DIRS: [&str; 1] = ["/etc/iscsi"];

/// machined's own tmpfs, as in Talos (`/system`), and the API socket on it that extension services
/// bind (Talos's qemu-guest-agent.yaml depends on it; /sbin/init's `shutdown` applet talks to it).
pub const SYSTEM_DIR: &str = "/system";
pub const MACHINE_SOCKET: &str = "/system/run/machined/machine.sock";

//! Pure parsing helpers (no system calls), unit-tested on the host.

/// The value of `key` in an os-release(5) file, unquoted; the last assignment wins.
pub fn os_release_get(text: &str, key: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                found = Some(unquote(v.trim()));
            }
        }
    }
    found
}

/// Shell-style unquoting as os-release(5) allows it: "double" (with backslash escapes), 'single', or bare.
fn unquote(v: &str) -> String {
    let bytes = v.as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'\'' && bytes[bytes.len() - 1] == b'\'' {
        return v[1..v.len() - 1].to_string();
    }
    let inner =
        if bytes.len() >= 2 && bytes[0] == b'"' && bytes[bytes.len() - 1] == b'"' { &v[1..v.len() - 1] } else { v };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The filesystem type mounted on `/` according to /proc/self/mounts (the last, i.e. topmost, entry).
pub fn root_fstype(mounts: &str) -> Option<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            if target == "/" {
                Some(fstype.to_string())
            } else {
                None
            }
        })
        .next_back()
}

/// Whether the kernel command line holds exactly the word `word` (e.g. `machined.smoke=1`).
pub fn cmdline_has(cmdline: &str, word: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == word)
}

/// The module paths listed in /etc/machined/modules: one per line; blank lines and `#` comments skipped.
pub fn module_list(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// The kernel's name for a module file: `/lib/modules/x/kernel/fs/squashfs/squashfs.ko` → `squashfs`
/// (dashes become underscores, as in /proc/modules).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = match file.find(".ko") {
        Some(i) => &file[..i],
        None => file,
    };
    stem.replace('-', "_")
}

/// Whether a module file is compressed (`x.ko.xz`, `.ko.zst`, `.ko.gz`): the kernel decompresses it.
pub fn is_compressed_module(path: &str) -> bool {
    [".ko.xz", ".ko.zst", ".ko.gz"].iter().any(|suffix| path.ends_with(suffix))
}

/// Size of `struct input_event` on 64-bit Linux: timeval (16) + type u16 + code u16 + value i32.
pub const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// Whether any complete `struct input_event` in `buf` is a power-key press (EV_KEY, KEY_POWER, 1).
pub fn has_power_press(buf: &[u8]) -> bool {
    buf.chunks_exact(INPUT_EVENT_SIZE).any(|ev| {
        let kind = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        kind == EV_KEY && code == KEY_POWER && value == 1
    })
}

/// Signal names for the signals machined acts on (numbers as on x86_64 and arm64).
pub fn signal_name(signo: u32) -> String {
    match signo {
        1 => "SIGHUP".to_string(),
        2 => "SIGINT".to_string(),
        6 => "SIGABRT".to_string(),
        9 => "SIGKILL".to_string(),
        11 => "SIGSEGV".to_string(),
        13 => "SIGPIPE".to_string(),
        10 => "SIGUSR1".to_string(),
        12 => "SIGUSR2".to_string(),
        15 => "SIGTERM".to_string(),
        17 => "SIGCHLD".to_string(),
        30 => "SIGPWR".to_string(),
        n => format!("SIG{n}"),
    }
}

/// The Debian name of the architecture this binary was compiled for.
pub fn debian_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        std::env::consts::ARCH
    }
}

/// The value of the last `key=value` word on the kernel command line.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
        .next_back()
}

/// Whether `s` is a safe name for an extension or service: used in paths, cgroup names and mount
/// options, so only ASCII letters, digits, '-', '_' and '.' (not leading).
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// An absolute path without `..`, `.` or empty components, and without characters that would
/// break a mount option list (`,` and `:`) or a line-based file.
pub fn is_clean_abs_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains(|c: char| c == ',' || c == ':' || c.is_whitespace() || c.is_control())
        && (p == "/" || p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// One line of /etc/machined/extensions: a squashfs layer to mount over the root, in mount order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtensionLayer {
    pub name: String,
    pub version: String,
    pub image: String,
}

/// Parses /etc/machined/extensions: `<name> <version> <image path>` per line; blank lines and `#`
/// comments skipped. Names must be unique and safe; images absolute paths.
pub fn extension_list(text: &str) -> Result<Vec<ExtensionLayer>, String> {
    let mut layers: Vec<ExtensionLayer> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = index + 1;
        if fields.len() != 3 {
            return Err(format!("line {at}: expected `<name> <version> <image>`, found {} fields", fields.len()));
        }
        let (name, version, image) = (fields[0], fields[1], fields[2]);
        if !is_safe_name(name) {
            return Err(format!("line {at}: extension name {name:?} must be ASCII letters, digits, '-', '_', '.'"));
        }
        if version.chars().any(|c| c.is_control()) {
            return Err(format!("line {at}: extension {name}: version has control characters"));
        }
        if !is_clean_abs_path(image) {
            return Err(format!("line {at}: extension {name}: image {image:?} is not a clean absolute path"));
        }
        if layers.iter().any(|l| l.name == name) {
            return Err(format!("line {at}: extension {name} is listed twice"));
        }
        layers.push(ExtensionLayer { name: name.to_string(), version: version.to_string(), image: image.to_string() });
    }
    Ok(layers)
}

/// Delay before restarting a service after `failures` consecutive quick exits (1-based): 1 s,
/// doubling, at most 30 s.
pub fn restart_backoff(failures: u32) -> std::time::Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(5);
    std::time::Duration::from_secs(secs.min(30))
}

/// File names of command interpreters a shell-less image must not contain.
pub const SHELL_NAMES: [&str; 19] = [
    "sh", "bash", "rbash", "dash", "ash", "ksh", "ksh93", "mksh", "pdksh", "lksh", "zsh", "csh", "tcsh", "fish",
    "yash", "posh", "busybox", "toybox", "nu",
];

pub fn is_shell_name(name: &str) -> bool {
    SHELL_NAMES.contains(&name)
}

/// Whether the start of a disk holds a GPT header ("EFI PART" in LBA 1, for 512- or 4096-byte sectors).
pub fn has_gpt_header(head: &[u8]) -> bool {
    [512usize, 4096].iter().any(|&at| head.get(at..at + 8) == Some(&b"EFI PART"[..]))
}

/// (major, minor) from the kernel's huge_encode_dev() form used by device-mapper's `dev` field.
pub fn decode_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a child's output into lines and prefixes each, e.g. `[containerd] `. Partial lines wait for
/// their end; overlong ones are cut so a chatty child cannot grow machined's memory.
#[derive(Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

pub const MAX_LINE: usize = 4096;

impl LineBuffer {
    /// Appends `data` and moves every complete line, prefixed, to `out`.
    pub fn push(&mut self, data: &[u8], prefix: &str, out: &mut Vec<u8>) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            Self::emit(&self.pending[start..start + nl], prefix, out);
            start += nl + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            Self::emit(&self.pending, prefix, out);
            self.pending = rest;
        }
    }

    /// Emits what is left (the child closed its output without a final newline).
    pub fn flush(&mut self, prefix: &str, out: &mut Vec<u8>) {
        if !self.pending.is_empty() {
            Self::emit(&self.pending, prefix, out);
            self.pending.clear();
        }
    }

    fn emit(line: &[u8], prefix: &str, out: &mut Vec<u8>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        out.push(b'\n');
    }
}

/// Mount points at or below `dir` in /proc/self/mounts text, deepest (last mounted) first, with the
/// kernel's octal escapes (`\040` for a space) decoded.
pub fn mounts_under(mounts: &str, dir: &str) -> Vec<String> {
    let mut found: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(unescape_mount_path)
        .filter(|t| t == dir || t.starts_with(&format!("{}/", dir.trim_end_matches('/'))))
        .collect();
    found.reverse();
    found
}

fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') as u32 * 64 + (bytes[i + 2] - b'0') as u32 * 8 + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_modules_are_told_apart() {
        assert!(is_compressed_module("/lib/modules/6.12/kernel/drivers/md/dm-crypt.ko.xz"));
        assert!(is_compressed_module("x.ko.zst") && is_compressed_module("x.ko.gz"));
        assert!(!is_compressed_module("/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko"));
        assert_eq!(module_name("/lib/modules/6.12/kernel/drivers/md/dm-crypt.ko.xz"), "dm_crypt");
    }

    #[test]
    fn cmdline_values() {
        let cl = "a=1 machined.scratch-serial=one b machined.scratch-serial=two x=";
        assert_eq!(cmdline_value(cl, "machined.scratch-serial").as_deref(), Some("two"));
        assert_eq!(cmdline_value(cl, "x").as_deref(), Some(""));
        assert_eq!(cmdline_value(cl, "b"), None);
        assert_eq!(cmdline_value(cl, "machined.scratch"), None);
    }

    #[test]
    fn extension_list_parses_and_rejects() {
        let text = "# layers\nqemu-guest-agent 8.0.0 /extensions/qemu-guest-agent.sqsh\n\n iscsi-tools 2.1.8-1 /extensions/iscsi-tools.sqsh \n";
        let layers = extension_list(text).unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(
            layers[0],
            ExtensionLayer {
                name: "qemu-guest-agent".into(),
                version: "8.0.0".into(),
                image: "/extensions/qemu-guest-agent.sqsh".into()
            }
        );
        assert_eq!(layers[1].version, "2.1.8-1");
        assert_eq!(extension_list("").unwrap(), vec![]);
        assert!(extension_list("a 1\n").unwrap_err().contains("line 1"));
        assert!(extension_list("a 1 /x\na 2 /y\n").unwrap_err().contains("twice"));
        assert!(extension_list("../a 1 /x\n").is_err());
        assert!(extension_list("a 1 x.sqsh\n").is_err());
        assert!(extension_list("a 1 /ext/../x\n").is_err());
        assert!(extension_list("a 1 /e,x\n").is_err());
    }

    #[test]
    fn clean_paths() {
        assert!(is_clean_abs_path("/"));
        assert!(is_clean_abs_path("/dev/virtio-ports/org.qemu.guest_agent.0"));
        for p in ["", "dev", "/a//b", "/a/./b", "/a/../b", "/a/", "/a b", "/a:b", "/a,b"] {
            assert!(!is_clean_abs_path(p), "{p:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        let secs: Vec<u64> = (1..=8).map(|n| restart_backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(restart_backoff(0).as_secs(), 1);
        assert_eq!(restart_backoff(u32::MAX).as_secs(), 30);
    }

    #[test]
    fn shell_names() {
        for s in ["sh", "bash", "dash", "busybox", "zsh"] {
            assert!(is_shell_name(s));
        }
        for s in ["shim", "bash-completion", "zsh-vendor", "ctr", "sha256sum"] {
            assert!(!is_shell_name(s));
        }
    }

    #[test]
    fn gpt_headers_are_found_at_either_sector_size() {
        let mut head = vec![0u8; 8192];
        assert!(!has_gpt_header(&head));
        head[512..520].copy_from_slice(b"EFI PART");
        assert!(has_gpt_header(&head));
        let mut head4k = vec![0u8; 8192];
        head4k[4096..4104].copy_from_slice(b"EFI PART");
        assert!(has_gpt_header(&head4k));
        assert!(!has_gpt_header(&head4k[..4100]));
    }

    #[test]
    fn device_numbers_decode() {
        assert_eq!(decode_dev(253 << 8), (253, 0));
        assert_eq!(decode_dev((253 << 8) | 5), (253, 5));
        // minor 0x1234: low byte in bits 0-7, the rest shifted up by 12.
        assert_eq!(decode_dev((254 << 8) | 0x34 | (0x1200 << 12)), (254, 0x1234));
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }

    #[test]
    fn line_buffer_prefixes_complete_lines() {
        let mut buf = LineBuffer::default();
        let mut out = Vec::new();
        buf.push(b"one\ntw", "[s] ", &mut out);
        assert_eq!(out, b"[s] one\n");
        buf.push(b"o\r\n\nthree", "[s] ", &mut out);
        assert_eq!(out, b"[s] one\n[s] two\n[s] \n");
        buf.flush("[s] ", &mut out);
        assert_eq!(out, b"[s] one\n[s] two\n[s] \n[s] three\n");
        out.clear();
        buf.flush("[s] ", &mut out);
        assert!(out.is_empty());
        buf.push(&vec![b'x'; MAX_LINE * 2 + 10], "", &mut out);
        assert_eq!(out.len(), 2 * (MAX_LINE + 1));
        buf.flush("", &mut out);
        assert_eq!(out.len(), 2 * (MAX_LINE + 1) + 11);
    }

    #[test]
    fn mounts_below_a_directory_deepest_first() {
        let mounts = "/dev/loop0 / squashfs ro 0 0\n/dev/dm-0 /var ext4 rw 0 0\nshm /var/lib/a\\040b tmpfs rw 0 0\n\
                      tmpfs /variable tmpfs rw 0 0\ntmpfs /var/lib/c tmpfs rw 0 0\n";
        assert_eq!(mounts_under(mounts, "/var"), vec!["/var/lib/c", "/var/lib/a b", "/var"]);
        assert!(mounts_under(mounts, "/srv").is_empty());
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let text = "# comment\nID=debian\nNAME=\"Node OS\"\nIMAGE_ID='node'\n\nIMAGE_VERSION=\"1.2 \\\"x\\\"\"\nPRETTY_NAME=a\\ b\n";
        assert_eq!(os_release_get(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_get(text, "NAME").as_deref(), Some("Node OS"));
        assert_eq!(os_release_get(text, "IMAGE_ID").as_deref(), Some("node"));
        assert_eq!(os_release_get(text, "IMAGE_VERSION").as_deref(), Some("1.2 \"x\""));
        assert_eq!(os_release_get(text, "PRETTY_NAME").as_deref(), Some("a b"));
        assert_eq!(os_release_get(text, "VERSION_ID"), None);
        assert_eq!(os_release_get("# IMAGE_ID=x", "IMAGE_ID"), None);
    }

    #[test]
    fn last_os_release_assignment_wins() {
        assert_eq!(os_release_get("A=1\nA=2\n", "A").as_deref(), Some("2"));
    }

    #[test]
    fn root_fstype_takes_topmost_root_mount() {
        let mounts = "rootfs / rootfs rw 0 0\n/dev/loop0 / squashfs ro,relatime 0 0\nproc /proc proc rw 0 0\n";
        assert_eq!(root_fstype(mounts).as_deref(), Some("squashfs"));
        assert_eq!(root_fstype("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn cmdline_words_match_exactly() {
        let cl = "console=ttyS0 panic=-1 machined.smoke=1";
        assert!(cmdline_has(cl, "machined.smoke=1"));
        assert!(!cmdline_has("machined.smoke=10", "machined.smoke=1"));
        assert!(!cmdline_has("xmachined.smoke=1", "machined.smoke=1"));
        assert!(cmdline_has("a\tmachined.smoke=1\n", "machined.smoke=1"));
    }

    #[test]
    fn module_list_skips_blanks_and_comments() {
        let text = "/lib/modules/6.1/kernel/drivers/block/loop.ko\n\n  # c\n /lib/modules/6.1/kernel/fs/squashfs/squashfs.ko \n";
        assert_eq!(
            module_list(text),
            vec!["/lib/modules/6.1/kernel/drivers/block/loop.ko", "/lib/modules/6.1/kernel/fs/squashfs/squashfs.ko"]
        );
    }

    #[test]
    fn module_names_follow_the_kernel() {
        assert_eq!(module_name("/lib/modules/x/kernel/fs/squashfs/squashfs.ko"), "squashfs");
        assert_eq!(module_name("/a/virtio-pci.ko.xz"), "virtio_pci");
        assert_eq!(module_name("button.ko"), "button");
    }

    fn event(kind: u16, code: u16, value: i32) -> Vec<u8> {
        let mut ev = vec![0u8; 16];
        ev.extend_from_slice(&kind.to_ne_bytes());
        ev.extend_from_slice(&code.to_ne_bytes());
        ev.extend_from_slice(&value.to_ne_bytes());
        ev
    }

    #[test]
    fn power_press_is_detected_among_events() {
        let mut buf = event(1, 116, 0); // release
        buf.extend(event(0, 0, 0)); // SYN_REPORT
        assert!(!has_power_press(&buf));
        buf.extend(event(1, 116, 1));
        assert!(has_power_press(&buf));
        assert!(!has_power_press(&event(1, 115, 1)));
        assert!(!has_power_press(&event(4, 116, 1)));
        // A truncated record is ignored.
        assert!(!has_power_press(&event(1, 116, 1)[..23]));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(30), "SIGPWR");
        assert_eq!(signal_name(12), "SIGUSR2");
        assert_eq!(signal_name(2), "SIGINT");
        assert_eq!(signal_name(99), "SIG99");
    }
}

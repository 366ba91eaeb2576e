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

/// Mount points of every `fstype` filesystem, last mounted first (so a mount below another comes
/// before it).
pub fn mounts_of_type(mounts: &str, fstype: &str) -> Vec<String> {
    let mut found: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(2) == Some(&fstype)).then(|| unescape_mount_path(fields[1]))
        })
        .collect();
    found.reverse();
    found
}

/// Overlay mounts elsewhere whose upper layer lives at or below `dir` (the writable paths over the
/// root keep theirs on /var), last mounted first: they hold `dir`'s filesystem busy.
pub fn overlays_backed_by(mounts: &str, dir: &str) -> Vec<String> {
    let prefix = format!("upperdir={}/", dir.trim_end_matches('/'));
    let mut found: Vec<String> = mounts
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let backed = fields.get(2) == Some(&"overlay") && fields.get(3)?.split(',').any(|o| o.starts_with(&prefix));
            backed.then(|| unescape_mount_path(fields[1]))
        })
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

/// depmod's modules.dep: `kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz` per line, as (module
/// name, path, dependency paths).
pub fn modules_dep(text: &str) -> Vec<(String, String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let path = path.trim();
            Some((module_name(path), path.to_string(), deps.split_whitespace().map(String::from).collect()))
        })
        .collect()
}

/// depmod's modules.alias: `alias <pattern> <module>` per line, as (pattern, module).
pub fn modules_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "alias").then_some(())?;
            Some((words.next()?.to_string(), words.next()?.replace('-', "_")))
        })
        .collect()
}

/// fnmatch(3) without flags, as modprobe matches aliases: `*`, `?` and `[...]` (with ranges and `!`).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // Returns (matched, length of the class in the pattern) for a pattern starting after '['.
        let (negate, mut i) = if p.first() == Some(&b'!') { (true, 1) } else { (false, 0) };
        let mut matched = false;
        let mut first = true;
        while i < p.len() && (first || p[i] != b']') {
            first = false;
            if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                matched |= p[i] <= c && c <= p[i + 2];
                i += 3;
            } else {
                matched |= p[i] == c;
                i += 1;
            }
        }
        (i < p.len()).then_some((matched != negate, i + 1))
    }
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') => (0..=t.len()).any(|skip| go(&p[1..], &t[skip..])),
            Some(b'?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(b'[') => match (t.first(), class(&p[1..], *t.first().unwrap_or(&0))) {
                (Some(_), Some((true, len))) => go(&p[1 + len..], &t[1..]),
                (Some(c), None) => *c == b'[' && go(&p[1..], &t[1..]),
                _ => false,
            },
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// The IPv6 addresses of one interface from /proc/net/if_inet6 (`address ifindex prefix scope flags
/// name`, the address as 32 hex digits), as `addr/prefix`.
pub fn ipv6_addresses(if_inet6: &str, ifname: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in if_inet6.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() != 6 || fields[5] != ifname || fields[0].len() != 32 {
            continue;
        }
        let Ok(prefix) = u8::from_str_radix(fields[2], 16) else { continue };
        let Ok(bits) = u128::from_str_radix(fields[0], 16) else { continue };
        out.push(format!("{}/{prefix}", std::net::Ipv6Addr::from(bits)));
    }
    out
}

/// /etc/resolv.conf's text for these servers and search domains.
pub fn resolv_conf(nameservers: &[std::net::Ipv4Addr], search: &[String]) -> String {
    let mut text = String::from("# written by machined from the machine config or the DHCP lease\n");
    for server in nameservers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text
}

/// /etc/hosts's text: localhost, and the host name on the node's first address (or on 127.0.1.1
/// while it has none, as Debian does).
pub fn hosts_file(hostname: &str, address: Option<&str>) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let names = if short == hostname { hostname.to_string() } else { format!("{hostname} {short}") };
    format!(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n{} {names}\n",
        address.unwrap_or("127.0.1.1")
    )
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
        assert_eq!(
            mounts_of_type(
                "tmpfs /run tmpfs rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\ntmpfs /run/a\\040b tmpfs rw 0 0\n",
                "tmpfs"
            ),
            ["/run/a b", "/run"]
        );
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

    #[test]
    fn depmod_indexes_and_alias_patterns() {
        let dep = "kernel/fs/fat/vfat.ko.xz: kernel/fs/fat/fat.ko.xz\nkernel/fs/fat/fat.ko.xz:\n";
        let parsed = modules_dep(dep);
        assert_eq!(
            parsed[0],
            ("vfat".into(), "kernel/fs/fat/vfat.ko.xz".into(), vec!["kernel/fs/fat/fat.ko.xz".into()])
        );
        assert_eq!(parsed[1].2, Vec::<String>::new());
        let aliases = modules_alias(
            "# comment\nalias fs-vfat vfat\nalias net-pf-10 ipv6\nalias pci:v00001AF4d*sv*sd*bc*sc*i* virtio-pci\n",
        );
        assert_eq!(aliases[0], ("fs-vfat".into(), "vfat".into()));
        assert_eq!(aliases[2].1, "virtio_pci");
        assert!(glob_match("fs-vfat", "fs-vfat"));
        assert!(!glob_match("fs-vfat", "fs-vfat2"));
        assert!(glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"));
        assert!(!glob_match("pci:v00001AF4d*", "pci:v00008086d00001000"));
        assert!(glob_match("nf-ct-proto-?", "nf-ct-proto-6"));
        assert!(glob_match("x[0-9]y", "x5y") && !glob_match("x[0-9]y", "xay"));
        assert!(glob_match("x[!0-9]y", "xay") && !glob_match("x[!0-9]y", "x5y"));
        assert!(!glob_match("x[0-9", "x5"), "an unclosed class is a literal '['");
    }

    #[test]
    fn resolv_conf_hosts_and_ipv6_addresses() {
        let resolv = resolv_conf(&["10.0.3.1".parse().unwrap()], &["cluster.test".into()]);
        assert!(resolv.contains("nameserver 10.0.3.1\n") && resolv.ends_with("search cluster.test\n"));
        assert!(hosts_file("cp-1.cluster.test", Some("10.0.3.10")).contains("10.0.3.10 cp-1.cluster.test cp-1\n"));
        assert!(hosts_file("node", None).contains("127.0.1.1 node\n"));
        let if_inet6 = "fec000000000000050540ffffe123456 02 40 00 00     eth0\nfe80000000000000505400fffe123456 02 40 20 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(ipv6_addresses(if_inet6, "eth0"), ["fec0::5054:fff:fe12:3456/64", "fe80::5054:ff:fe12:3456/64"]);
        assert_eq!(ipv6_addresses(if_inet6, "lo"), ["::1/128"]);
    }

    #[test]
    fn overlays_with_their_upper_layer_on_var_are_found_last_first() {
        let mounts = "overlay / overlay ro,lowerdir=/a:/b 0 0\n\
            /dev/dm-0 /var ext4 rw 0 0\n\
            overlay /etc/cni overlay rw,lowerdir=/etc/cni,upperdir=/var/lib/machined/overlays/etc-cni/upper,workdir=/var/w 0 0\n\
            overlay /opt/cni/bin overlay rw,lowerdir=/opt/cni/bin,upperdir=/var/lib/machined/overlays/opt-cni-bin/upper,workdir=/var/x 0 0\n\
            overlay /x overlay rw,upperdir=/varnish/u 0 0\n";
        assert_eq!(overlays_backed_by(mounts, "/var"), ["/opt/cni/bin", "/etc/cni"]);
    }
}

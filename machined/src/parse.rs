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

#[cfg(test)]
mod tests {
    use super::*;

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

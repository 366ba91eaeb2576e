//! What the root gets from the build's later steps: machined itself, which the initramfs's copy cannot
//! be once the root is switched (the kernel runs it as its modprobe helper; Talos's guest-agent
//! service binds it as /sbin/shutdown).

use crate::spec::protocol::{MACHINED_IN_ROOT, MODPROBE};
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Copies machined to MACHINED_IN_ROOT and links MODPROBE to it (the link's name picks the applet).
pub fn install_machined(root: &Path, machined: &Path) -> Result<()> {
    let init = root.join(MACHINED_IN_ROOT.trim_start_matches('/'));
    if fs::symlink_metadata(&init).is_ok() {
        fs::remove_file(&init).with_context(|| format!("replacing {}", init.display()))?;
    }
    fs::copy(machined, &init).with_context(|| format!("copying machined to {}", init.display()))?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let link = root.join(MODPROBE.trim_start_matches('/'));
    let dir = link.parent().context("MODPROBE has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let target = relative_target(MODPROBE, MACHINED_IN_ROOT);
    std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
    Ok(())
}

/// The relative symlink target from absolute path `link` to absolute path `target`.
fn relative_target(link: &str, target: &str) -> String {
    let depth = link.trim_start_matches('/').matches('/').count();
    format!("{}{}", "../".repeat(depth), target.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machined_is_installed_with_its_modprobe_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/sbin")).unwrap();
        let machined = dir.path().join("machined");
        fs::write(&machined, b"\x7fELF").unwrap();
        install_machined(&root, &machined).unwrap();
        let link = root.join(MODPROBE.trim_start_matches('/'));
        assert_eq!(fs::read(&link).unwrap(), b"\x7fELF");
        assert_eq!(fs::read_link(&link).unwrap().to_str().unwrap(), "../../../usr/sbin/init");
        assert_eq!(relative_target("/a/b/c", "/x/y"), "../../x/y");
    }
}

//! Unpacking .deb payloads in Rust: no dpkg, no maintainer scripts. A .deb is an ar archive whose
//! `data.tar.*` member holds the files; we write them under a staging root, refusing anything that
//! could land outside it. Ownership and times are not kept here: the squashfs and cpio writers force
//! root:root and SOURCE_DATE_EPOCH.

use crate::util::tree::{
    check_real_dirs, ensure_parents, normalise, remove_existing, symlink_stays_inside, Provenance, MERGED_USR_DIRS,
};
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Reads the member of an ar archive whose name starts with `prefix`, returning its name and bytes.
pub fn ar_member(deb: &Path, prefix: &str) -> Result<(String, Vec<u8>)> {
    let mut file = BufReader::new(File::open(deb).with_context(|| format!("opening {}", deb.display()))?);
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic).with_context(|| format!("{}: too short for an ar archive", deb.display()))?;
    if &magic != b"!<arch>\n" {
        bail!("{}: not a .deb (no ar magic)", deb.display());
    }
    loop {
        let mut header = [0u8; 60];
        match file.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                bail!("{}: no member named {prefix}*", deb.display())
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", deb.display())),
        }
        let name = String::from_utf8_lossy(&header[0..16]).trim_end().trim_end_matches('/').to_string();
        let size: u64 = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .with_context(|| format!("{}: bad size in ar header of member {name:?}", deb.display()))?;
        if name.starts_with(prefix) {
            let mut data = Vec::with_capacity(size as usize);
            file.by_ref().take(size).read_to_end(&mut data)?;
            if data.len() as u64 != size {
                bail!("{}: member {name} is truncated", deb.display());
            }
            return Ok((name, data));
        }
        // Members are padded to an even size.
        std::io::copy(&mut file.by_ref().take(size + size % 2), &mut std::io::sink())?;
    }
}

/// A decompressing reader for a tar member, by its file name.
pub fn decompress<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>> {
    Ok(match name.rsplit('.').next() {
        Some("xz") => Box::new(liblzma::read::XzDecoder::new(data)),
        Some("zst") => Box::new(zstd::stream::read::Decoder::new(data)?),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(data)),
        Some("tar") => Box::new(data),
        _ => bail!("unsupported compression for {name}"),
    })
}

/// The top-level directory a merged-/usr compatibility link stands for (`./bin -> usr/bin` → bin).
fn merged_usr_link<'a>(raw: &'a Path, target: &Path) -> Option<&'a str> {
    let name = raw.to_str()?.trim_start_matches("./").trim_end_matches('/');
    let wanted = format!("usr/{name}");
    (MERGED_USR_DIRS.contains(&name) && target == Path::new(&wanted)).then_some(name)
}

/// Unpacks `deb`'s files under `root`, recording which package wrote each path in `provenance`.
/// Refuses (naming `package`) absolute or `..` paths, links escaping the root, and special files.
pub fn unpack(deb: &Path, package: &str, root: &Path, provenance: &mut Provenance) -> Result<()> {
    let (member, data) = ar_member(deb, "data.tar").with_context(|| format!("package {package}"))?;
    let mut archive = tar::Archive::new(decompress(&member, &data)?);
    for entry in archive.entries().with_context(|| format!("package {package}: reading {member}"))? {
        let mut entry = entry.with_context(|| format!("package {package}: reading {member}"))?;
        let raw = entry.path()?.into_owned();
        let rel = normalise(&raw)
            .map_err(|why| anyhow::anyhow!("package {package}: refusing entry {}: {why}", raw.display()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dest = root.join(&rel);
        ensure_parents(root, &rel).with_context(|| format!("package {package}: entry {}", raw.display()))?;
        let mode = entry.header().mode()? & 0o7777;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => bail!("package {package}: directory {} collides with a file", rel.display()),
                    Err(_) => fs::create_dir(&dest).with_context(|| format!("creating {}", dest.display()))?,
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
                // Directories too, so that a directory's mode can be traced to who shipped it; the
                // first package to ship a shared one (usr/share/doc) keeps it.
                provenance.entry(rel).or_insert_with(|| package.to_string());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&dest)?;
                let mut out = File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
                std::io::copy(&mut entry, &mut out)
                    .with_context(|| format!("package {package}: writing {}", rel.display()))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
                provenance.insert(rel, package.to_string());
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.context("symlink without target")?.into_owned();
                // Packages of a merged-/usr release ship the compatibility links themselves (trixie's
                // base-files: ./bin -> usr/bin); the root already has them, made the same way.
                if let Some(dir) = merged_usr_link(&raw, &target) {
                    let link = root.join(dir);
                    if fs::symlink_metadata(&link).is_err() {
                        ensure_parents(root, &Path::new("usr").join(dir).join("x"))?;
                        std::os::unix::fs::symlink(&target, &link)
                            .with_context(|| format!("creating {}", link.display()))?;
                    }
                    provenance.insert(PathBuf::from(dir), package.to_string());
                    continue;
                }
                if !symlink_stays_inside(&rel, &target) {
                    bail!(
                        "package {package}: refusing symlink {} -> {}: it escapes the root",
                        rel.display(),
                        target.display()
                    );
                }
                remove_existing(&dest)?;
                std::os::unix::fs::symlink(&target, &dest).with_context(|| format!("creating {}", dest.display()))?;
                provenance.insert(rel, package.to_string());
            }
            tar::EntryType::Link => {
                let raw_target = entry.link_name()?.context("hard link without target")?.into_owned();
                let target = normalise(&raw_target).map_err(|why| {
                    anyhow::anyhow!("package {package}: refusing hard link {} -> {}: {why}", raw.display(), raw_target.display())
                })?;
                check_real_dirs(root, &target).with_context(|| format!("package {package}: hard link {}", rel.display()))?;
                remove_existing(&dest)?;
                fs::hard_link(root.join(&target), &dest).with_context(|| {
                    format!("package {package}: hard link {} -> {}", rel.display(), target.display())
                })?;
                provenance.insert(rel, package.to_string());
            }
            other => bail!(
                "package {package}: refusing {} ({other:?}): device nodes, fifos and sockets have no place in the image",
                rel.display()
            ),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb_with(entries: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        entries(&mut builder);
        let data = builder.into_inner().unwrap();
        let mut deb = b"!<arch>\n".to_vec();
        for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("data.tar", &data[..])] {
            deb.extend(format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, body.len()).as_bytes());
            deb.extend(body);
            if body.len() % 2 == 1 {
                deb.push(b'\n');
            }
        }
        deb
    }

    fn unpack_bytes(deb: Vec<u8>) -> Result<tempfile::TempDir> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.deb");
        fs::write(&path, deb).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        unpack(&path, "evil", &root, &mut Provenance::new())?;
        Ok(dir)
    }

    #[test]
    fn escaping_symlink_is_refused_with_the_package_name() {
        let deb = deb_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "./etc/shadow-link", "../../../../etc/shadow").unwrap();
        });
        let err = format!("{:#}", unpack_bytes(deb).unwrap_err());
        assert!(err.contains("package evil") && err.contains("escapes the root"), "{err}");
    }

    #[test]
    fn write_through_a_symlinked_directory_is_refused() {
        let deb = deb_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "./etc/dir", "/tmp").unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            b.append_data(&mut h, "./etc/dir/file", &b"x"[..]).unwrap();
        });
        let err = format!("{:#}", unpack_bytes(deb).unwrap_err());
        assert!(err.contains("package evil") && err.contains("not a directory"), "{err}");
    }

    #[test]
    fn a_package_shipping_the_merged_usr_links_is_unpacked_over_them() {
        let deb = deb_with(|b| {
            for dir in ["bin", "lib"] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, format!("./{dir}"), format!("usr/{dir}")).unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o755);
            b.append_data(&mut h, "./usr/bin/tool", &b"hi"[..]).unwrap();
            for dir in ["./var/", "./var/local/"] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o2775);
                b.append_data(&mut h, dir, &b""[..]).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base-files.deb");
        fs::write(&path, deb).unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        crate::rootfs::tree::make_merged_usr(&root, crate::spec::Arch::Arm64).unwrap();
        let mut provenance = Provenance::new();
        unpack(&path, "base-files", &root, &mut provenance).unwrap();
        assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("usr/bin"));
        assert_eq!(fs::read_link(root.join("lib")).unwrap(), Path::new("usr/lib"));
        assert_eq!(fs::read(root.join("bin/tool")).unwrap(), b"hi");
        assert_eq!(provenance.get(Path::new("bin")).map(String::as_str), Some("base-files"));
        assert_eq!(provenance.get(Path::new("var/local")).map(String::as_str), Some("base-files"), "{provenance:?}");
    }

    #[test]
    fn files_land_under_merged_usr() {
        let deb = deb_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o755);
            b.append_data(&mut h, "./bin/tool", &b"hi"[..]).unwrap();
        });
        let dir = unpack_bytes(deb).unwrap();
        assert_eq!(fs::read(dir.path().join("root/usr/bin/tool")).unwrap(), b"hi");
    }
}

//! The code digests the stage cache keys on (util/stage_cache.rs): a sha256 per top-level folder of
//! src/, and one of the manifest and the lockfile (which pin every crate a stage runs), so a stage
//! whose code changed misses the cache without anyone remembering to bump a version.

use sha2::{Digest, Sha256};
use std::path::Path;

fn main() {
    let src = Path::new("src");
    let mut digests: Vec<(String, String)> = Vec::new();
    let mut folders: Vec<_> =
        std::fs::read_dir(src).expect("listing src/").map(|e| e.expect("src/ entry").path()).collect();
    folders.sort();
    for folder in folders.iter().filter(|p| p.is_dir()) {
        let mut files: Vec<_> = walk(folder);
        files.sort();
        let mut h = Sha256::new();
        for file in files {
            let rel = file.strip_prefix(src).expect("under src/").to_string_lossy().into_owned();
            let contents = std::fs::read(&file).expect("reading a source file");
            h.update((rel.len() as u64).to_le_bytes());
            h.update(rel.as_bytes());
            h.update((contents.len() as u64).to_le_bytes());
            h.update(&contents);
        }
        let name = folder.file_name().expect("folder name").to_string_lossy().into_owned();
        digests.push((name, hex(&h.finalize())));
    }
    for (name, path) in [("Cargo.toml", "Cargo.toml"), ("Cargo.lock", "../Cargo.lock")] {
        let contents = std::fs::read(path).unwrap_or_default();
        digests.push((name.to_string(), hex(&Sha256::digest(&contents))));
    }
    let body: String = digests.iter().map(|(n, d)| format!("    ({n:?}, {d:?}),\n")).collect();
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("code_digests.rs");
    std::fs::write(out, format!("pub const CODE_DIGESTS: &[(&str, &str)] = &[\n{body}];\n"))
        .expect("writing code_digests.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-changed=../Cargo.lock");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("listing a source folder") {
        let path = entry.expect("source entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

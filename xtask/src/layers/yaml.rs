//! Where in a Talos YAML file an error is: file, line and column.

use std::path::Path;

/// `path:line:column: message` for a YAML error.
pub fn error(path: &Path, e: &serde_yaml_ng::Error) -> String {
    let message = e.to_string();
    match e.location() {
        Some(at) => {
            // The message repeats the position; it is already in front.
            let suffix = format!(" at line {} column {}", at.line(), at.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            format!("{}:{}:{}: {message}", path.display(), at.line(), at.column())
        }
        None => format!("{}: {message}", path.display()),
    }
}

/// The 1-based line where `key:` first appears (for errors about values that parsed but are wrong).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let wanted = format!("{key}:");
    text.lines().position(|line| line.trim_start().starts_with(&wanted)).map(|i| i + 1)
}

/// `<label>: <path>:<line>` for an error about `key`'s value (the line where `key:` first appears).
pub fn at(label: &str, path: &Path, text: &str, key: &str) -> String {
    format!("{label}: {}{}", path.display(), line_of(text, key).map_or(String::new(), |l| format!(":{l}")))
}

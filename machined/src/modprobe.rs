//! Kernel modules on demand. The kernel asks for a module it lacks (a filesystem type, a protocol
//! family, a netfilter match, a crypto algorithm...) by running its modprobe helper,
//! `/proc/sys/kernel/modprobe`, with `-q -- <name or alias>`. That helper is machined itself: the
//! builder links [`MODPROBE`] to machined's copy in the root, and machined, started under that name,
//! runs [`main`]. It resolves the request in the image's own module tree (`/usr/lib/modules/<release>`,
//! indexed by depmod at build time: modules.dep, modules.alias, modules.builtin), loads what it
//! depends on first, then the module, with finit_module(2). Signatures are still the kernel's to check
//! (module.sig_enforce=1): the files are Debian's signed modules, unchanged. Each request is logged to
//! [`MODPROBE_LOG`] for the status.

use crate::protocol::{MODPROBE, MODPROBE_LOG};
use crate::{json, modules, parse};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;

const KERNEL_HELPER: &str = "/proc/sys/kernel/modprobe";
/// The kernel asks for names it can do without (built-in algorithms under other names, optional
/// helpers): not an error, the log says `missing`.
const NOT_FOUND: &str = "no module is or provides";
/// `Y` when the kernel refuses modules without a valid signature (module.sig_enforce=1).
const SIG_ENFORCE: &str = "/sys/module/module/parameters/sig_enforce";

/// The module index of the running kernel's tree.
pub struct Index {
    dir: String,
    /// (module name, path relative to `dir`, dependency paths) from modules.dep.
    modules: Vec<(String, String, Vec<String>)>,
    /// (pattern, module name) from modules.alias.
    aliases: Vec<(String, String)>,
    builtin: BTreeSet<String>,
}

impl Index {
    pub fn open(release: &str) -> Result<Index, String> {
        let dir = format!("/usr/lib/modules/{release}");
        let read = |name: &str| fs::read_to_string(format!("{dir}/{name}")).map_err(|e| format!("{dir}/{name}: {e}"));
        let modules = parse::modules_dep(&read("modules.dep")?);
        let aliases = parse::modules_alias(&read("modules.alias")?);
        let builtin = read("modules.builtin").unwrap_or_default().lines().map(parse::module_name).collect();
        Ok(Index { dir, modules, aliases, builtin })
    }

    /// The modules `request` names (a module name, or an alias some modules declare).
    pub fn resolve(&self, request: &str) -> Vec<String> {
        let name = request.replace('-', "_");
        if self.builtin.contains(&name) || self.modules.iter().any(|(n, _, _)| *n == name) {
            return vec![name];
        }
        let mut found: Vec<String> = self
            .aliases
            .iter()
            .filter(|(pattern, _)| parse::glob_match(pattern, request))
            .map(|(_, module)| module.clone())
            .collect();
        found.dedup();
        found
    }

    /// Loads `name` after what it depends on; returns the names actually inserted now.
    pub fn load(&self, name: &str) -> Result<Vec<String>, String> {
        if self.builtin.contains(name) {
            return Ok(Vec::new());
        }
        let (_, path, deps) = self
            .modules
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| format!("{name}: not in {}/modules.dep", self.dir))?;
        let mut inserted = Vec::new();
        // modules.dep lists a module's whole closure, the ones to load first last.
        for dep in deps.iter().rev().chain(std::iter::once(path)) {
            let full = format!("{}/{dep}", self.dir);
            let file = File::open(&full).map_err(|e| format!("{full}: {e}"))?;
            if modules::insert(&full, &file)? {
                inserted.push(parse::module_name(dep));
            }
        }
        Ok(inserted)
    }
}

/// Until [`install`], the kernel's module requests fail at once: with an empty helper path,
/// request_module returns ENOENT without starting a process. In that window machined loads what the
/// boot needs itself, and the only requests are dm-crypt's lookups of its cipher (crypto-xts(aes),
/// crypto-aes and their -all forms), which the boot modules and the kernel already provide: each
/// would start the helper for nothing, four times on the way to the scratch disk (0.3-0.4 s of the
/// boot under TCG). Best effort: on failure the kernel's default helper path stays, which names
/// nothing in the root.
pub fn hold() {
    let _ = fs::write(KERNEL_HELPER, "\n");
}

/// Makes machined the kernel's modprobe helper.
pub fn install() -> Result<(), String> {
    fs::write(KERNEL_HELPER, MODPROBE).map_err(|e| format!("writing {MODPROBE} to {KERNEL_HELPER}: {e}"))
}

/// Resolves and loads one request, logging the outcome; returns the log line's result part.
pub fn request(release: &str, request: &str) -> Result<Vec<String>, String> {
    let outcome = Index::open(release).and_then(|index| {
        let names = index.resolve(request);
        if names.is_empty() {
            return Err(format!("{NOT_FOUND} {request:?}"));
        }
        let mut inserted = Vec::new();
        let mut errors = Vec::new();
        for name in &names {
            match index.load(name) {
                Ok(done) => inserted.extend(done),
                Err(e) => errors.push(e),
            }
        }
        // Like modprobe: one of several candidates loading is success.
        if errors.len() == names.len() {
            Err(errors.join("; "))
        } else {
            Ok(inserted)
        }
    });
    let line = match &outcome {
        Ok(inserted) if inserted.is_empty() => format!("{request} ok (already loaded)\n"),
        Ok(inserted) => format!("{request} ok {}\n", inserted.join(",")),
        Err(e) if e.starts_with(NOT_FOUND) => format!("{request} missing {}\n", e.replace('\n', " ")),
        Err(e) => format!("{request} error {}\n", e.replace('\n', " ")),
    };
    if let Some(dir) = std::path::Path::new(MODPROBE_LOG).parent() {
        let _ = fs::create_dir_all(dir);
    }
    if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(MODPROBE_LOG) {
        let _ = log.write_all(line.as_bytes());
    }
    outcome
}

/// The applet: `modprobe [-q] [--] <name>...` as the kernel runs it. Exit status 0 when each name
/// resolved and loaded.
pub fn main(args: &[String]) -> i32 {
    let quiet = args.iter().any(|a| a == "-q");
    let names: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let release = match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => r.trim().to_string(),
        Err(e) => {
            eprintln!("modprobe: reading the kernel release: {e}");
            return 1;
        }
    };
    let mut status = 0;
    for name in names {
        if let Err(e) = request(&release, name) {
            if !quiet {
                eprintln!("modprobe: {e}");
            }
            status = 1;
        }
    }
    status
}

/// What the helper did this boot: (request, result) per line of the log.
pub fn log() -> Vec<(String, String)> {
    fs::read_to_string(MODPROBE_LOG)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(r, o)| (r.to_string(), o.to_string())))
        .collect()
}

/// The status's `modules_on_demand` section: the helper, and each request it served.
pub fn json(installed: &Result<(), String>) -> json::Object {
    let requests = log()
        .into_iter()
        .map(|(request, result)| json::Object::new().str("request", &request).str("result", &result))
        .collect();
    let sig_enforce = fs::read_to_string(SIG_ENFORCE).map(|s| s.trim().to_string()).ok();
    json::Object::new()
        .str("helper", MODPROBE)
        .opt_str("sig_enforce", sig_enforce.as_deref())
        .opt_str("helper_error", installed.as_ref().err().map(String::as_str))
        .objects("requests", requests)
}

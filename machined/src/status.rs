//! What machined reports once the node is up: the one status line's model and its JSON.

use crate::facts::Facts;
use crate::secure_boot::SecureBoot;
use crate::{cgroups, containerd, json, scratch, services};

/// An extension as reported.
#[derive(Clone)]
pub struct ExtensionStatus {
    pub name: String,
    pub version: String,
}

/// containerd as reported.
#[derive(Clone)]
pub enum ContainerdStatus {
    /// The root has no /usr/bin/containerd.
    Missing,
    Answered {
        version: String,
        revision: Option<String>,
    },
    NotAnswering {
        error: String,
    },
}

/// What machined reports once the node is up.
#[derive(Clone)]
pub struct Status {
    pub arch: &'static str,
    pub image: String,
    pub version: String,
    pub kernel: String,
    pub root_fstype: Option<String>,
    pub root_read_only: bool,
    pub root_write_errno: Option<i32>,
    pub modules: Vec<String>,
    pub cmdline: String,
    pub loop_device: String,
    pub ready: bool,
    pub extensions: Vec<ExtensionStatus>,
    pub containerd: ContainerdStatus,
    pub services: Vec<services::Summary>,
    /// What the services' dependencies were judged against.
    pub facts: Facts,
    pub scratch: json::Object,
    pub shells_found: Vec<String>,
    pub shells_checked: u64,
    pub setid_found: Vec<String>,
    pub world_writable_found: Vec<String>,
    pub cgroup_controllers: Vec<String>,
    pub virtio_ports: Vec<String>,
    pub secure_boot: SecureBoot,
    pub milestones_ms: Vec<(&'static str, u64)>,
    /// Sections rendered by the modules they report on (config, network, time, kubernetes, ...), in
    /// order, after the fields above; refreshed while the node runs.
    pub sections: Vec<(&'static str, json::Object)>,
}

/// The status as one JSON object on one line.
pub fn status_json(s: Status) -> String {
    let sections = s.sections.clone();
    let mut milestones = json::Object::new();
    for (name, ms) in &s.milestones_ms {
        milestones = milestones.u64(name, *ms);
    }
    let extensions =
        s.extensions.iter().map(|e| json::Object::new().str("name", &e.name).str("version", &e.version)).collect();
    let containerd = json::Object::new().str("socket", containerd::SOCKET);
    let containerd = match &s.containerd {
        ContainerdStatus::Missing => containerd.bool("missing", true),
        ContainerdStatus::Answered { version, revision } => {
            containerd.str("version", version).opt_str("revision", revision.as_deref())
        }
        ContainerdStatus::NotAnswering { error } => containerd.str("error", error),
    };
    let cgroups = json::Object::new()
        .str("system", cgroups::SYSTEM)
        .str("kubepods", cgroups::KUBEPODS)
        .str_array("controllers", &s.cgroup_controllers);
    json::Object::new()
        .str("arch", s.arch)
        .str("image", &s.image)
        .str("version", &s.version)
        .str("kernel", &s.kernel)
        .opt_str("root_fstype", s.root_fstype.as_deref())
        .bool("root_read_only", s.root_read_only)
        .opt_i64("root_write_errno", s.root_write_errno.map(i64::from))
        .str_array("modules", &s.modules)
        .str("cmdline", &s.cmdline)
        .str("loop_device", &s.loop_device)
        .bool("ready", s.ready)
        .objects("extensions", extensions)
        .object("containerd", containerd)
        .objects("services", services_json(&s.services))
        .object("facts", facts_json(&s.facts))
        .object("scratch", s.scratch)
        .str_array("shells_found", &s.shells_found)
        .u64("shells_checked", s.shells_checked)
        .str_array("setid_found", &s.setid_found)
        .str_array("world_writable_found", &s.world_writable_found)
        .object("cgroups", cgroups)
        .str_array("virtio_ports", &s.virtio_ports)
        .object("secure_boot", secure_boot_json(&s.secure_boot))
        .object("milestones_ms", milestones)
        .objects_by_key(sections)
        .finish()
}

/// Each service: its state, what it waits for, its cgroup and namespaces, where its log goes and the
/// log's last lines.
pub fn services_json(services: &[services::Summary]) -> Vec<json::Object> {
    services
        .iter()
        .map(|svc| {
            json::Object::new()
                .str("name", &svc.name)
                .opt_i64("pid", svc.pid.map(i64::from))
                .u64("restarts", u64::from(svc.restarts))
                .str("state", &svc.state)
                .str_array("waiting_for", &svc.waiting_for)
                .opt_str("error", svc.error.as_deref())
                .str_array("warnings", &svc.warnings)
                .opt_str("cgroup", svc.cgroup.as_deref())
                .str_array("namespaces", &svc.namespaces)
                .str("log", &svc.log)
                .str_array("log_tail", &svc.log_tail)
        })
        .collect()
}

/// The facts, named as Talos's `depends` names them.
pub fn facts_json(facts: &Facts) -> json::Object {
    let network = json::Object::new()
        .bool("addresses", facts.network.addresses)
        .bool("connectivity", facts.network.connectivity)
        .bool("hostname", facts.network.hostname)
        .bool("etcfiles", facts.network.etcfiles);
    json::Object::new()
        .bool("cri", facts.cri)
        .object("network", network)
        .bool("configuration", facts.configuration)
        .bool("time", facts.time_synced)
}

/// `{"enabled":true,"setup_mode":false,"lockdown":"integrity","errors":[]}`: what could not be read is
/// `null`, with the reason in `errors`.
pub fn secure_boot_json(sb: &SecureBoot) -> json::Object {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |e: &String| {
        if !errors.contains(e) {
            errors.push(e.clone());
        }
    };
    let mut o = json::Object::new();
    for (key, value) in [("enabled", &sb.enabled), ("setup_mode", &sb.setup_mode)] {
        o = match value {
            Ok(b) => o.bool(key, *b),
            Err(e) => {
                note(e);
                o.opt_str(key, None)
            }
        };
    }
    o = match &sb.lockdown {
        Ok(mode) => o.str("lockdown", mode),
        Err(e) => {
            note(e);
            o.opt_str("lockdown", None)
        }
    };
    o.str_array("errors", &errors)
}

pub fn scratch_json(outcome: &scratch::Outcome) -> json::Object {
    match outcome {
        scratch::Outcome::Encrypted(m) => json::Object::new()
            .str("device", &m.device)
            .str("mapped", &m.mapped.path)
            .str("cipher", "aes-xts-plain64")
            .str("fstype", m.fstype)
            .str("marker", &m.marker),
        scratch::Outcome::Tmpfs { missing, reason } => {
            let o = json::Object::new().bool("missing", *missing).str("var", "tmpfs");
            if *missing {
                o.str("reason", reason)
            } else {
                o.str("error", reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            arch: "arm64",
            image: "node".into(),
            version: "1.0".into(),
            kernel: "6.1.0-50-cloud-arm64".into(),
            root_fstype: Some("overlay".into()),
            root_read_only: true,
            root_write_errno: Some(30),
            modules: vec!["loop".into(), "squashfs".into()],
            cmdline: "console=ttyAMA0 \"quoted\"".into(),
            loop_device: "/dev/loop0".into(),
            ready: true,
            extensions: vec![ExtensionStatus { name: "qemu-guest-agent".into(), version: "7.2".into() }],
            containerd: ContainerdStatus::Answered { version: "1.6.20".into(), revision: None },
            services: vec![services::Summary {
                name: "containerd".into(),
                pid: Some(42),
                restarts: 0,
                state: "running".into(),
                waiting_for: vec![],
                error: None,
                warnings: vec![],
                log: "console".into(),
                log_tail: vec!["up".into()],
                cgroup: Some("/system/containerd".into()),
                namespaces: vec![],
            }],
            facts: Facts { cri: true, ..Facts::default() },
            scratch: scratch_json(&scratch::Outcome::Tmpfs { missing: true, reason: "none".into() }),
            shells_found: vec![],
            shells_checked: 7,
            setid_found: vec![],
            world_writable_found: vec![],
            cgroup_controllers: vec!["cpu".into(), "memory".into()],
            virtio_ports: vec!["org.qemu.guest_agent.0".into()],
            secure_boot: SecureBoot { enabled: Ok(true), setup_mode: Ok(false), lockdown: Ok("integrity".into()) },
            milestones_ms: vec![("init_start", 1), ("modules_loaded", 2), ("root_mounted", 3), ("ready", 4)],
            sections: vec![("network", json::Object::new().bool("ready", true))],
        }
    }

    #[test]
    fn status_line_has_every_field() {
        assert_eq!(
            status_json(sample()),
            concat!(
                r#"{"arch":"arm64","image":"node","version":"1.0","kernel":"6.1.0-50-cloud-arm64","root_fstype":"overlay","#,
                r#""root_read_only":true,"root_write_errno":30,"modules":["loop","squashfs"],"#,
                r#""cmdline":"console=ttyAMA0 \"quoted\"","loop_device":"/dev/loop0","ready":true,"#,
                r#""extensions":[{"name":"qemu-guest-agent","version":"7.2"}],"#,
                r#""containerd":{"socket":"/run/containerd/containerd.sock","version":"1.6.20","revision":null},"#,
                r#""services":[{"name":"containerd","pid":42,"restarts":0,"state":"running","waiting_for":[],"error":null,"#,
                r#""warnings":[],"cgroup":"/system/containerd","namespaces":[],"log":"console","log_tail":["up"]}],"#,
                r#""facts":{"cri":true,"network":{"addresses":false,"connectivity":false,"hostname":false,"etcfiles":false},"#,
                r#""configuration":false,"time":false},"#,
                r#""scratch":{"missing":true,"var":"tmpfs","reason":"none"},"shells_found":[],"shells_checked":7,"#,
                r#""setid_found":[],"world_writable_found":[],"#,
                r#""cgroups":{"system":"/sys/fs/cgroup/system","kubepods":"/sys/fs/cgroup/kubepods","controllers":["cpu","memory"]},"#,
                r#""virtio_ports":["org.qemu.guest_agent.0"],"#,
                r#""secure_boot":{"enabled":true,"setup_mode":false,"lockdown":"integrity","errors":[]},"#,
                r#""milestones_ms":{"init_start":1,"modules_loaded":2,"root_mounted":3,"ready":4},"#,
                r#""network":{"ready":true}}"#
            )
        );
    }

    #[test]
    fn containerd_and_scratch_variants() {
        let mut s = sample();
        s.containerd = ContainerdStatus::NotAnswering { error: "connect: refused".into() };
        s.scratch = scratch_json(&scratch::Outcome::Tmpfs { missing: false, reason: "has a GPT".into() });
        let line = status_json(s);
        assert!(
            line.contains(r#""containerd":{"socket":"/run/containerd/containerd.sock","error":"connect: refused"}"#),
            "{line}"
        );
        assert!(line.contains(r#""scratch":{"missing":false,"var":"tmpfs","error":"has a GPT"}"#), "{line}");
        let mut s = sample();
        let no_efivarfs = "mount efivarfs on /sys/firmware/efi/efivars: ENODEV".to_string();
        s.secure_boot =
            SecureBoot { enabled: Err(no_efivarfs.clone()), setup_mode: Err(no_efivarfs), lockdown: Ok("none".into()) };
        assert!(status_json(s).contains(
            r#""secure_boot":{"enabled":null,"setup_mode":null,"lockdown":"none","errors":["mount efivarfs on /sys/firmware/efi/efivars: ENODEV"]}"#
        ));
        let mut s = sample();
        s.containerd = ContainerdStatus::Missing;
        assert!(status_json(s).contains(r#""containerd":{"socket":"/run/containerd/containerd.sock","missing":true}"#));
    }
}

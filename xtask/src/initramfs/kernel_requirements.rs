//! Cilium's documented kernel requirements (docs.cilium.io, Operations → System Requirements → Linux
//! Kernel), checked at build time against the kernel package's own configuration and reported in
//! manifest.json: a platform team choosing Cilium learns from the image which of its features the
//! node's kernel supports, before a node ever boots. An option built as a module counts as met: the
//! module is in the root's on-demand tree (the spec's `on-demand-modules` ship `net/` and `crypto/`).

use serde::Serialize;
use std::collections::BTreeMap;

/// (feature, options it needs). "base" is what every Cilium install needs.
const CILIUM: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "CONFIG_BPF",
            "CONFIG_BPF_SYSCALL",
            "CONFIG_NET_CLS_BPF",
            "CONFIG_BPF_JIT",
            "CONFIG_NET_CLS_ACT",
            "CONFIG_NET_SCH_INGRESS",
            "CONFIG_CRYPTO_SHA1",
            "CONFIG_CRYPTO_USER_API_HASH",
            "CONFIG_CGROUPS",
            "CONFIG_CGROUP_BPF",
            "CONFIG_PERF_EVENTS",
            "CONFIG_SCHEDSTATS",
        ],
    ),
    ("tunneling and routing", &["CONFIG_VXLAN", "CONFIG_GENEVE", "CONFIG_FIB_RULES"]),
    (
        "L7 and FQDN policies",
        &[
            "CONFIG_NETFILTER_XT_TARGET_TPROXY",
            "CONFIG_NETFILTER_XT_TARGET_MARK",
            "CONFIG_NETFILTER_XT_TARGET_CT",
            "CONFIG_NETFILTER_XT_MATCH_MARK",
            "CONFIG_NETFILTER_XT_MATCH_SOCKET",
        ],
    ),
    (
        "IPsec",
        &[
            "CONFIG_XFRM",
            "CONFIG_XFRM_OFFLOAD",
            "CONFIG_XFRM_STATISTICS",
            "CONFIG_XFRM_ALGO",
            "CONFIG_XFRM_USER",
            "CONFIG_INET_ESP",
            "CONFIG_INET6_ESP",
            "CONFIG_INET_IPCOMP",
            "CONFIG_INET6_IPCOMP",
            "CONFIG_INET_XFRM_TUNNEL",
            "CONFIG_INET6_XFRM_TUNNEL",
            "CONFIG_INET_TUNNEL",
            "CONFIG_INET6_TUNNEL",
            "CONFIG_CRYPTO_AEAD",
            "CONFIG_CRYPTO_AEAD2",
            "CONFIG_CRYPTO_GCM",
            "CONFIG_CRYPTO_SEQIV",
            "CONFIG_CRYPTO_CBC",
            "CONFIG_CRYPTO_HMAC",
            "CONFIG_CRYPTO_SHA256",
            "CONFIG_CRYPTO_AES",
        ],
    ),
    ("WireGuard encryption", &["CONFIG_WIREGUARD"]),
    ("bandwidth manager", &["CONFIG_NET_SCH_FQ"]),
    (
        "iptables-based masquerading",
        &["CONFIG_NETFILTER_XT_SET", "CONFIG_IP_SET", "CONFIG_IP_SET_HASH_IP", "CONFIG_NETFILTER_XT_MATCH_COMMENT"],
    ),
    ("netkit devices", &["CONFIG_NETKIT"]),
];

/// One feature's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Feature {
    pub feature: String,
    pub met: bool,
    /// Options the kernel lacks (not set, or set to `n`).
    pub missing: Vec<String>,
    /// Options built as modules, loaded on demand.
    pub modules: Vec<String>,
}

/// The requirements report for manifest.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Report {
    pub source: String,
    /// Whether the base requirements hold.
    pub base_met: bool,
    pub options_checked: usize,
    pub features: Vec<Feature>,
}

/// Judges the kernel configuration (option → value) against Cilium's list.
pub fn cilium(config: &BTreeMap<String, String>) -> Report {
    let features: Vec<Feature> = CILIUM
        .iter()
        .map(|(feature, options)| {
            let value = |o: &&str| config.get(*o).map(String::as_str);
            let missing: Vec<String> =
                options.iter().filter(|o| !matches!(value(o), Some("y" | "m"))).map(|o| o.to_string()).collect();
            let modules = options.iter().filter(|o| value(o) == Some("m")).map(|o| o.to_string()).collect();
            Feature { feature: feature.to_string(), met: missing.is_empty(), missing, modules }
        })
        .collect();
    Report {
        source: "docs.cilium.io: Operations, System Requirements, Linux Kernel".into(),
        base_met: features.first().is_some_and(|f| f.met),
        options_checked: CILIUM.iter().map(|(_, o)| o.len()).sum(),
        features,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_set_to_y_or_m_are_met_and_others_named() {
        let mut config: BTreeMap<String, String> =
            CILIUM.iter().flat_map(|(_, options)| options.iter()).map(|o| (o.to_string(), "y".to_string())).collect();
        config.insert("CONFIG_NET_SCH_FQ".into(), "m".into());
        let report = cilium(&config);
        assert!(report.base_met && report.features.iter().all(|f| f.met), "{report:?}");
        assert_eq!(
            report.features.iter().find(|f| f.feature == "bandwidth manager").unwrap().modules,
            ["CONFIG_NET_SCH_FQ"]
        );

        config.remove("CONFIG_BPF_JIT");
        config.insert("CONFIG_NETKIT".into(), "n".into());
        let report = cilium(&config);
        assert!(!report.base_met);
        assert_eq!(report.features[0].missing, ["CONFIG_BPF_JIT"]);
        assert_eq!(report.features.iter().find(|f| f.feature == "netkit devices").unwrap().missing, ["CONFIG_NETKIT"]);
    }
}

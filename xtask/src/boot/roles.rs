//! The boots boot-test makes of one disk image, each as a different node: the same image must take
//! its role, name and addresses from the per-node machine config it is given, and stay reachable when
//! that config is wrong.
//!
//! 1. worker: a NoCloud CIDATA volume (FAT) with a worker config; DHCP on both NICs, the host name
//!    from the LAN's lease, time from the NTP server the lease names, the lease renewed while watched.
//! 2. control-plane: another CIDATA volume, ISO-9660 this time (as cloud-init's tools make seeds):
//!    host name cp-1, a static address and default route on the LAN NIC (no DHCP there), nameserver
//!    and NTP server from the config. The kernel's isofs driver loads on demand to read it.
//! 3. invalid: a config in an SMBIOS OEM string with a wrong address: reported with its field, no
//!    role, and the node still up and answering its API.

use super::lan::Offer;
use serde::Serialize;

/// The filesystem of a NoCloud config volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeFormat {
    /// FAT, made by the ESP's writer; machined reads it itself.
    Fat,
    /// ISO-9660 with Rock Ridge and Joliet names, made by xorriso; machined mounts it.
    Iso9660,
}

impl VolumeFormat {
    /// The fstype machined names in config.source.
    pub fn fstype(self) -> &'static str {
        match self {
            VolumeFormat::Fat => "vfat",
            VolumeFormat::Iso9660 => "iso9660",
        }
    }
}

/// How the config reaches the node.
#[derive(Clone, Debug)]
pub enum ConfigDelivery {
    /// A volume labelled CIDATA with user-data and meta-data.
    Volume { format: VolumeFormat, user_data: &'static str, meta_data: &'static str },
    /// `machined.config=<base64>` as an SMBIOS OEM string.
    OemString(&'static str),
}

impl ConfigDelivery {
    /// What config.source must start with, and the fstype it must name in parentheses at its end.
    pub fn expected_source(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ConfigDelivery::Volume { format, .. } => ("cidata:", Some(format.fstype())),
            ConfigDelivery::OemString(_) => ("smbios:", None),
        }
    }
}

/// What the node must report in one boot.
#[derive(Clone, Debug, Serialize)]
pub struct Expectation {
    /// The role, or None where the config is invalid.
    pub role: Option<&'static str>,
    /// For an invalid config: the field it must be reported against.
    pub invalid_field: Option<&'static str>,
    pub hostname: &'static str,
    pub hostname_source: &'static str,
    /// The LAN NIC (eth1): its method and an address it must have.
    pub lan_method: &'static str,
    pub lan_address: &'static str,
    /// Whether the LAN's DHCP server must have heard from the node (false: it must not have).
    pub lan_dhcp: bool,
    /// Whether to wait for a renewal of the LAN lease.
    pub renewal: bool,
}

pub struct Scenario {
    pub name: &'static str,
    pub delivery: ConfigDelivery,
    pub offer: Offer,
    pub expect: Expectation,
}

const WORKER: &str = "\
# A worker: everything from DHCP, nothing per node but the role.
version: v1alpha1
machine:
  type: worker
  sysctls:
    net.core.somaxconn: \"4096\"
  files:
    - path: /var/lib/machined/role-note
      content: worker node
      permissions: 0o600
      op: create
cluster:
  clusterName: boot-test
";

const CONTROL_PLANE: &str = "\
version: v1alpha1
machine:
  type: controlplane
  network:
    hostname: cp-1
    nameservers: [10.0.3.1]
    searchDomains: [cluster.test]
    interfaces:
      - interface: eth1
        dhcp: false
        addresses: [10.0.3.10/24]
        routes:
          - network: 0.0.0.0/0
            gateway: 10.0.3.1
  time:
    servers: [10.0.3.1]
";

/// Wrong on purpose: an address that is not one.
const INVALID: &str = "\
version: v1alpha1
machine:
  type: worker
  network:
    interfaces:
      - interface: eth1
        addresses: [10.0.3.300/24]
";

pub const INVALID_FIELD: &str = "machine.network.interfaces[0].addresses[0]";

/// The boots, in order.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "worker",
            delivery: ConfigDelivery::Volume {
                format: VolumeFormat::Fat,
                user_data: WORKER,
                meta_data: "instance-id: boot-test-worker\n",
            },
            offer: Offer { hostname: Some("worker-1".into()) },
            expect: Expectation {
                role: Some("worker"),
                invalid_field: None,
                hostname: "worker-1",
                hostname_source: "dhcp",
                lan_method: "dhcp",
                lan_address: "10.0.3.15/24",
                lan_dhcp: true,
                renewal: true,
            },
        },
        Scenario {
            name: "control-plane",
            delivery: ConfigDelivery::Volume {
                format: VolumeFormat::Iso9660,
                user_data: CONTROL_PLANE,
                meta_data: "instance-id: boot-test-cp\n",
            },
            offer: Offer { hostname: Some("not-this-name".into()) },
            expect: Expectation {
                role: Some("controlplane"),
                invalid_field: None,
                hostname: "cp-1",
                hostname_source: "config",
                lan_method: "static",
                lan_address: "10.0.3.10/24",
                lan_dhcp: false,
                renewal: false,
            },
        },
        Scenario {
            name: "invalid-config",
            delivery: ConfigDelivery::OemString(INVALID),
            offer: Offer { hostname: Some("rescue-1".into()) },
            expect: Expectation {
                role: None,
                invalid_field: Some(INVALID_FIELD),
                hostname: "rescue-1",
                hostname_source: "dhcp",
                lan_method: "dhcp",
                lan_address: "10.0.3.15/24",
                lan_dhcp: true,
                renewal: false,
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documents parse as YAML and say what their scenario expects (machined's own parser is
    /// tested in machined; this keeps the fixtures honest).
    #[test]
    fn scenario_configs_are_yaml_with_the_expected_role() {
        for scenario in scenarios() {
            let text = match &scenario.delivery {
                ConfigDelivery::Volume { user_data, .. } => user_data,
                ConfigDelivery::OemString(text) => text,
            };
            let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
            let role = doc["machine"]["type"].as_str().unwrap();
            match scenario.expect.role {
                Some(expected) => assert_eq!(role, expected, "{}", scenario.name),
                None => assert!(text.contains("10.0.3.300"), "{}", scenario.name),
            }
        }
    }
}

//! What the node has reached so far, as Talos's service `depends:` entries ask for it: the
//! supervisor starts a service once every one of its dependencies holds. machined fills it each
//! round of its loop from the network state, the machine config and containerd's answer.

use crate::service_spec::NetworkCheck;

/// The `depends: network` conditions Talos names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkFacts {
    /// An address is configured on a link other than lo.
    pub addresses: bool,
    /// A default route exists.
    pub connectivity: bool,
    /// The host name is set.
    pub hostname: bool,
    /// /etc/resolv.conf and /etc/hosts have been written.
    pub etcfiles: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// containerd answers on its socket (`depends: service: cri`).
    pub cri: bool,
    pub network: NetworkFacts,
    /// A machine config was found, was valid and was applied (`depends: configuration`).
    pub configuration: bool,
    /// The clock was set from an NTP server (`depends: time`).
    pub time_synced: bool,
}

impl Facts {
    /// Whether one `depends: network` condition holds.
    pub fn network_holds(&self, check: NetworkCheck) -> bool {
        match check {
            NetworkCheck::Addresses => self.network.addresses,
            NetworkCheck::Connectivity => self.network.connectivity,
            NetworkCheck::Hostname => self.network.hostname,
            NetworkCheck::Etcfiles => self.network.etcfiles,
        }
    }
}

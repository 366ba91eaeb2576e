//! The node's network: the board's NIC drivers loaded (modules.rs), loopback and every Ethernet link
//! up, then per link either the machine config's static addresses and routes or DHCPv4 (the default),
//! with the lease renewed before it runs out; IPv6 router advertisements accepted (the kernel
//! configures SLAAC addresses and the default route). /etc/resolv.conf and /etc/hosts are links into
//! /run/machined, written here (the root stays read-only); the host name comes from the config, else
//! the lease, else the first MAC. An SNTP client sets the clock from the configured servers, else
//! those the lease offers. All of it runs in background threads; the shared `State` is what the status
//! line and the services' `depends: network` and `depends: time` read.

use crate::config::{Cidr, Interface, MachineConfig, Route};
use crate::dhcp::{self, Lease};
use crate::netlink::{Link, Origin, Socket};
use crate::{console, json, sntp, sys};
use std::fs;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const RESOLV_CONF: &str = "/run/machined/resolv.conf";
pub const HOSTS: &str = "/run/machined/hosts";
/// How long a link gets to show up after its driver loaded.
const LINK_WAIT: Duration = Duration::from_secs(10);
const LINK_SETTLE: Duration = Duration::from_millis(300);
/// DHCP keeps trying in the background; one round lasts this long before backing off.
const DHCP_ROUND: Duration = Duration::from_secs(30);
const NTP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the time client waits for DHCP to offer NTP servers when none are configured.
const NTP_WAIT_FOR_LEASE: Duration = Duration::from_secs(15);
const NTP_RETRY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct LinkState {
    pub name: String,
    pub mac: String,
    /// "static", "dhcp", or "loopback".
    pub method: String,
    pub addresses: Vec<String>,
    pub ipv6: Vec<String>,
    pub lease: Option<Lease>,
    /// When the lease was granted (to show how old it is).
    pub leased_at: Option<Instant>,
    /// Times the lease was extended (renewed at T1 or rebound at T2).
    pub renewals: u32,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct TimeState {
    pub synced: bool,
    pub server: Option<String>,
    pub servers: Vec<String>,
    /// Why time is not synced (or was given up on).
    pub reason: Option<String>,
}

/// What the network is, for the status line and the services' dependencies.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub links: Vec<LinkState>,
    pub hostname: Option<String>,
    pub hostname_source: String,
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub default_route: Option<Ipv4Addr>,
    pub etcfiles: bool,
    pub time: TimeState,
    /// Set once every link has been configured (addresses applied or the first DHCP round over).
    pub settled: bool,
    /// DHCP clients whose first round is not over yet.
    pub first_rounds_left: usize,
    /// Set when the node shuts down: /run is about to be unmounted, so its files are no longer kept.
    pub stopping: bool,
}

impl State {
    /// Talos's network readiness kinds: `addresses`, `connectivity`, `hostname`, `etcfiles`.
    pub fn has(&self, need: &str) -> bool {
        match need {
            "addresses" => {
                self.links.iter().any(|l| l.method != "loopback" && !(l.addresses.is_empty() && l.ipv6.is_empty()))
            }
            "connectivity" => self.default_route.is_some(),
            "hostname" => self.hostname.is_some(),
            "etcfiles" => self.etcfiles,
            _ => false,
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

/// A copy of the state as it is now. IPv6 addresses are read afresh: router advertisements and
/// SLAAC come and go without machined's doing.
pub fn snapshot(shared: &Shared) -> State {
    let mut state = lock(shared).clone();
    let if_inet6 = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for link in state.links.iter_mut() {
        link.ipv6 = crate::parse::ipv6_addresses(&if_inet6, &link.name);
    }
    state
}

/// The status's `network` section: readiness, then each link with its lease.
pub fn json(state: &State, wait_secs: u64) -> json::Object {
    let ips = |list: &[Ipv4Addr]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let links = state
        .links
        .iter()
        .map(|l| {
            let link = json::Object::new()
                .str("name", &l.name)
                .str("mac", &l.mac)
                .str("method", &l.method)
                .str_array("addresses", &l.addresses)
                .str_array("ipv6", &l.ipv6)
                .u64("renewals", u64::from(l.renewals))
                .opt_str("error", l.error.as_deref());
            match &l.lease {
                Some(lease) => link.object(
                    "lease",
                    json::Object::new()
                        .str("address", &format!("{}/{}", lease.address, lease.prefix))
                        .str("server", &lease.server.to_string())
                        .str_array("routers", &ips(&lease.routers))
                        .str_array("dns", &ips(&lease.dns))
                        .opt_str("domain", lease.domain.as_deref())
                        .str_array("search", &lease.search)
                        .opt_str("hostname", lease.hostname.as_deref())
                        .str_array("ntp", &ips(&lease.ntp))
                        .u64("lease_secs", u64::from(lease.lease_secs))
                        .u64("renew_secs", u64::from(lease.renew_secs))
                        .u64("age_secs", l.leased_at.map_or(0, |t| t.elapsed().as_secs())),
                ),
                None => link,
            }
        })
        .collect();
    let ready = json::Object::new()
        .bool("addresses", state.has("addresses"))
        .bool("connectivity", state.has("connectivity"))
        .bool("hostname", state.has("hostname"))
        .bool("etcfiles", state.has("etcfiles"));
    json::Object::new()
        .bool("settled", state.settled)
        .u64("ready_wait_secs", wait_secs)
        .object("ready", ready)
        .opt_str("hostname", state.hostname.as_deref())
        .str("hostname_source", &state.hostname_source)
        .str_array("nameservers", &ips(&state.nameservers))
        .str_array("search", &state.search)
        .opt_str("default_route", state.default_route.map(|r| r.to_string()).as_deref())
        .objects("links", links)
}

/// The status's `time` section.
pub fn time_json(time: &TimeState) -> json::Object {
    json::Object::new()
        .bool("synced", time.synced)
        .opt_str("server", time.server.as_deref())
        .str_array("servers", &time.servers)
        .opt_str("reason", time.reason.as_deref())
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Brings the network up per `config` (None: DHCP on every Ethernet link) in background threads and
/// returns the shared state at once.
pub fn start(config: Option<&MachineConfig>, meta_hostname: Option<String>) -> Shared {
    let shared: Shared = Arc::new(Mutex::new(State::default()));
    if let Some(name) = meta_hostname {
        let mut state = lock(&shared);
        state.hostname = Some(name);
        state.hostname_source = "meta-data".into();
    }
    let config = config.cloned();
    let state = Arc::clone(&shared);
    let spawned = std::thread::Builder::new().name("network".into()).spawn(move || run(config, state));
    if let Err(e) = spawned {
        console::write(format!("machined: cannot start the network thread: {e}\n").as_bytes());
    }
    shared
}

fn run(config: Option<MachineConfig>, shared: Shared) {
    let mut socket = match Socket::open() {
        Ok(socket) => socket,
        Err(e) => {
            console::write(format!("machined: network: opening rtnetlink: {e}\n").as_bytes());
            lock(&shared).settled = true;
            return;
        }
    };
    let links = wait_for_links(&mut socket, config.as_ref());
    let statics: Vec<Interface> = config.as_ref().map(|c| c.interfaces.clone()).unwrap_or_default();
    // Names and addresses first: the host name, nameservers and /etc files are right before any lease.
    {
        let mut state = lock(&shared);
        if let Some(hostname) = config.as_ref().and_then(|c| c.hostname.clone()) {
            state.hostname = Some(hostname);
            state.hostname_source = "config".into();
        }
        state.nameservers = config.as_ref().map(|c| c.nameservers.clone()).unwrap_or_default();
        state.search = config.as_ref().map(|c| c.search_domains.clone()).unwrap_or_default();
        state.time.servers = config.as_ref().map(|c| c.time_servers.clone()).unwrap_or_default();
    }
    let mut dhcp_links = Vec::new();
    for link in &links {
        let mut entry = LinkState { name: link.name.clone(), mac: link.mac.clone(), ..LinkState::default() };
        if link.loopback {
            entry.method = "loopback".into();
            if let Err(e) = socket.set_up(link.index) {
                entry.error = Some(format!("setting lo up: {e}"));
            }
            entry.addresses.push("127.0.0.1/8".into());
            lock(&shared).links.push(entry);
            continue;
        }
        // IPv6: router advertisements are taken even when the node forwards (Kubernetes turns that on).
        let _ = fs::write(format!("/proc/sys/net/ipv6/conf/{}/accept_ra", link.name), "2");
        let configured = statics.iter().find(|i| i.name == link.name);
        if let Err(e) = socket.set_up(link.index) {
            entry.error = Some(format!("setting the link up: {e}"));
        }
        match configured {
            Some(interface) if !interface.dhcp => {
                entry.method = "static".into();
                if let Err(e) = apply_static(&mut socket, link, interface) {
                    entry.error = Some(e);
                }
            }
            other => {
                entry.method = "dhcp".into();
                if let Some(interface) = other {
                    if let Err(e) = apply_static(&mut socket, link, interface) {
                        entry.error = Some(e);
                    }
                }
                dhcp_links.push(link.clone());
            }
        }
        lock(&shared).links.push(entry);
    }
    refresh(&mut socket, &shared);
    write_etc(&shared, &links);
    // Time runs on its own: it waits for a lease's NTP servers when none are configured.
    let time_disabled = config.as_ref().is_some_and(|c| c.time_disabled);
    let time_state = Arc::clone(&shared);
    let _ = std::thread::Builder::new().name("time".into()).spawn(move || keep_time(time_state, time_disabled));

    if dhcp_links.is_empty() {
        lock(&shared).settled = true;
        return;
    }
    // One DHCP client per link; the network counts as settled once each has had its first round.
    lock(&shared).first_rounds_left = dhcp_links.len();
    let mut clients = Vec::new();
    for link in dhcp_links {
        let all = links.clone();
        let name = format!("dhcp-{}", link.name);
        let client_shared = Arc::clone(&shared);
        match std::thread::Builder::new().name(name).spawn(move || dhcp_client(link, all, client_shared)) {
            Ok(handle) => clients.push(handle),
            // A client that never runs has had its first round: the others can still settle the network.
            Err(_) => first_round_over(&shared, &mut true),
        }
    }
    for client in clients {
        let _ = client.join();
    }
}

/// Waits (up to LINK_WAIT) for the Ethernet links the config names, or at least one, to appear; then
/// until no new link has appeared for LINK_SETTLE (a driver registers all its NICs at once, but not
/// in the same instant).
fn wait_for_links(socket: &mut Socket, config: Option<&MachineConfig>) -> Vec<Link> {
    let wanted: Vec<String> = config.map(|c| c.interfaces.iter().map(|i| i.name.clone()).collect()).unwrap_or_default();
    let start = Instant::now();
    let mut last_change = Instant::now();
    let mut count = 0;
    loop {
        let links = socket.links().unwrap_or_default();
        let ethernet = links.iter().filter(|l| l.ethernet && !l.loopback).count();
        if ethernet != count {
            count = ethernet;
            last_change = Instant::now();
        }
        let all_there = wanted.iter().all(|w| links.iter().any(|l| &l.name == w));
        let settled = ethernet > 0 && all_there && last_change.elapsed() >= LINK_SETTLE;
        if settled || start.elapsed() > LINK_WAIT {
            return links.into_iter().filter(|l| l.loopback || l.ethernet).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn apply_static(socket: &mut Socket, link: &Link, interface: &Interface) -> Result<(), String> {
    if let Some(mtu) = interface.mtu {
        socket.set_mtu(link.index, mtu).map_err(|e| format!("setting the MTU to {mtu}: {e}"))?;
    }
    for address in &interface.addresses {
        socket.add_address(link.index, *address).map_err(|e| format!("adding {address}: {e}"))?;
    }
    for route in &interface.routes {
        add_route(socket, link.index, route, Origin::Static)?;
    }
    Ok(())
}

fn add_route(socket: &mut Socket, index: i32, route: &Route, origin: Origin) -> Result<(), String> {
    socket
        .add_route(route.network, route.gateway, index, route.metric, origin)
        .map_err(|e| format!("adding the route to {} via {:?}: {e}", route.network, route.gateway))
}

/// Reads the addresses and routes back from the kernel into the state.
fn refresh(socket: &mut Socket, shared: &Shared) {
    // The kernel's tables are read under the lock: each link's DHCP client refreshes after applying
    // its lease, and a snapshot taken before another link's address was added, written after that
    // link's own refresh, would erase its address and route from the state (seen in a bench boot:
    // eth1 with a lease, no address, no default route).
    let mut state = lock(shared);
    let links = socket.links().unwrap_or_default();
    let addresses = socket.addresses().unwrap_or_default();
    let routes = socket.routes().unwrap_or_default();
    let ipv6 = fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for entry in state.links.iter_mut() {
        let Some(link) = links.iter().find(|l| l.name == entry.name) else { continue };
        if entry.method != "loopback" {
            entry.addresses =
                addresses.iter().filter(|(i, _)| *i == link.index).map(|(_, cidr)| cidr.to_string()).collect();
        }
        entry.ipv6 = crate::parse::ipv6_addresses(&ipv6, &entry.name);
    }
    state.default_route = routes.iter().find(|r| r.destination.prefix == 0).and_then(|r| r.gateway);
}

/// The host name to use when neither the config nor a lease gives one: `node-` and the first MAC.
fn fallback_hostname(links: &[Link]) -> String {
    let mac = links.iter().find(|l| !l.loopback).map(|l| l.mac.replace(':', "")).unwrap_or_default();
    if mac.is_empty() {
        "node".to_string()
    } else {
        format!("node-{mac}")
    }
}

/// Stops keeping /run's files (the shutdown unmounts /run; a lease lost as the links go down would
/// otherwise be written to the read-only root underneath).
pub fn stop(shared: &Shared) {
    lock(shared).stopping = true;
}

/// Sets the host name and writes /run/machined/{resolv.conf,hosts} from the state.
fn write_etc(shared: &Shared, links: &[Link]) {
    let (hostname, resolv, hosts) = {
        let mut state = lock(shared);
        if state.stopping {
            return;
        }
        if state.hostname.is_none() {
            state.hostname = Some(fallback_hostname(links));
            state.hostname_source = "mac".into();
        }
        let hostname = state.hostname.clone().unwrap_or_default();
        let first: Option<String> = state
            .links
            .iter()
            .filter(|l| l.method != "loopback")
            .flat_map(|l| l.addresses.iter())
            .next()
            .map(|a| a.split('/').next().unwrap_or_default().to_string());
        (
            hostname.clone(),
            crate::parse::resolv_conf(&state.nameservers, &state.search),
            crate::parse::hosts_file(&hostname, first.as_deref()),
        )
    };
    let host = hostname.as_bytes();
    // SAFETY: host is a live buffer of its length.
    let set = unsafe { libc::sethostname(host.as_ptr() as *const libc::c_char, host.len()) };
    let written = fs::create_dir_all("/run/machined")
        .and_then(|()| sys::write_atomic(RESOLV_CONF, &resolv))
        .and_then(|()| sys::write_atomic(HOSTS, &hosts))
        .and_then(|()| sys::write_atomic("/run/machined/hostname", &format!("{hostname}\n")));
    let mut state = lock(shared);
    match (set, written) {
        (0, Ok(())) => state.etcfiles = true,
        (_, Err(e)) => console::write(format!("machined: network: writing /run/machined files: {e}\n").as_bytes()),
        _ => {
            console::write(format!("machined: network: sethostname: {}\n", std::io::Error::last_os_error()).as_bytes())
        }
    }
}

/// One link's DHCP client for the node's lifetime: acquire, apply, renew at T1, rebind at T2, and
/// start over if the lease runs out.
fn dhcp_client(link: Link, links: Vec<Link>, shared: Shared) {
    let mut first_round = true;
    let Some(mac) = dhcp::mac_bytes(&link.mac) else {
        set_link_error(&shared, &link.name, format!("no usable MAC address {:?}", link.mac));
        first_round_over(&shared, &mut first_round);
        return;
    };
    let mut socket = match Socket::open() {
        Ok(socket) => socket,
        Err(e) => {
            set_link_error(&shared, &link.name, format!("opening rtnetlink: {e}"));
            first_round_over(&shared, &mut first_round);
            return;
        }
    };
    let mut backoff = Duration::from_secs(5);
    loop {
        let lease = match dhcp::acquire(&link.name, mac, DHCP_ROUND) {
            Ok(lease) => lease,
            Err(e) => {
                set_link_error(&shared, &link.name, e);
                first_round_over(&shared, &mut first_round);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(120));
                continue;
            }
        };
        backoff = Duration::from_secs(5);
        let mut lease = lease;
        loop {
            apply_lease(&mut socket, &link, &lease, &shared);
            refresh(&mut socket, &shared);
            write_etc(&shared, &links);
            first_round_over(&shared, &mut first_round);
            let granted = Instant::now();
            // Renew at T1 (unicast), rebind at T2 (broadcast), give up at the end of the lease.
            std::thread::sleep(Duration::from_secs(u64::from(lease.renew_secs)));
            match dhcp::extend(&link.name, mac, &lease, false) {
                Ok(renewed) => {
                    lease = renewed;
                    count_renewal(&shared, &link.name);
                    continue;
                }
                Err(e) => set_link_error(&shared, &link.name, format!("renewing: {e}")),
            }
            let until_rebind = u64::from(lease.rebind_secs.saturating_sub(lease.renew_secs));
            std::thread::sleep(Duration::from_secs(until_rebind));
            match dhcp::extend(&link.name, mac, &lease, true) {
                Ok(renewed) => {
                    lease = renewed;
                    count_renewal(&shared, &link.name);
                    continue;
                }
                Err(e) => set_link_error(&shared, &link.name, format!("rebinding: {e}")),
            }
            let left = Duration::from_secs(u64::from(lease.lease_secs)).saturating_sub(granted.elapsed());
            std::thread::sleep(left);
            let cidr = Cidr { address: lease.address, prefix: lease.prefix };
            let _ = socket.remove_address(link.index, cidr);
            set_link_error(&shared, &link.name, format!("the lease of {cidr} ran out"));
            break;
        }
    }
}

/// Counts this client's first DHCP round (a lease, or an error) once; the last one settles the
/// network.
fn first_round_over(shared: &Shared, first_round: &mut bool) {
    if !std::mem::take(first_round) {
        return;
    }
    let mut state = lock(shared);
    state.first_rounds_left = state.first_rounds_left.saturating_sub(1);
    if state.first_rounds_left == 0 {
        state.settled = true;
    }
}

fn count_renewal(shared: &Shared, name: &str) {
    if let Some(entry) = lock(shared).links.iter_mut().find(|l| l.name == name) {
        entry.renewals += 1;
    }
}

fn set_link_error(shared: &Shared, name: &str, error: String) {
    let mut state = lock(shared);
    if let Some(entry) = state.links.iter_mut().find(|l| l.name == name) {
        entry.error = Some(error);
    }
}

fn apply_lease(socket: &mut Socket, link: &Link, lease: &Lease, shared: &Shared) {
    let cidr = Cidr { address: lease.address, prefix: lease.prefix };
    let mut errors = Vec::new();
    if let Err(e) = socket.add_address(link.index, cidr) {
        errors.push(format!("adding {cidr}: {e}"));
    }
    for router in lease.routers.iter().take(1) {
        let route =
            Route { network: Cidr { address: Ipv4Addr::UNSPECIFIED, prefix: 0 }, gateway: Some(*router), metric: 1024 };
        if let Err(e) = add_route(socket, link.index, &route, Origin::Dhcp) {
            errors.push(e);
        }
    }
    let mut state = lock(shared);
    if state.nameservers.is_empty() {
        state.nameservers = lease.dns.clone();
    }
    if state.search.is_empty() {
        state.search =
            if lease.search.is_empty() { lease.domain.iter().cloned().collect() } else { lease.search.clone() };
    }
    if !matches!(state.hostname_source.as_str(), "config" | "meta-data") {
        if let Some(name) = &lease.hostname {
            state.hostname = Some(name.clone());
            state.hostname_source = "dhcp".into();
        }
    }
    if state.time.servers.is_empty() {
        state.time.servers = lease.ntp.iter().map(|a| a.to_string()).collect();
    }
    if let Some(entry) = state.links.iter_mut().find(|l| l.name == link.name) {
        entry.lease = Some(lease.clone());
        entry.leased_at = Some(Instant::now());
        entry.error = if errors.is_empty() { None } else { Some(errors.join("; ")) };
    }
}

/// The SNTP client: waits for servers (configured, or offered by DHCP), then asks each in turn until
/// one answers, and again every so often.
fn keep_time(shared: Shared, disabled: bool) {
    if disabled {
        lock(&shared).time.reason = Some("disabled by machine.time.disabled".into());
        return;
    }
    let start = Instant::now();
    loop {
        let servers = lock(&shared).time.servers.clone();
        if servers.is_empty() {
            if start.elapsed() < NTP_WAIT_FOR_LEASE {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            lock(&shared).time.reason =
                Some("no NTP servers: none configured (machine.time.servers) and none offered by DHCP".into());
            std::thread::sleep(NTP_RETRY);
            continue;
        }
        let mut errors = Vec::new();
        for server in &servers {
            match sntp::query(server, NTP_TIMEOUT) {
                Ok(time) => match sntp::set_clock(time) {
                    Ok(()) => {
                        let mut state = lock(&shared);
                        state.time.synced = true;
                        state.time.server = Some(server.clone());
                        state.time.reason = None;
                        errors.clear();
                        break;
                    }
                    Err(e) => errors.push(format!("{server}: setting the clock: {e}")),
                },
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            lock(&shared).time.reason = Some(errors.join("; "));
        }
        std::thread::sleep(NTP_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_settles_when_every_client_has_had_its_first_round() {
        let shared: Shared = Arc::new(Mutex::new(State { first_rounds_left: 2, ..State::default() }));
        let (mut eth0, mut eth1) = (true, true);
        first_round_over(&shared, &mut eth0);
        assert!(!lock(&shared).settled, "one of two links configured");
        // Its later rounds (renewals, errors) do not count again.
        first_round_over(&shared, &mut eth0);
        assert!(!lock(&shared).settled, "the same link twice");
        first_round_over(&shared, &mut eth1);
        assert!(lock(&shared).settled);
    }
}

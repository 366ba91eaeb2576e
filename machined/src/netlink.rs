//! rtnetlink, the kernel's interface for links, addresses and routes: the few requests machined makes
//! (list links, set one up, set its MTU, add or remove an IPv4 address, add a route), each acked.
//! Message layout (linux/netlink.h, rtnetlink.h): a 16-byte nlmsghdr, a fixed header per message type,
//! then attributes (rtattr: u16 length, u16 type, payload), everything aligned to 4 bytes.

use crate::config::Cidr;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_REPLACE: u16 = 0x100;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
const ARPHRD_ETHER: u16 = 1;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTPROT_DHCP: u8 = 16;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

/// One network link as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub mac: String,
    pub up: bool,
    pub loopback: bool,
    /// An Ethernet device (not a tunnel, bridge port placeholder or other kind).
    pub ethernet: bool,
    pub mtu: u32,
}

/// An IPv4 route in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    pub destination: Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<i32>,
}

/// Who added a route, as the kernel records it.
#[derive(Clone, Copy, Debug)]
pub enum Origin {
    Static,
    Dhcp,
}

pub struct Socket {
    fd: OwnedFd,
    sequence: u32,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

/// The attributes in `data`, as (type, payload).
pub fn attributes(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((kind, &data[4..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

/// The netlink messages in one datagram, as (type, payload after the nlmsghdr).
pub fn messages(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            break;
        }
        out.push((kind, &data[16..len]));
        data = &data[align(len).min(data.len())..];
    }
    out
}

fn mac_text(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A link from an RTM_NEWLINK payload (ifinfomsg + attributes).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < 16 {
        return None;
    }
    let kind = u16::from_ne_bytes([payload[2], payload[3]]);
    let index = i32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let flags = u32::from_ne_bytes([payload[8], payload[9], payload[10], payload[11]]);
    let mut link = Link {
        index,
        name: String::new(),
        mac: String::new(),
        up: flags & IFF_UP != 0,
        loopback: flags & IFF_LOOPBACK != 0,
        ethernet: kind == ARPHRD_ETHER,
        mtu: 0,
    };
    for (kind, value) in attributes(&payload[16..]) {
        match kind {
            IFLA_IFNAME => link.name = String::from_utf8_lossy(value).trim_end_matches('\0').to_string(),
            IFLA_ADDRESS => link.mac = mac_text(value),
            IFLA_MTU if value.len() == 4 => link.mtu = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]),
            _ => {}
        }
    }
    Some(link)
}

/// An IPv4 route from an RTM_NEWROUTE payload (rtmsg + attributes), main table only.
pub fn parse_route(payload: &[u8]) -> Option<RouteEntry> {
    if payload.len() < 12 || payload[0] != 2 || payload[4] != RT_TABLE_MAIN {
        return None;
    }
    let prefix = payload[1];
    let mut destination = Ipv4Addr::UNSPECIFIED;
    let (mut gateway, mut oif) = (None, None);
    for (kind, value) in attributes(&payload[12..]) {
        match (kind, value.len()) {
            (RTA_DST, 4) => destination = Ipv4Addr::new(value[0], value[1], value[2], value[3]),
            (RTA_GATEWAY, 4) => gateway = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3])),
            (RTA_OIF, 4) => oif = Some(i32::from_ne_bytes([value[0], value[1], value[2], value[3]])),
            _ => {}
        }
    }
    Some(RouteEntry { destination: Cidr { address: destination, prefix }, gateway, oif })
}

/// An IPv4 address from an RTM_NEWADDR payload (ifaddrmsg + attributes): (link index, address).
pub fn parse_address(payload: &[u8]) -> Option<(i32, Cidr)> {
    if payload.len() < 8 || payload[0] != 2 {
        return None;
    }
    let prefix = payload[1];
    let index = i32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let mut address = None;
    for (kind, value) in attributes(&payload[8..]) {
        if (kind == IFA_LOCAL || (kind == IFA_ADDRESS && address.is_none())) && value.len() == 4 {
            address = Some(Ipv4Addr::new(value[0], value[1], value[2], value[3]));
        }
    }
    address.map(|address| (index, Cidr { address, prefix }))
}

/// The bytes of a request: nlmsghdr, then `body`.
pub fn request(kind: u16, flags: u16, sequence: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&index.to_ne_bytes());
    body[8..12].copy_from_slice(&flags.to_ne_bytes());
    body[12..16].copy_from_slice(&change.to_ne_bytes());
    body
}

fn ifaddrmsg(index: i32, prefix: u8, scope: u8) -> Vec<u8> {
    let mut body = vec![2u8, prefix, 0, scope];
    body.extend_from_slice(&(index as u32).to_ne_bytes());
    body
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval { tv_sec: 5, tv_usec: 0 };
        // SAFETY: timeout is a valid timeval of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Socket { fd, sequence: 1 })
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.sequence += 1;
        let message = request(kind, flags, self.sequence, body);
        // SAFETY: message is a live buffer of its length; the kernel is the destination (pid 0).
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr() as *const libc::c_void,
                message.len(),
                0,
                &address as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.sequence)
    }

    fn receive(&mut self) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; 64 * 1024];
        // SAFETY: buffer is writable for its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr() as *mut libc::c_void, buffer.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buffer.truncate(n as usize);
        Ok(buffer)
    }

    /// Sends a request that changes something and waits for its ack.
    fn change(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.send(kind, flags | NLM_F_ACK, body)?;
        loop {
            let data = self.receive()?;
            for (kind, payload) in messages(&data) {
                if kind == NLMSG_ERROR && payload.len() >= 4 {
                    let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    return if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) };
                }
            }
        }
    }

    /// Sends a dump request and collects the payloads of every message of `reply` until done.
    fn dump(&mut self, kind: u16, body: &[u8], reply: u16) -> io::Result<Vec<Vec<u8>>> {
        self.send(kind, NLM_F_DUMP, body)?;
        let mut out = Vec::new();
        loop {
            let data = self.receive()?;
            for (kind, payload) in messages(&data) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR if payload.len() >= 4 => {
                        let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    k if k == reply => out.push(payload.to_vec()),
                    _ => {}
                }
            }
        }
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let payloads = self.dump(RTM_GETLINK, &ifinfomsg(0, 0, 0), RTM_NEWLINK)?;
        Ok(payloads.iter().filter_map(|p| parse_link(p)).collect())
    }

    pub fn set_up(&mut self, index: i32) -> io::Result<()> {
        self.change(RTM_NEWLINK, 0, &ifinfomsg(index, IFF_UP, IFF_UP))
    }

    pub fn set_mtu(&mut self, index: i32, mtu: u32) -> io::Result<()> {
        let mut body = ifinfomsg(index, 0, 0);
        attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        self.change(RTM_NEWLINK, 0, &body)
    }

    /// Adds (or replaces) an IPv4 address with its broadcast address.
    pub fn add_address(&mut self, index: i32, cidr: Cidr) -> io::Result<()> {
        let mut body = ifaddrmsg(index, cidr.prefix, RT_SCOPE_UNIVERSE);
        let broadcast = Ipv4Addr::from(u32::from(cidr.address) | !u32::from(cidr.netmask()));
        attr(&mut body, IFA_LOCAL, &cidr.address.octets());
        attr(&mut body, IFA_ADDRESS, &cidr.address.octets());
        if cidr.prefix < 31 {
            attr(&mut body, IFA_BROADCAST, &broadcast.octets());
        }
        self.change(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }

    pub fn remove_address(&mut self, index: i32, cidr: Cidr) -> io::Result<()> {
        let mut body = ifaddrmsg(index, cidr.prefix, RT_SCOPE_UNIVERSE);
        attr(&mut body, IFA_LOCAL, &cidr.address.octets());
        self.change(RTM_DELADDR, 0, &body)
    }

    pub fn addresses(&mut self) -> io::Result<Vec<(i32, Cidr)>> {
        let payloads = self.dump(RTM_GETADDR, &ifaddrmsg(0, 0, 0), RTM_NEWADDR)?;
        Ok(payloads.iter().filter_map(|p| parse_address(p)).collect())
    }

    /// Adds an IPv4 route (replacing one to the same destination and metric).
    pub fn add_route(
        &mut self,
        destination: Cidr,
        gateway: Option<Ipv4Addr>,
        index: i32,
        metric: u32,
        origin: Origin,
    ) -> io::Result<()> {
        let protocol = match origin {
            Origin::Static => RTPROT_STATIC,
            Origin::Dhcp => RTPROT_DHCP,
        };
        let scope = if gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
        let body_head = [2u8, destination.prefix, 0, 0, RT_TABLE_MAIN, protocol, scope, RTN_UNICAST];
        let mut body = body_head.to_vec();
        body.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
        if destination.prefix > 0 {
            attr(&mut body, RTA_DST, &destination.network().octets());
        }
        if let Some(gateway) = gateway {
            attr(&mut body, RTA_GATEWAY, &gateway.octets());
        }
        attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        attr(&mut body, RTA_PRIORITY, &metric.to_ne_bytes());
        self.change(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }

    pub fn routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let body = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let payloads = self.dump(RTM_GETROUTE, &body, RTM_NEWROUTE)?;
        Ok(payloads.iter().filter_map(|p| parse_route(p)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_attributes_round_trip() {
        let mut body = ifaddrmsg(3, 24, 0);
        attr(&mut body, IFA_LOCAL, &[10, 0, 2, 15]);
        attr(&mut body, IFA_ADDRESS, &[10, 0, 2, 15]);
        let message = request(RTM_NEWADDR, NLM_F_CREATE, 7, &body);
        assert_eq!(message.len() % 4, 0);
        let parsed = messages(&message);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, RTM_NEWADDR);
        let (index, cidr) = parse_address(parsed[0].1).unwrap();
        assert_eq!((index, cidr.to_string()), (3, "10.0.2.15/24".to_string()));
    }

    #[test]
    fn links_and_routes_are_read_from_kernel_messages() {
        let mut link = ifinfomsg(2, IFF_UP, 0);
        link[2..4].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        attr(&mut link, IFLA_IFNAME, b"eth0\0");
        attr(&mut link, IFLA_ADDRESS, &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        attr(&mut link, IFLA_MTU, &1500u32.to_ne_bytes());
        let link = parse_link(&link).unwrap();
        assert_eq!(
            link,
            Link {
                index: 2,
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                up: true,
                loopback: false,
                ethernet: true,
                mtu: 1500
            }
        );

        let mut route = vec![2u8, 0, 0, 0, RT_TABLE_MAIN, RTPROT_DHCP, 0, RTN_UNICAST, 0, 0, 0, 0];
        attr(&mut route, RTA_GATEWAY, &[10, 0, 2, 2]);
        attr(&mut route, RTA_OIF, &2i32.to_ne_bytes());
        let route = parse_route(&route).unwrap();
        assert_eq!(route.destination.prefix, 0);
        assert_eq!(route.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(route.oif, Some(2));
        // Other tables (local, broadcast routes) are not the node's routing.
        assert!(parse_route(&[2u8, 32, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0]).is_none());
        // A truncated attribute ends the list instead of reading past it.
        assert_eq!(attributes(&[8, 0, 1, 0, 1, 2]).len(), 0);
    }
}

//! A DHCPv4 client (RFC 2131/2132): DISCOVER, OFFER, REQUEST, ACK on a UDP socket bound to the link
//! (SO_BINDTODEVICE, broadcast, the broadcast flag set so replies come before the link has an
//! address), then RENEW to the server at T1 and REBIND by broadcast at T2. What a lease carries:
//! the address and mask, routers, DNS servers, domain and search list, host name, NTP servers.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_HOSTNAME: u8 = 12;
const OPT_DOMAIN: u8 = 15;
const OPT_NTP: u8 = 42;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMETERS: u8 = 55;
const OPT_RENEWAL: u8 = 58;
const OPT_REBINDING: u8 = 59;
const OPT_CLIENT_ID: u8 = 61;
const OPT_SEARCH: u8 = 119;
const OPT_END: u8 = 255;

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

/// What the server granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub renew_secs: u32,
    pub rebind_secs: u32,
}

/// A reply's type and lease fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub xid: u32,
    pub lease: Lease,
}

/// A request: DISCOVER, or REQUEST for `requested` from `server` (None when renewing, where the
/// address is in ciaddr instead).
pub fn encode(
    kind: u8,
    xid: u32,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut packet = vec![0u8; 236];
    packet[0] = BOOTREQUEST;
    packet[1] = 1; // Ethernet
    packet[2] = 6;
    packet[4..8].copy_from_slice(&xid.to_be_bytes());
    // The broadcast flag: the link has no address yet to receive a unicast reply on.
    if ciaddr.is_unspecified() {
        packet[10] = 0x80;
    }
    packet[12..16].copy_from_slice(&ciaddr.octets());
    packet[28..34].copy_from_slice(&mac);
    packet.extend_from_slice(&MAGIC);
    packet.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind]);
    packet.extend_from_slice(&[OPT_CLIENT_ID, 7, 1]);
    packet.extend_from_slice(&mac);
    if let Some(address) = requested {
        packet.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
        packet.extend_from_slice(&address.octets());
    }
    if let Some(server) = server {
        packet.extend_from_slice(&[OPT_SERVER_ID, 4]);
        packet.extend_from_slice(&server.octets());
    }
    let wanted = [
        OPT_SUBNET_MASK,
        OPT_ROUTER,
        OPT_DNS,
        OPT_HOSTNAME,
        OPT_DOMAIN,
        OPT_NTP,
        OPT_LEASE_TIME,
        OPT_RENEWAL,
        OPT_REBINDING,
        OPT_SEARCH,
    ];
    packet.extend_from_slice(&[OPT_PARAMETERS, wanted.len() as u8]);
    packet.extend_from_slice(&wanted);
    packet.push(OPT_END);
    // Some servers drop requests shorter than a BOOTP packet (300 bytes).
    if packet.len() < 300 {
        packet.resize(300, 0);
    }
    packet
}

fn addresses(value: &[u8]) -> Vec<Ipv4Addr> {
    value.chunks_exact(4).map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3])).collect()
}

fn text(value: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(value).trim_end_matches('\0').trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Option 119: domain names in DNS wire format, with compression pointers into the option itself.
pub fn decode_search(data: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let mut labels = Vec::new();
        let mut cursor = at;
        let mut jumped = false;
        let mut hops = 0;
        loop {
            let Some(&len) = data.get(cursor) else { return names };
            if len == 0 {
                if !jumped {
                    at = cursor + 1;
                }
                break;
            }
            if len & 0xc0 == 0xc0 {
                let Some(&low) = data.get(cursor + 1) else { return names };
                if !jumped {
                    at = cursor + 2;
                }
                jumped = true;
                hops += 1;
                if hops > 16 {
                    return names;
                }
                cursor = (usize::from(len & 0x3f) << 8) | usize::from(low);
                continue;
            }
            let start = cursor + 1;
            let end = start + usize::from(len);
            let Some(label) = data.get(start..end) else { return names };
            labels.push(String::from_utf8_lossy(label).into_owned());
            cursor = end;
        }
        if !labels.is_empty() {
            names.push(labels.join("."));
        }
    }
    names
}

/// Parses a server's reply to the request `xid` from `mac`; None for anything else.
pub fn decode(packet: &[u8], xid: u32, mac: [u8; 6]) -> Option<Reply> {
    if packet.len() < 240 || packet[0] != BOOTREPLY || packet[236..240] != MAGIC {
        return None;
    }
    let reply_xid = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if reply_xid != xid || packet[28..34] != mac {
        return None;
    }
    let yiaddr = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let mut lease = Lease {
        address: yiaddr,
        prefix: 24,
        server: Ipv4Addr::new(packet[20], packet[21], packet[22], packet[23]),
        routers: Vec::new(),
        dns: Vec::new(),
        domain: None,
        search: Vec::new(),
        hostname: None,
        ntp: Vec::new(),
        lease_secs: 3600,
        renew_secs: 0,
        rebind_secs: 0,
    };
    let mut kind = 0;
    let mut at = 240;
    let mut search = Vec::new();
    while at < packet.len() {
        let code = packet[at];
        if code == OPT_PAD {
            at += 1;
            continue;
        }
        if code == OPT_END {
            break;
        }
        let len = usize::from(*packet.get(at + 1)?);
        let value = packet.get(at + 2..at + 2 + len)?;
        match code {
            OPT_MESSAGE_TYPE if len == 1 => kind = value[0],
            OPT_SUBNET_MASK if len == 4 => {
                lease.prefix = u32::from_be_bytes([value[0], value[1], value[2], value[3]]).count_ones() as u8
            }
            OPT_ROUTER => lease.routers = addresses(value),
            OPT_DNS => lease.dns = addresses(value),
            OPT_HOSTNAME => lease.hostname = text(value),
            OPT_DOMAIN => lease.domain = text(value),
            OPT_NTP => lease.ntp = addresses(value),
            OPT_SERVER_ID if len == 4 => lease.server = Ipv4Addr::new(value[0], value[1], value[2], value[3]),
            OPT_LEASE_TIME if len == 4 => {
                lease.lease_secs = u32::from_be_bytes([value[0], value[1], value[2], value[3]])
            }
            OPT_RENEWAL if len == 4 => lease.renew_secs = u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
            OPT_REBINDING if len == 4 => {
                lease.rebind_secs = u32::from_be_bytes([value[0], value[1], value[2], value[3]])
            }
            // Long option values may be split over several instances (RFC 3396).
            OPT_SEARCH => search.extend_from_slice(value),
            _ => {}
        }
        at += 2 + len;
    }
    if kind == 0 {
        return None;
    }
    lease.search = decode_search(&search);
    // T1 and T2 default to half and seven eighths of the lease.
    if lease.renew_secs == 0 || lease.renew_secs >= lease.lease_secs {
        lease.renew_secs = lease.lease_secs / 2;
    }
    if lease.rebind_secs == 0 || lease.rebind_secs >= lease.lease_secs || lease.rebind_secs < lease.renew_secs {
        lease.rebind_secs = lease.lease_secs / 8 * 7;
    }
    Some(Reply { kind, xid, lease })
}

/// A UDP socket on port 68 of `interface`, broadcasting.
pub fn socket(interface: &str) -> io::Result<UdpSocket> {
    use std::os::unix::io::FromRawFd;
    // SAFETY: plain system call; the descriptor is owned by the UdpSocket below or closed on error.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let socket = unsafe { UdpSocket::from_raw_fd(fd) };
    let set = |option: libc::c_int, value: &[u8]| -> io::Result<()> {
        // SAFETY: value is a live buffer of its length.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                value.as_ptr() as *const libc::c_void,
                value.len() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // One client per link, all on port 68: each socket is bound to its device before the bind, and
    // SO_REUSEADDR lets the next link's socket share the port.
    let one = 1i32.to_ne_bytes();
    set(libc::SO_REUSEADDR, &one)?;
    set(libc::SO_BROADCAST, &one)?;
    set(libc::SO_BINDTODEVICE, interface.as_bytes())?;
    let address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: CLIENT_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: address is a valid sockaddr_in of the given length.
    let ret = unsafe {
        libc::bind(
            fd,
            &address as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Sends `packet` to `to` and waits up to `timeout` for a reply of one of `kinds`.
fn exchange(
    socket: &UdpSocket,
    packet: &[u8],
    to: Ipv4Addr,
    xid: u32,
    mac: [u8; 6],
    kinds: &[u8],
    timeout: Duration,
) -> io::Result<Option<Reply>> {
    socket.send_to(packet, SocketAddrV4::new(to, SERVER_PORT))?;
    let start = Instant::now();
    let mut buffer = [0u8; 1500];
    while start.elapsed() < timeout {
        socket.set_read_timeout(Some((timeout - start.elapsed()).max(Duration::from_millis(10))))?;
        match socket.recv_from(&mut buffer) {
            Ok((n, _)) => {
                if let Some(reply) = decode(&buffer[..n], xid, mac) {
                    if kinds.contains(&reply.kind) {
                        return Ok(Some(reply));
                    }
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// One full exchange: DISCOVER (retried with backoff until `deadline`), then REQUEST. Returns the ACKed
/// lease, or why there is none.
pub fn acquire(interface: &str, mac: [u8; 6], deadline: Duration) -> Result<Lease, String> {
    let socket = socket(interface).map_err(|e| format!("opening a DHCP socket on {interface}: {e}"))?;
    let start = Instant::now();
    let mut wait = Duration::from_millis(500);
    while start.elapsed() < deadline {
        let xid = random_xid();
        let discover = encode(DISCOVER, xid, mac, Ipv4Addr::UNSPECIFIED, None, None);
        let offer = exchange(&socket, &discover, Ipv4Addr::BROADCAST, xid, mac, &[OFFER], wait)
            .map_err(|e| format!("DHCPDISCOVER on {interface}: {e}"))?;
        if let Some(offer) = offer {
            let request =
                encode(REQUEST, xid, mac, Ipv4Addr::UNSPECIFIED, Some(offer.lease.address), Some(offer.lease.server));
            let ack = exchange(&socket, &request, Ipv4Addr::BROADCAST, xid, mac, &[ACK, NAK], Duration::from_secs(2))
                .map_err(|e| format!("DHCPREQUEST on {interface}: {e}"))?;
            match ack {
                Some(reply) if reply.kind == ACK => return Ok(reply.lease),
                Some(_) => {} // NAK: start over
                None => {}
            }
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
    Err(format!("no DHCP offer on {interface} within {} s", deadline.as_secs()))
}

/// RENEW (unicast to the server, at T1) or REBIND (broadcast, at T2) of `lease`.
pub fn extend(interface: &str, mac: [u8; 6], lease: &Lease, rebind: bool) -> Result<Lease, String> {
    let socket = socket(interface).map_err(|e| format!("opening a DHCP socket on {interface}: {e}"))?;
    let xid = random_xid();
    let request = encode(REQUEST, xid, mac, lease.address, None, None);
    let to = if rebind { Ipv4Addr::BROADCAST } else { lease.server };
    match exchange(&socket, &request, to, xid, mac, &[ACK, NAK], Duration::from_secs(4)) {
        Ok(Some(reply)) if reply.kind == ACK => Ok(reply.lease),
        Ok(Some(_)) => Err(format!("the server refused to extend the lease of {}", lease.address)),
        Ok(None) => Err(format!("no answer from {to} extending the lease of {}", lease.address)),
        Err(e) => Err(format!("extending the lease on {interface}: {e}")),
    }
}

fn random_xid() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: bytes is writable for its length.
    unsafe { libc::getrandom(bytes.as_mut_ptr() as *mut libc::c_void, bytes.len(), 0) };
    u32::from_ne_bytes(bytes)
}

/// A MAC address from its text form.
pub fn mac_bytes(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    parts.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A reply as a server would build it: the request's header turned around, with options.
    fn reply(kind: u8, xid: u32, options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut packet = vec![0u8; 236];
        packet[0] = BOOTREPLY;
        packet[4..8].copy_from_slice(&xid.to_be_bytes());
        packet[16..20].copy_from_slice(&[10, 0, 2, 15]);
        packet[20..24].copy_from_slice(&[10, 0, 2, 2]);
        packet[28..34].copy_from_slice(&MAC);
        packet.extend_from_slice(&MAGIC);
        packet.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind]);
        for (code, value) in options {
            packet.push(*code);
            packet.push(value.len() as u8);
            packet.extend_from_slice(value);
        }
        packet.push(OPT_END);
        packet
    }

    #[test]
    fn requests_carry_the_fields_a_server_needs() {
        let packet = encode(
            REQUEST,
            0xdeadbeef,
            MAC,
            Ipv4Addr::UNSPECIFIED,
            Some(Ipv4Addr::new(10, 0, 2, 15)),
            Some(Ipv4Addr::new(10, 0, 2, 2)),
        );
        assert!(packet.len() >= 300);
        assert_eq!((packet[0], packet[1], packet[2]), (BOOTREQUEST, 1, 6));
        assert_eq!(&packet[4..8], &0xdeadbeefu32.to_be_bytes());
        assert_eq!(packet[10], 0x80, "broadcast flag before the link has an address");
        assert_eq!(&packet[28..34], &MAC);
        assert_eq!(&packet[236..240], &MAGIC);
        let options = &packet[240..];
        assert_eq!(&options[..3], &[OPT_MESSAGE_TYPE, 1, REQUEST]);
        assert!(options.windows(6).any(|w| w == [OPT_REQUESTED_IP, 4, 10, 0, 2, 15]));
        assert!(options.windows(6).any(|w| w == [OPT_SERVER_ID, 4, 10, 0, 2, 2]));
        let renew = encode(REQUEST, 1, MAC, Ipv4Addr::new(10, 0, 2, 15), None, None);
        assert_eq!(renew[10], 0, "a renewal has an address to be answered on");
        assert_eq!(&renew[12..16], &[10, 0, 2, 15]);
    }

    #[test]
    fn a_full_lease_is_read_and_timers_default() {
        // "example.org" and "corp.example.org" with a compression pointer back to the first name's "example".
        let search: &[u8] =
            &[7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'o', b'r', b'g', 0, 4, b'c', b'o', b'r', b'p', 0xc0, 0];
        let packet = reply(
            ACK,
            42,
            &[
                (OPT_SUBNET_MASK, &[255, 255, 255, 0]),
                (OPT_ROUTER, &[10, 0, 2, 2]),
                (OPT_DNS, &[10, 0, 2, 3, 10, 0, 2, 4]),
                (OPT_HOSTNAME, b"node-7"),
                (OPT_DOMAIN, b"example.org"),
                (OPT_NTP, &[10, 0, 2, 5]),
                (OPT_LEASE_TIME, &86400u32.to_be_bytes()),
                (OPT_SEARCH, search),
            ],
        );
        let reply = decode(&packet, 42, MAC).unwrap();
        assert_eq!(reply.kind, ACK);
        let lease = reply.lease;
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.routers, [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(lease.dns.len(), 2);
        assert_eq!(lease.hostname.as_deref(), Some("node-7"));
        assert_eq!(lease.ntp, [Ipv4Addr::new(10, 0, 2, 5)]);
        assert_eq!(lease.search, ["example.org", "corp.example.org"]);
        assert_eq!((lease.lease_secs, lease.renew_secs, lease.rebind_secs), (86400, 43200, 75600));
    }

    #[test]
    fn replies_to_others_and_garbage_are_ignored() {
        // What QEMU's slirp offers under restrict=on: no router, no DNS.
        let bare =
            reply(OFFER, 9, &[(OPT_SUBNET_MASK, &[255, 255, 255, 0]), (OPT_LEASE_TIME, &86400u32.to_be_bytes())]);
        let offer = decode(&bare, 9, MAC).unwrap();
        assert!(offer.lease.routers.is_empty() && offer.lease.dns.is_empty());
        assert!(decode(&bare, 10, MAC).is_none(), "another transaction");
        assert!(decode(&bare, 9, [0; 6]).is_none(), "another client");
        assert!(decode(&bare[..200], 9, MAC).is_none());
        let mut truncated = bare.clone();
        truncated.truncate(244);
        truncated.extend_from_slice(&[OPT_DNS, 200]);
        assert!(decode(&truncated, 9, MAC).is_none() || decode(&truncated, 9, MAC).unwrap().lease.dns.is_empty());
        assert_eq!(mac_bytes("52:54:00:12:34:56"), Some(MAC));
        assert_eq!(mac_bytes("52:54"), None);
    }
}

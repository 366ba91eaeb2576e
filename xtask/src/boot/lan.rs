//! The test site's LAN for boot-test's second NIC. QEMU's user networking with `restrict=on` (the
//! first NIC, which carries the API forward) offers an address but, restricted, no router, DNS or NTP
//! server, so a node could never show a whole lease or sync its clock there. This LAN is what a site's
//! network gives a node instead, kept on the host's loopback: QEMU's `-netdev socket,udp=` hands each
//! Ethernet frame of the second NIC to a UDP socket on 127.0.0.1, and this module answers them as
//! the site's router would: ARP for its address, DHCPv4 (RFC 2131: offer, ack, nak, renewals, with
//! router, DNS servers, domain and search list, host name, NTP server and a short lease so that
//! renewal happens during the test) and SNTP (RFC 4330, the host's clock). Nothing is routed: a frame
//! for any other address is counted and dropped. What it saw is kept in [`LanLog`] as evidence.

use anyhow::{Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The LAN's fixed plan.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 1);
pub const PREFIX: u8 = 24;
/// The first address the DHCP server leases (then .16, .17, … by MAC).
const POOL_START: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 15);
pub const DOMAIN: &str = "cluster.test";
const ROUTER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x03, 0x01];
/// Short, so that the node renews (at half of it) while boot-test watches.
pub const LEASE_SECS: u32 = 20;

/// What the LAN's DHCP server offers beyond the address.
#[derive(Clone, Debug)]
pub struct Offer {
    /// Option 12; None offers no host name.
    pub hostname: Option<String>,
}

/// What the LAN saw, for the verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LanLog {
    pub frames: u64,
    pub discovers: u32,
    /// REQUESTs answered with an ACK while selecting (from DISCOVER) or rebooting.
    pub acks: u32,
    /// REQUESTs from a bound client extending its lease (ciaddr set).
    pub renewals: u32,
    pub naks: u32,
    pub arp_replies: u32,
    pub ntp_replies: u32,
    /// MACs (as text) that asked for a lease.
    pub dhcp_clients: Vec<String>,
    /// IPv4 packets to addresses other than the router's, dropped.
    pub dropped: u64,
}

/// The running LAN: a thread serving one QEMU NIC until dropped.
pub struct Lan {
    /// The port QEMU's NIC listens on (`localaddr=`); the LAN sends there.
    pub qemu_port: u16,
    /// The port the LAN listens on (`udp=`); QEMU sends there.
    pub lan_port: u16,
    log: Arc<Mutex<LanLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Lan {
    pub fn start(offer: Offer) -> Result<Lan> {
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding the test LAN's socket on 127.0.0.1")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let lan_port = socket.local_addr()?.port();
        // A free port for QEMU's end: taken and released at once (QEMU binds it right after).
        let qemu_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = Arc::new(Mutex::new(LanLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_log, thread_stop) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("test-lan".into())
            .spawn(move || serve(&socket, qemu_port, &offer, &thread_log, &thread_stop))
            .context("starting the test LAN's thread")?;
        Ok(Lan { qemu_port, lan_port, log, stop, thread: Some(thread) })
    }

    /// QEMU's `-netdev` for the NIC on this LAN.
    pub fn netdev(&self, id: &str) -> String {
        format!("socket,id={id},udp=127.0.0.1:{},localaddr=127.0.0.1:{}", self.lan_port, self.qemu_port)
    }

    pub fn log(&self) -> LanLog {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, qemu_port: u16, offer: &Offer, log: &Mutex<LanLog>, stop: &AtomicBool) {
    let mut leases: Vec<[u8; 6]> = Vec::new();
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, _)) = socket.recv_from(&mut buffer) else { continue };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        log.frames += 1;
        if let Some(reply) = answer(&buffer[..n], offer, &mut leases, &mut log) {
            let _ = socket.send_to(&reply, ("127.0.0.1", qemu_port));
        }
    }
}

/// The reply frame to one Ethernet frame from the node, if it calls for one.
pub fn answer(frame: &[u8], offer: &Offer, leases: &mut Vec<[u8; 6]>, log: &mut LanLog) -> Option<Vec<u8>> {
    if frame.len() < 14 {
        return None;
    }
    let src_mac: [u8; 6] = frame[6..12].try_into().ok()?;
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0806 => arp_reply(&frame[14..], src_mac, log),
        0x0800 => {
            let ip = &frame[14..];
            if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
                return None;
            }
            let header = usize::from(ip[0] & 0x0f) * 4;
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let udp = ip.get(header..)?;
            if udp.len() < 8 {
                return None;
            }
            let (src_port, dst_port) = (u16::from_be_bytes([udp[0], udp[1]]), u16::from_be_bytes([udp[2], udp[3]]));
            let payload = &udp[8..];
            match dst_port {
                67 => dhcp_reply(payload, offer, leases, log),
                123 if dst == ROUTER => {
                    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
                    let reply = ntp_reply(payload)?;
                    log.ntp_replies += 1;
                    Some(udp_frame(src_mac, src, 123, src_port, &reply))
                }
                _ => {
                    log.dropped += 1;
                    None
                }
            }
        }
        _ => None,
    }
}

fn arp_reply(arp: &[u8], src_mac: [u8; 6], log: &mut LanLog) -> Option<Vec<u8>> {
    // Ethernet/IPv4 request: htype 1, ptype 0x0800, hlen 6, plen 4, op 1.
    if arp.len() < 28 || arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || arp[24..28] != ROUTER.octets() {
        return None;
    }
    log.arp_replies += 1;
    let mut frame = ethernet(src_mac, 0x0806);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    frame.extend_from_slice(&ROUTER_MAC);
    frame.extend_from_slice(&ROUTER.octets());
    frame.extend_from_slice(&arp[8..18]); // the asker's MAC and address
    Some(frame)
}

const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Options of a DHCP message as (code, value).
fn dhcp_options(options: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < options.len() {
        match options[i] {
            0 => i += 1,
            255 => break,
            code => {
                let Some(&len) = options.get(i + 1) else { break };
                let Some(value) = options.get(i + 2..i + 2 + usize::from(len)) else { break };
                out.push((code, value));
                i += 2 + usize::from(len);
            }
        }
    }
    out
}

fn dhcp_reply(message: &[u8], offer: &Offer, leases: &mut Vec<[u8; 6]>, log: &mut LanLog) -> Option<Vec<u8>> {
    if message.len() < 240 || message[0] != 1 || message[236..240] != DHCP_MAGIC {
        return None;
    }
    let mac: [u8; 6] = message[28..34].try_into().ok()?;
    let ciaddr = Ipv4Addr::new(message[12], message[13], message[14], message[15]);
    let options = dhcp_options(&message[240..]);
    let find = |code: u8| options.iter().find(|(c, _)| *c == code).map(|(_, v)| *v);
    let kind = find(53)?.first().copied()?;
    let index = match leases.iter().position(|m| *m == mac) {
        Some(i) => i,
        None => {
            leases.push(mac);
            leases.len() - 1
        }
    };
    let address = Ipv4Addr::from(u32::from(POOL_START) + index as u32);
    let text_mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    if !log.dhcp_clients.contains(&text_mac) {
        log.dhcp_clients.push(text_mac);
    }
    let reply_kind = match kind {
        1 => {
            log.discovers += 1;
            2 // OFFER
        }
        3 => {
            let requested = find(50).filter(|v| v.len() == 4).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
            let asked = if ciaddr.is_unspecified() { requested } else { Some(ciaddr) };
            if asked != Some(address) {
                log.naks += 1;
                6 // NAK
            } else if ciaddr.is_unspecified() {
                log.acks += 1;
                5
            } else {
                log.renewals += 1;
                5
            }
        }
        _ => return None,
    };
    let mut reply = vec![0u8; 236];
    reply[0] = 2;
    reply[1] = 1;
    reply[2] = 6;
    reply[4..8].copy_from_slice(&message[4..8]); // xid
    reply[10..12].copy_from_slice(&message[10..12]); // flags
    reply[12..16].copy_from_slice(&ciaddr.octets());
    if reply_kind != 6 {
        reply[16..20].copy_from_slice(&address.octets());
    }
    reply[20..24].copy_from_slice(&ROUTER.octets());
    reply[28..44].copy_from_slice(&message[28..44]);
    reply.extend_from_slice(&DHCP_MAGIC);
    let mut option = |code: u8, value: &[u8]| {
        reply.push(code);
        reply.push(value.len() as u8);
        reply.extend_from_slice(value);
    };
    option(53, &[reply_kind]);
    option(54, &ROUTER.octets());
    if reply_kind != 6 {
        let mask = u32::MAX << (32 - u32::from(PREFIX));
        option(1, &mask.to_be_bytes());
        option(3, &ROUTER.octets());
        option(6, &ROUTER.octets());
        option(15, DOMAIN.as_bytes());
        option(119, &dns_name(DOMAIN));
        option(42, &ROUTER.octets());
        option(51, &LEASE_SECS.to_be_bytes());
        option(58, &(LEASE_SECS / 2).to_be_bytes());
        option(59, &(LEASE_SECS * 7 / 8).to_be_bytes());
        if let Some(name) = &offer.hostname {
            option(12, name.as_bytes());
        }
    }
    reply.push(255);
    reply.resize(reply.len().max(300), 0);
    // A client with an address gets its reply there; one without, on the broadcast address.
    let (dst_mac, dst) =
        if ciaddr.is_unspecified() || reply_kind == 6 { ([0xff; 6], Ipv4Addr::BROADCAST) } else { (mac, ciaddr) };
    Some(udp_frame(dst_mac, dst, 67, 68, &reply))
}

/// A domain name in DNS wire format (option 119 without compression).
fn dns_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// NTP's seconds are counted from 1900.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

fn ntp_timestamp(now: Duration) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&((now.as_secs() + NTP_UNIX_OFFSET) as u32).to_be_bytes());
    out[4..].copy_from_slice(&(((u64::from(now.subsec_nanos()) << 32) / 1_000_000_000) as u32).to_be_bytes());
    out
}

/// A stratum-1 server's answer with the host's clock.
fn ntp_reply(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 48 || request[0] & 0b111 != 3 {
        return None;
    }
    let now = ntp_timestamp(SystemTime::now().duration_since(UNIX_EPOCH).ok()?);
    let mut reply = vec![0u8; 48];
    reply[0] = 0b00_100_100; // leap 0, version 4, mode 4 (server)
    reply[1] = 1; // stratum 1
    reply[2] = request[2];
    reply[3] = 0xec; // precision 2^-20 s
    reply[12..16].copy_from_slice(b"LOCL");
    reply[16..24].copy_from_slice(&now);
    reply[24..32].copy_from_slice(&request[40..48]); // origin: the client's transmit time
    reply[32..40].copy_from_slice(&now);
    reply[40..48].copy_from_slice(&now);
    Some(reply)
}

fn ethernet(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1514);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&ROUTER_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// An Ethernet frame holding an IPv4 UDP datagram from the router (UDP checksum 0: none, as IPv4
/// allows).
fn udp_frame(dst_mac: [u8; 6], dst: Ipv4Addr, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, 0x0800);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&ROUTER.octets());
    ip.extend_from_slice(&dst.octets());
    let checksum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

    /// A DHCP request frame as a client without an address sends it.
    fn dhcp_frame(kind: u8, ciaddr: Ipv4Addr, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let mut message = vec![0u8; 236];
        message[0] = 1;
        message[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        message[12..16].copy_from_slice(&ciaddr.octets());
        message[28..34].copy_from_slice(&NODE_MAC);
        message.extend_from_slice(&DHCP_MAGIC);
        message.extend_from_slice(&[53, 1, kind]);
        if let Some(r) = requested {
            message.extend_from_slice(&[50, 4]);
            message.extend_from_slice(&r.octets());
        }
        message.push(255);
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&NODE_MAC);
        frame.extend_from_slice(&[8, 0]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255];
        ip[2..4].copy_from_slice(&((28 + message.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&[0, 68, 0, 67, 0, 0, 0, 0]);
        frame.extend_from_slice(&message);
        frame
    }

    fn reply_options(frame: &[u8]) -> (Ipv4Addr, Vec<(u8, Vec<u8>)>) {
        let message = &frame[14 + 20 + 8..];
        let yiaddr = Ipv4Addr::new(message[16], message[17], message[18], message[19]);
        (yiaddr, dhcp_options(&message[240..]).into_iter().map(|(c, v)| (c, v.to_vec())).collect())
    }

    #[test]
    fn dhcp_offers_acks_renews_and_naks_with_the_whole_lease() {
        let offer = Offer { hostname: Some("worker-1".into()) };
        let (mut leases, mut log) = (Vec::new(), LanLog::default());
        let frame = answer(&dhcp_frame(1, Ipv4Addr::UNSPECIFIED, None), &offer, &mut leases, &mut log).unwrap();
        assert_eq!(frame[..6], [0xff; 6], "a client without an address hears a broadcast");
        assert_eq!(ip_checksum(&frame[14..34]), 0, "the IP header checksum holds");
        let (yiaddr, options) = reply_options(&frame);
        assert_eq!(yiaddr, POOL_START);
        let get = |code: u8| options.iter().find(|(c, _)| *c == code).map(|(_, v)| v.clone());
        assert_eq!(get(53).unwrap(), [2]);
        assert_eq!(get(3).unwrap(), ROUTER.octets());
        assert_eq!(get(6).unwrap(), ROUTER.octets());
        assert_eq!(get(42).unwrap(), ROUTER.octets());
        assert_eq!(get(12).unwrap(), b"worker-1");
        assert_eq!(get(119).unwrap(), b"\x07cluster\x04test\x00");
        assert_eq!(get(51).unwrap(), LEASE_SECS.to_be_bytes());

        let ack = answer(&dhcp_frame(3, Ipv4Addr::UNSPECIFIED, Some(POOL_START)), &offer, &mut leases, &mut log);
        assert_eq!(reply_options(&ack.unwrap()).1[0], (53, vec![5]));
        let renewal = answer(&dhcp_frame(3, POOL_START, None), &offer, &mut leases, &mut log).unwrap();
        assert_eq!(renewal[..6], NODE_MAC, "a bound client gets its renewal unicast");
        let wrong = answer(
            &dhcp_frame(3, Ipv4Addr::UNSPECIFIED, Some(Ipv4Addr::new(10, 0, 3, 99))),
            &offer,
            &mut leases,
            &mut log,
        );
        assert_eq!(reply_options(&wrong.unwrap()).1[0], (53, vec![6]));
        assert_eq!((log.discovers, log.acks, log.renewals, log.naks), (1, 1, 1, 1));
        assert_eq!(log.dhcp_clients, ["52:54:00:12:34:57"]);
    }

    #[test]
    fn arp_for_the_router_and_ntp_are_answered_and_nothing_else() {
        let offer = Offer { hostname: None };
        let (mut leases, mut log) = (Vec::new(), LanLog::default());
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&NODE_MAC);
        arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&NODE_MAC);
        arp.extend_from_slice(&POOL_START.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&ROUTER.octets());
        let reply = answer(&arp, &offer, &mut leases, &mut log).unwrap();
        assert_eq!(reply[14 + 8..14 + 14], ROUTER_MAC, "the router's MAC answers");
        let mut other = arp.clone();
        other[38..42].copy_from_slice(&[10, 0, 3, 7]);
        assert!(answer(&other, &offer, &mut leases, &mut log).is_none(), "only the router's address is answered");

        let mut ntp = vec![0u8; 48];
        ntp[0] = 0x23;
        ntp[40..48].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let query = udp_frame(ROUTER_MAC, ROUTER, 40000, 123, &ntp);
        let mut query = query.clone();
        query[6..12].copy_from_slice(&NODE_MAC);
        query[14 + 12..14 + 16].copy_from_slice(&POOL_START.octets());
        let reply = answer(&query, &offer, &mut leases, &mut log).unwrap();
        let ntp_reply = &reply[14 + 28..];
        assert_eq!(ntp_reply[0] & 0b111, 4);
        assert_eq!(ntp_reply[24..32], [1, 2, 3, 4, 5, 6, 7, 8], "the origin echoes the request");
        assert_eq!(u16::from_be_bytes([reply[14 + 22], reply[14 + 23]]), 40000);
        let mut elsewhere = query.clone();
        elsewhere[14 + 16..14 + 20].copy_from_slice(&[1, 1, 1, 1]);
        assert!(answer(&elsewhere, &offer, &mut leases, &mut log).is_none());
        assert_eq!((log.arp_replies, log.ntp_replies, log.dropped), (1, 1, 1));
    }
}

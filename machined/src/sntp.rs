//! An SNTP client (RFC 4330): one 48-byte request to each server in turn, the first valid answer sets
//! the clock. The node has no RTC it trusts and no time until then; services that depend on time
//! wait for it, and the status says whether time is synced or why not.

use std::io;
use std::net::{ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900-01-01 (NTP's era 0) to 1970-01-01.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
const NTP_PORT: u16 = 123;

/// A client request: leap 0, version 4, mode 3 (client), our transmit time in the transmit field.
pub fn request(now: Duration) -> [u8; 48] {
    let mut packet = [0u8; 48];
    packet[0] = 0b00_100_011;
    packet[40..48].copy_from_slice(&timestamp(now));
    packet
}

fn timestamp(since_unix: Duration) -> [u8; 8] {
    let seconds = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&(seconds as u32).to_be_bytes());
    out[4..].copy_from_slice(&(fraction as u32).to_be_bytes());
    out
}

fn read_timestamp(bytes: &[u8]) -> Duration {
    let seconds = u64::from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    let fraction = u64::from(u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]));
    Duration::new(seconds.saturating_sub(NTP_UNIX_OFFSET), ((fraction * 1_000_000_000) >> 32) as u32)
}

/// The server's time from a reply to `sent` (our request), or why the reply is not one.
pub fn server_time(reply: &[u8], sent: &[u8; 48]) -> Result<Duration, String> {
    if reply.len() < 48 {
        return Err("short reply".into());
    }
    let mode = reply[0] & 0b111;
    let leap = reply[0] >> 6;
    if mode != 4 {
        return Err(format!("mode {mode} is not a server reply"));
    }
    if leap == 3 || reply[1] == 0 {
        return Err("the server is not synchronized (stratum 0 or leap alarm)".into());
    }
    // The origin timestamp echoes our transmit time: anything else is a stray or forged packet.
    if reply[24..32] != sent[40..48] {
        return Err("the reply does not answer this request".into());
    }
    Ok(read_timestamp(&reply[40..48]))
}

/// Asks `server` (a name or address, port 123 unless given) once, waiting up to `timeout`.
pub fn query(server: &str, timeout: Duration) -> Result<Duration, String> {
    let target = if server.contains(':') { server.to_string() } else { format!("{server}:{NTP_PORT}") };
    let address = target
        .to_socket_addrs()
        .map_err(|e| format!("resolving {server}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{server} has no IPv4 address"))?;
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("opening a socket: {e}"))?;
    socket.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let sent = request(now);
    socket.send_to(&sent, address).map_err(|e| format!("sending to {address}: {e}"))?;
    let mut buffer = [0u8; 512];
    loop {
        match socket.recv_from(&mut buffer) {
            Ok((n, from)) if from == address => return server_time(&buffer[..n], &sent),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(format!("no answer from {address} within {} s", timeout.as_secs()))
            }
            Err(e) => return Err(format!("receiving from {address}: {e}")),
        }
    }
}

/// Sets the system clock.
pub fn set_clock(time: Duration) -> io::Result<()> {
    let spec = libc::timespec { tv_sec: time.as_secs() as libc::time_t, tv_nsec: time.subsec_nanos() as _ };
    // SAFETY: spec is a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &spec) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let now = Duration::new(1_764_547_200, 250_000_000);
        let sent = request(now);
        assert_eq!(sent[0], 0x23, "version 4, client");
        let mut reply = [0u8; 48];
        reply[0] = 0b00_100_100; // version 4, server
        reply[1] = 2; // stratum
        reply[24..32].copy_from_slice(&sent[40..48]);
        reply[40..48].copy_from_slice(&timestamp(Duration::new(1_764_547_300, 500_000_000)));
        let time = server_time(&reply, &sent).unwrap();
        assert_eq!(time.as_secs(), 1_764_547_300);
        assert!((time.subsec_millis() as i64 - 500).abs() <= 1);

        let mut stray = reply;
        stray[24] ^= 1;
        assert!(server_time(&stray, &sent).unwrap_err().contains("does not answer"));
        let mut unsynced = reply;
        unsynced[1] = 0;
        assert!(server_time(&unsynced, &sent).is_err());
        let mut client = reply;
        client[0] = 0x23;
        assert!(server_time(&client, &sent).unwrap_err().contains("mode 3"));
        assert!(server_time(&reply[..47], &sent).is_err());
    }
}

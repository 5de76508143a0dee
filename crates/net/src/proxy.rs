//! The PROXY protocol (HAProxy's spec, versions 1 and 2): a load balancer in front of sealmail
//! sends the real client address before anything else. It is read only from configured proxy
//! addresses (anyone else could claim any address), only up to the header (the bytes after it
//! belong to SMTP, IMAP or TLS), and within the TLS handshake timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest version 1 header, CRLF included (spec section 2.1).
const V1_MAX: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The most address data a version 2 header may carry that we read (TLVs included).
const V2_MAX_PAYLOAD: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("I/O error reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a PROXY header from `tcp`; returns the client's address, or `None` when the header
/// says the connection is the proxy's own (v1 UNKNOWN, v2 LOCAL or an unsupported family).
pub async fn read_header(tcp: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    let mut start = [0u8; 5];
    tcp.read_exact(&mut start).await?;
    if &start == b"PROXY" {
        let mut line = start.to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(ProxyError::Malformed("version 1 line too long"));
            }
            line.push(tcp.read_u8().await?);
        }
        return parse_v1(&line);
    }
    if start == V2_SIGNATURE[..5] {
        let mut rest = [0u8; 11];
        tcp.read_exact(&mut rest).await?;
        let mut header = start.to_vec();
        header.extend_from_slice(&rest);
        let length = u16::from_be_bytes([header[14], header[15]]) as usize;
        if length > V2_MAX_PAYLOAD {
            return Err(ProxyError::Malformed("version 2 payload too long"));
        }
        let mut payload = vec![0u8; length];
        tcp.read_exact(&mut payload).await?;
        return parse_v2(&header, &payload);
    }
    Err(ProxyError::Missing)
}

/// "PROXY TCP4 src dst sport dport\r\n", "PROXY TCP6 ...", or "PROXY UNKNOWN ...\r\n".
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let text = text
        .strip_suffix("\r\n")
        .ok_or(ProxyError::Malformed("no CRLF"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            source,
            _destination,
            source_port,
            _destination_port,
        ] => {
            let ip: IpAddr = source
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source address"))?;
            let port: u16 = source_port
                .parse()
                .map_err(|_| ProxyError::Malformed("bad source port"))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyError::Malformed("address does not match the family"));
            }
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyError::Malformed("expected PROXY TCP4|TCP6|UNKNOWN")),
    }
}

/// A version 2 header (16 bytes) and its payload.
pub fn parse_v2(header: &[u8], payload: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if header.len() != 16 || header[..12] != V2_SIGNATURE {
        return Err(ProxyError::Malformed("bad version 2 signature"));
    }
    let version_command = header[12];
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("unsupported version"));
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL: the proxy's own connection (health checks)
        1 => {}
        _ => return Err(ProxyError::Malformed("unknown command")),
    }
    match header[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a = payload
                .get(..12)
                .ok_or(ProxyError::Malformed("short IPv4 addresses"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        0x21 => {
            let a = payload
                .get(..36)
                .ok_or(ProxyError::Malformed("short IPv6 addresses"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(ip),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        // UNSPEC, UDP and UNIX: keep the connection's own address (spec section 2.2).
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_headers() {
        let ok = parse_v1(b"PROXY TCP4 192.0.2.9 198.51.100.1 5000 25\r\n").map_err(|e| e.to_string());
        assert_eq!(ok, Ok(Some(SocketAddr::from(([192, 0, 2, 9], 5000)))));
        let v6 = parse_v1(b"PROXY TCP6 2001:db8::9 2001:db8::1 5000 25\r\n").map_err(|e| e.to_string());
        assert!(matches!(v6, Ok(Some(a)) if a.ip().to_string() == "2001:db8::9"));
        assert!(matches!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(None)));
        for bad in [
            &b"PROXY TCP4 192.0.2.9 198.51.100.1 5000\r\n"[..],
            b"PROXY TCP4 2001:db8::9 2001:db8::1 5000 25\r\n",
            b"PROXY TCP4 999.0.2.9 198.51.100.1 5000 25\r\n",
            b"PROXY TCP4 192.0.2.9 198.51.100.1 70000 25\r\n",
            b"PROXY TCP4 192.0.2.9 198.51.100.1 5000 25\n",
            b"PROXY UDP4 192.0.2.9 198.51.100.1 5000 25\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn version_2_headers() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 12]);
        let payload = [198, 51, 100, 7, 192, 0, 2, 1, 0x13, 0x88, 0, 25];
        let ok = parse_v2(&header, &payload).map_err(|e| e.to_string());
        assert_eq!(ok, Ok(Some(SocketAddr::from(([198, 51, 100, 7], 5000)))));
        header[12] = 0x20; // LOCAL
        assert!(matches!(parse_v2(&header, &payload), Ok(None)));
        header[12] = 0x31; // version 3
        assert!(parse_v2(&header, &payload).is_err());
        header[12] = 0x21;
        assert!(
            parse_v2(&header, &payload[..8]).is_err(),
            "short payload accepted"
        );
    }
}

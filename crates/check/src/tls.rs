//! Raw TLS ClientHellos for the versions rustls cannot speak (TLS 1.0 and 1.1): enough of a
//! handshake to see whether a server answers with a ServerHello at that version. Also used by
//! the tests that check our own listeners refuse them (`sealmail-testkit`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// TLS record and handshake versions: 0x0301 = TLS 1.0, 0x0302 = 1.1, 0x0303 = 1.2.
pub const TLS1_0: u16 = 0x0301;
pub const TLS1_1: u16 = 0x0302;
pub const TLS1_2: u16 = 0x0303;

/// Suites a TLS 1.0/1.1 server would pick from: ECDHE, DHE and RSA key exchange with AES-CBC,
/// 3DES and RC4, as old clients offered them (the probe never finishes a handshake).
pub const LEGACY_SUITES: &[u16] = &[
    0xc013, // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
    0xc014, // TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA
    0xc009, // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA
    0xc00a, // TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA
    0x002f, // TLS_RSA_WITH_AES_128_CBC_SHA
    0x0035, // TLS_RSA_WITH_AES_256_CBC_SHA
    0x000a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
    0x0033, // TLS_DHE_RSA_WITH_AES_128_CBC_SHA
    0x0039, // TLS_DHE_RSA_WITH_AES_256_CBC_SHA
    0x0005, // TLS_RSA_WITH_RC4_128_SHA
    0x0004, // TLS_RSA_WITH_RC4_128_MD5
];

/// Builds a ClientHello record offering `version` (in the legacy version field, without a
/// supported_versions extension) and `suites`, with the extensions a server needs for ECDHE
/// (SNI, groups, point formats, signature algorithms).
pub fn client_hello(version: u16, suites: &[u16], server_name: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    let mut push_ext = |kind: u16, body: &[u8]| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
        ext.extend_from_slice(body);
    };
    let name = &server_name.as_bytes()[..server_name.len().min(255)];
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    push_ext(0x0000, &sni);
    push_ext(0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]); // x25519, secp256r1
    push_ext(0x000b, &[0x01, 0x00]); // uncompressed points
    push_ext(
        0x000d,
        &[
            0x00, 0x0a, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x02, 0x01,
        ],
    );

    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);

    let mut record = vec![0x16];
    record.extend_from_slice(&version.min(TLS1_2).to_be_bytes());
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// What a server sent back to a ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloAnswer {
    /// A ServerHello, with the version it chose.
    ServerHello(u16),
    /// A TLS alert with its description code (70 = protocol_version, 40 = handshake_failure).
    Alert(u8),
    Closed,
    Other,
}

/// Sends a ClientHello record and classifies the first record that comes back (read within
/// `timeout`, at most one 16 KiB record).
pub async fn send_client_hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    hello: &[u8],
    timeout: Duration,
) -> Result<HelloAnswer, String> {
    stream
        .write_all(hello)
        .await
        .map_err(|e| format!("send ClientHello: {e}"))?;
    let mut header = [0u8; 5];
    match tokio::time::timeout(timeout, stream.read_exact(&mut header)).await {
        Err(_) => {
            return Err(format!(
                "no answer to the ClientHello within {} s",
                timeout.as_secs()
            ));
        }
        Ok(Err(_)) => return Ok(HelloAnswer::Closed),
        Ok(Ok(_)) => {}
    }
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut body = vec![0u8; len.min(16 * 1024)];
    if !matches!(
        tokio::time::timeout(timeout, stream.read_exact(&mut body)).await,
        Ok(Ok(_))
    ) {
        return Ok(HelloAnswer::Closed);
    }
    Ok(match (header[0], body.first()) {
        // Handshake header (type, 3 length bytes), then the version the server chose.
        (0x16, Some(2)) => match body.get(4..6) {
            Some(&[major, minor]) => HelloAnswer::ServerHello(u16::from_be_bytes([major, minor])),
            _ => HelloAnswer::Other,
        },
        (0x15, _) if body.len() >= 2 => HelloAnswer::Alert(body[1]),
        _ => HelloAnswer::Other,
    })
}

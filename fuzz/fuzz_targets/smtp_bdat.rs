//! Fuzz target: the BDAT chunk reader (`sealmail_smtp::receive_chunk`) over a `Connection` on
//! an in-memory stream, for a series of chunks whose sizes and keep flags come from the input
//! header, then the content check BDAT messages get (`unsafe_content`).
//!
//! Checked: a chunk uses exactly its announced octets (the session stays in step, the next
//! bytes are still there), a kept chunk is exactly those octets, too big and over-budget
//! chunks are read and dropped as documented, input that ends early is `Closed`, nothing stays
//! reserved afterwards, and `unsafe_content` agrees with a plain reading of RFC 5321 2.3.8.
#![no_main]

use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sealmail_config::{Role, TlsMode};
use sealmail_net::budget::BodyBudget;
use sealmail_net::{ConnError, Connection, ConnectionInfo, Timeouts};
use sealmail_smtp::session::Chunk;
use sealmail_smtp::{ChunkLimits, receive_chunk};
use sealmail_types::line::unsafe_content;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const BUDGET: usize = 8 * 1024;
const SHARE: usize = 2 * 1024;
const MAX_MESSAGE: usize = 4 * 1024;

/// RFC 5321 2.3.8 and 4.1.4 read plainly: every CR is followed by LF, every LF follows CR, no NUL.
fn plainly_safe(content: &[u8]) -> bool {
    !content.contains(&0)
        && content.iter().enumerate().all(|(i, &b)| match b {
            b'\r' => content.get(i + 1) == Some(&b'\n'),
            b'\n' => i > 0 && content[i - 1] == b'\r',
            _ => true,
        })
}

fuzz_target!(|input: &[u8]| {
    let Some((&count, rest)) = input.split_first() else {
        return;
    };
    let count = usize::from(count % 8) + 1;
    if rest.len() < count * 3 {
        return;
    }
    let (header, wire) = rest.split_at(count * 3);
    let chunks: Vec<(usize, bool)> = header
        .chunks_exact(3)
        .map(|h| {
            (
                usize::from(u16::from_le_bytes([h[0], h[1]])) % 6000,
                h[2] & 1 == 1,
            )
        })
        .collect();
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(wire.len() + 64 * 1024);
        client.write_all(wire).await.expect("the duplex holds the input");
        client.shutdown().await.expect("end of input");
        let peer: SocketAddr = "127.0.0.2:40000".parse().expect("address");
        let info = ConnectionInfo {
            peer,
            local: "127.0.0.1:25".parse().expect("address"),
            role: Role::Mx,
            tls_mode: TlsMode::StartTls,
        };
        let mut conn =
            Connection::over_stream(
                info,
                server,
                None,
                Timeouts::uniform(Duration::from_secs(5)),
                CancellationToken::new(),
            );
        let budget = BodyBudget::with_client_share(BUDGET, SHARE);
        let limits = ChunkLimits {
            max_message_size: MAX_MESSAGE,
            timeout: Duration::from_secs(5),
        };
        let mut offset = 0usize;
        let mut message = Vec::new();
        for (size, keep) in chunks {
            let result = receive_chunk(&mut conn, size, keep, limits, &budget).await;
            if offset + size > wire.len() {
                assert!(
                    matches!(result, Err(ConnError::Closed)),
                    "a short chunk was not Closed"
                );
                return;
            }
            let expected = &wire[offset..offset + size];
            match result {
                Ok(Chunk::Data(bytes)) => {
                    assert!(keep && size <= SHARE, "kept a chunk it should have dropped");
                    assert_eq!(bytes, expected, "a chunk is not the octets sent");
                    message.extend_from_slice(&bytes);
                }
                Ok(Chunk::TooBig) => assert!(size > MAX_MESSAGE, "TooBig within the limit"),
                Ok(Chunk::NoMemory) => {
                    assert!(
                        keep && size > SHARE && size <= MAX_MESSAGE,
                        "NoMemory within the share"
                    )
                }
                Ok(Chunk::Dropped) => assert!(!keep && size <= MAX_MESSAGE, "dropped a chunk to keep"),
                Err(e) => panic!("chunk of {size} with {} left: {e}", wire.len() - offset),
            }
            assert_eq!(budget.available(), BUDGET, "a chunk read left budget reserved");
            offset += size;
        }
        // In step: the next byte the session reads is the one after the last chunk.
        match conn.fill(Duration::from_secs(5)).await {
            Ok(next) => assert_eq!(next.first(), wire.get(offset), "out of step after the chunks"),
            Err(ConnError::Closed) => assert_eq!(offset, wire.len(), "input left but Closed"),
            Err(e) => panic!("reading after the chunks: {e}"),
        }
        assert_eq!(unsafe_content(&message).is_none(), plainly_safe(&message));
    });
});

//! The listener framework every protocol uses: bind, accept, cap connections (globally and per
//! client IP), run implicit TLS or hand out a STARTTLS upgrade, bound every read in time and
//! size, and shut down gracefully.
//!
//! A protocol implements [`Handler`] and receives a [`Connection`]. The only way from plaintext
//! to TLS is [`Connection::start_tls`], which consumes the plaintext connection and throws away
//! every byte the client sent before the handshake: a command pipelined after STARTTLS is never
//! executed inside the TLS session (CVE-2011-0411 class; RFC 3207 section 4.2, RFC 3501 6.2.1).
//! [`TlsActive`] (from `sealmail-types`) is the proof that TLS is up; this crate makes it, from a
//! completed handshake. A [`Connection`] runs over any byte stream, so sessions can be driven
//! over `tokio::io::duplex` in tests, TLS included.

pub mod budget;
mod connection;
mod listener;
pub mod proxy;

pub use connection::{ByteStream, ConnError, Connection, ConnectionInfo, Line, Timeouts};
pub use listener::{AcceptFilter, BoundListener, ClientAuthConfigs, Handler, Server, bind, client_key};
pub use sealmail_types::proof::TlsActive;

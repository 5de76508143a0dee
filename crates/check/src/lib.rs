//! `sealmail check`: grades the email security of any domain and its mail servers, ours or
//! not, in six pillars (encryption, authentication, integrity, confidentiality, server
//! security, protocol support), and gives the fix for every finding.
//!
//! [`report`] owns the findings, the score and grade, and the two outputs (text grouped by
//! pillar, and the versioned JSON of docs/CHECK-JSON.md); [`dns`] the checks of the domain's
//! published records; [`dane`] the TLSA records of each MX host against its certificate;
//! [`servers`] those of its mail servers (reached over the network), with [`tls`] for the raw
//! ClientHellos of TLS versions rustls does not speak; [`active`] the attacks tried, with
//! `--active`, on servers the user runs. Every check is time-bounded: a lookup that fails or
//! times out is a finding of its own, never an error of the whole check.

pub mod active;
pub mod dane;
pub mod dns;
pub mod report;
pub mod servers;
pub mod tls;

pub use report::{Check, Grade, Pillar, Report, Status};

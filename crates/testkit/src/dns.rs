//! A local authoritative DNS server for tests: UDP and TCP on one loopback port, serving
//! records a test puts in, so that no test ever asks a DNS server outside this machine.
//!
//! Besides records it can make a name time out (no answer at all), answer SERVFAIL, and mark
//! names as DNSSEC-secure (the AD bit, which a resolver configured to trust it passes on) for
//! the delivery issue's DANE tests. Unknown names get NXDOMAIN; a name with records but none of
//! the asked type gets an empty NOERROR answer; CNAMEs are followed inside the zone. Both
//! negative answers carry the zone's SOA, as an authoritative server's must (RFC 2308 3), so
//! resolvers cache them for its TTL as they would on the Internet.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, PTR, SOA, SRV, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::{TestResult, ctx};

#[derive(Debug, Clone)]
pub enum Rec {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(u16, String),
    /// A TXT record as its character-strings (one record may hold several).
    Txt(Vec<Vec<u8>>),
    Cname(String),
    Ptr(String),
    /// usage, selector, matching type, data
    Tlsa(u8, u8, u8, Vec<u8>),
    /// priority, weight, port, target
    Srv(u16, u16, u16, String),
    /// flags, tag, value (e.g. `0 issue "letsencrypt.org"`)
    Caa(u8, String, String),
}

impl Rec {
    fn record_type(&self) -> RecordType {
        match self {
            Rec::A(_) => RecordType::A,
            Rec::Aaaa(_) => RecordType::AAAA,
            Rec::Mx(..) => RecordType::MX,
            Rec::Txt(_) => RecordType::TXT,
            Rec::Cname(_) => RecordType::CNAME,
            Rec::Ptr(_) => RecordType::PTR,
            Rec::Tlsa(..) => RecordType::TLSA,
            Rec::Srv(..) => RecordType::SRV,
            Rec::Caa(..) => RecordType::CAA,
        }
    }

    fn rdata(&self) -> Option<RData> {
        let name = |n: &str| wire_name(n);
        Some(match self {
            Rec::A(ip) => RData::A(A(*ip)),
            Rec::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Rec::Mx(preference, host) => RData::MX(MX::new(*preference, name(host)?)),
            Rec::Txt(strings) => RData::TXT(TXT::from_bytes(strings.iter().map(Vec::as_slice).collect())),
            Rec::Cname(target) => RData::CNAME(CNAME(name(target)?)),
            Rec::Ptr(target) => RData::PTR(PTR(name(target)?)),
            Rec::Tlsa(usage, selector, matching, data) => RData::TLSA(TLSA::new(
                (*usage).into(),
                (*selector).into(),
                (*matching).into(),
                data.clone(),
            )),
            Rec::Srv(priority, weight, port, target) => {
                RData::SRV(SRV::new(*priority, *weight, *port, name(target)?))
            }
            Rec::Caa(flags, tag, value) => {
                // The fields are set directly: the value stays the raw bytes the test gave,
                // also when it is not what an `issue` value should be.
                let mut caa = CAA::new_issue(false, None, Vec::new());
                caa.issuer_critical = flags & 0x80 != 0;
                caa.reserved_flags = flags & 0x7f;
                caa.tag = tag.clone();
                caa.value = value.as_bytes().to_vec();
                RData::CAA(caa)
            }
        })
    }
}

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<Rec>>,
    timeouts: HashSet<String>,
    timeout_prefixes: Vec<String>,
    servfail: HashSet<String>,
    secure: HashSet<String>,
    /// TTL of every answer; `None` is 300 s. Tests that change records use 0 (not cached).
    ttl: Option<u32>,
    /// Queries received, over UDP and TCP, answered or not.
    queries: AtomicUsize,
}

/// A zone name as DNS carries it. Names that are not host names (the RFC 7208 suite has
/// `foo:bar/baz.example.com` and labels with spaces, which SPF macros can produce) are taken
/// label by label as raw octets.
fn wire_name(name: &str) -> Option<Name> {
    let name = name.trim_end_matches('.');
    Name::from_str_relaxed(format!("{name}.")).ok().or_else(|| {
        let mut raw = Name::from_labels(name.split('.').map(str::as_bytes)).ok()?;
        raw.set_fqdn(true);
        Some(raw)
    })
}

/// A queried name as text: its labels' octets joined with dots, unescaped, so it matches the
/// names the zone was given.
fn name_text(name: &Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The running server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<RwLock<Zone>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DnsServer {
    /// Starts a server on 127.0.0.1 (UDP and TCP on the same free port).
    pub async fn start() -> TestResult<DnsServer> {
        let mut last = String::new();
        for _ in 0..20 {
            let udp = ctx(UdpSocket::bind("127.0.0.1:0").await, "bind UDP")?;
            let addr = ctx(udp.local_addr(), "local_addr")?;
            let tcp = match TcpListener::bind(addr).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let zone = Arc::new(RwLock::new(Zone::default()));
            let tasks = vec![
                tokio::spawn(serve_udp(udp, zone.clone())),
                tokio::spawn(serve_tcp(tcp, zone.clone())),
            ];
            return Ok(DnsServer { addr, zone, tasks });
        }
        Err(format!("no port free for UDP and TCP at once: {last}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn with_zone(&self, change: impl FnOnce(&mut Zone)) {
        let mut zone = self.zone.write().unwrap_or_else(|p| p.into_inner());
        change(&mut zone);
    }

    pub fn add(&self, name: &str, record: Rec) {
        self.with_zone(|z| z.records.entry(key(name)).or_default().push(record));
    }

    pub fn add_txt(&self, name: &str, text: &str) {
        // A long text is split into character-strings of at most 255 bytes, as a zone file would.
        let strings = text
            .as_bytes()
            .chunks(255)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>();
        self.add(
            name,
            Rec::Txt(if strings.is_empty() {
                vec![Vec::new()]
            } else {
                strings
            }),
        );
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, Rec::A(ip));
    }

    pub fn add_mx(&self, name: &str, preference: u16, host: &str) {
        self.add(name, Rec::Mx(preference, host.to_string()));
    }

    /// Removes every record of `name`.
    pub fn remove(&self, name: &str) {
        self.with_zone(|z| {
            z.records.remove(&key(name));
        });
    }

    /// Queries for `name` get no answer at all.
    pub fn timeout(&self, name: &str) {
        self.with_zone(|z| {
            z.timeouts.insert(key(name));
        });
    }

    /// Queries for unknown names that start with `prefix` get no answer.
    pub fn timeout_unknown_with_prefix(&self, prefix: &str) {
        self.with_zone(|z| z.timeout_prefixes.push(prefix.to_ascii_lowercase()));
    }

    pub fn servfail(&self, name: &str) {
        self.with_zone(|z| {
            z.servfail.insert(key(name));
        });
    }

    /// Answers for `name` carry the AD (authentic data) bit, when the query asked for it (AD or
    /// DO set), as a validating resolver's would.
    pub fn secure(&self, name: &str) {
        self.with_zone(|z| {
            z.secure.insert(key(name));
        });
    }

    /// Forgets every record and setting (except the TTL and the query count).
    pub fn clear(&self) {
        self.with_zone(|z| {
            *z = Zone {
                ttl: z.ttl,
                queries: AtomicUsize::new(z.queries.load(Ordering::Relaxed)),
                ..Zone::default()
            }
        });
    }

    /// The TTL of every answer from now on (0: resolvers must not cache).
    pub fn set_ttl(&self, ttl: u32) {
        self.with_zone(|z| z.ttl = Some(ttl));
    }

    /// How many queries the server has received so far.
    pub fn queries(&self) -> usize {
        self.zone
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .queries
            .load(Ordering::Relaxed)
    }
}

/// The answer to one query, or `None` for no answer (a timeout).
fn answer(zone: &RwLock<Zone>, request: &[u8]) -> Option<Vec<u8>> {
    let zone = zone.read().unwrap_or_else(|p| p.into_inner());
    zone.queries.fetch_add(1, Ordering::Relaxed);
    let request = Message::from_vec(request).ok()?;
    let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.edns = request.edns.clone();
    let Some(query) = request.queries.first().cloned() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    response.add_query(query.clone());
    let mut name = key(&name_text(query.name()));
    let qtype = query.query_type();
    let known = zone.records.contains_key(&name);
    let has_type = zone
        .records
        .get(&name)
        .is_some_and(|records| records.iter().any(|r| r.record_type() == qtype));
    // A timing-out name still answers for the types it has records of (a server that only
    // chokes on some types, as in the RFC 7208 suite's "spftimeout").
    if (zone.timeouts.contains(&name) && !has_type)
        || (!known && zone.timeout_prefixes.iter().any(|p| name.starts_with(p.as_str())))
    {
        return None;
    }
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    // Like a validating resolver (RFC 6840 5.7, 5.8): AD only for a client that asks for it
    // with the AD or DO bit.
    let asked = request.metadata.authentic_data || request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    response.metadata.authentic_data = zone.secure.contains(&name) && asked;
    let ttl = zone.ttl.unwrap_or(300);
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_authority(zone_soa(query.name(), ttl)?);
        return response.to_vec().ok();
    }
    let mut owner = query.name().clone();
    for _ in 0..8 {
        let records = zone.records.get(&name).map(Vec::as_slice).unwrap_or_default();
        let cname = records.iter().find_map(|r| match r {
            Rec::Cname(target) if qtype != RecordType::CNAME => Some(target.clone()),
            _ => None,
        });
        if let Some(target) = cname {
            if let Some(rdata) = Rec::Cname(target.clone()).rdata() {
                response.add_answer(Record::from_rdata(owner.clone(), zone.ttl.unwrap_or(300), rdata));
            }
            name = key(&target);
            owner = wire_name(&name)?;
            continue;
        }
        for record in records.iter().filter(|r| r.record_type() == qtype) {
            if let Some(rdata) = record.rdata() {
                response.add_answer(Record::from_rdata(owner.clone(), zone.ttl.unwrap_or(300), rdata));
            }
        }
        break;
    }
    if response.answers.is_empty() {
        response.add_authority(zone_soa(query.name(), ttl)?);
    }
    response.to_vec().ok()
}

/// The SOA a negative answer carries. Every name is served as if its top-level label were the
/// zone (`test.` for `_dmarc.a.test.`); its TTL and MINIMUM, the negative-caching time
/// (RFC 2308 5), are the zone's TTL.
fn zone_soa(name: &Name, ttl: u32) -> Option<Record> {
    let apex = match name.iter().next_back() {
        Some(label) => Name::from_labels([label]).ok()?,
        None => Name::root(),
    };
    let soa = SOA::new(
        Name::from_labels([b"ns".as_slice()])
            .ok()?
            .append_domain(&apex)
            .ok()?,
        Name::from_labels([b"hostmaster".as_slice()])
            .ok()?
            .append_domain(&apex)
            .ok()?,
        1,
        3600,
        600,
        86400,
        ttl,
    );
    let mut apex = apex;
    apex.set_fqdn(true);
    Some(Record::from_rdata(apex, ttl, RData::SOA(soa)))
}

async fn serve_udp(socket: UdpSocket, zone: Arc<RwLock<Zone>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(mut reply) = answer(&zone, &buf[..n]) else {
            continue;
        };
        // Too big for UDP: say so (TC), and the client asks again over TCP.
        let limit = Message::from_vec(&buf[..n])
            .ok()
            .and_then(|m| m.edns.map(|e| e.max_payload()))
            .unwrap_or(512)
            .max(512) as usize;
        if reply.len() > limit
            && let Ok(message) = Message::from_vec(&reply)
            && let Ok(truncated) = message.truncate().to_vec()
        {
            reply = truncated;
        }
        let _ = socket.send_to(&reply, from).await;
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<RwLock<Zone>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let zone = zone.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut request = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut request).await.is_err() {
                    return;
                }
                let Some(reply) = answer(&zone, &request) else {
                    continue;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                if stream.write_all(&len.to_be_bytes()).await.is_err()
                    || stream.write_all(&reply).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// A DNS server that knows no names (every lookup is NXDOMAIN), shared by every test in the
/// process and kept on a thread of its own, so that any test configuration can point
/// `[dns] nameservers` at it and no lookup ever reaches the machine's resolver.
pub fn empty_server() -> TestResult<SocketAddr> {
    static ADDR: std::sync::OnceLock<Result<SocketAddr, String>> = std::sync::OnceLock::new();
    ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                match DnsServer::start().await {
                    Ok(server) => {
                        let _ = tx.send(Ok(server.addr()));
                        // Serve for as long as the process lives.
                        std::future::pending::<()>().await;
                        drop(server);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        });
        rx.recv().map_err(|e| e.to_string()).and_then(|r| r)
    })
    .clone()
}

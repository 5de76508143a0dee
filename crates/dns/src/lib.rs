//! The one DNS resolver sealmail uses for everything (sender authentication now; MX, MTA-STS
//! and DANE lookups with delivery): hickory's, built from `[dns]`, with its cache.
//!
//! Nameservers come from the configuration (UDP, falling back to TCP for truncated answers) or,
//! when none are configured, from the system. The hosts file is never consulted: it would let a
//! local file answer for a remote domain's mail policy. Reverse lookups of clients are off
//! unless `[dns] reverse_lookups` is on; callers check [`Dns::reverse_lookups`].

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_resolver::proto::rr::{Name, RecordType};

pub use hickory_resolver;
use sealmail_config::DnsConfig;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

/// The resolver; cheap to clone (clones share the cache and connections).
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    reverse_lookups: bool,
    trust_ad_bit: bool,
    nameservers: Vec<std::net::SocketAddr>,
    timeout: std::time::Duration,
    attempts: usize,
}

impl Dns {
    pub fn new(config: &DnsConfig) -> Result<Dns, DnsError> {
        let mut options = ResolverOpts::default();
        options.timeout = config.timeout;
        options.attempts = config.attempts;
        options.cache_size = config.cache_size;
        options.use_hosts_file = ResolveHosts::Never;
        options.try_tcp_on_error = true;
        options.ndots = 0;
        let builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::Setup(e.to_string()))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder
            .with_options(options)
            .build()
            .map_err(|e| DnsError::Setup(e.to_string()))?;
        // Without configured nameservers, DNSSEC-checked queries go to the system's (the first
        // UDP port of each), as the resolver's own lookups do.
        let nameservers = if config.nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map(|(system, _)| {
                    system
                        .name_servers()
                        .iter()
                        .map(|server| {
                            let port = server.connections.first().map_or(53, |c| c.port);
                            std::net::SocketAddr::new(server.ip, port)
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            config.nameservers.clone()
        };
        Ok(Dns {
            resolver,
            reverse_lookups: config.reverse_lookups,
            trust_ad_bit: config.trust_ad_bit,
            nameservers,
            timeout: config.timeout,
            attempts: config.attempts,
        })
    }

    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    pub fn reverse_lookups(&self) -> bool {
        self.reverse_lookups
    }

    /// Whether answers with the AD bit count as DNSSEC-validated (`[dns] trust_ad_bit`): the
    /// DNSSEC status DANE needs, taken from a validating resolver the admin trusts, as Postfix
    /// does.
    pub fn trust_ad_bit(&self) -> bool {
        self.trust_ad_bit
    }
}

/// Why an authenticated query got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no nameserver is configured for DNSSEC-checked lookups; set [dns] nameservers")]
    NoServer,
    #[error("no answer from {0}")]
    NoAnswer(String),
}

impl Dns {
    /// Asks the configured nameservers directly, with the AD bit set in the query, and returns
    /// their whole answer (its `authentic_data` flag says whether the resolver validated it).
    ///
    /// Why not through hickory's resolver: without its own DNSSEC validation it sends neither
    /// AD nor DO, and a validating resolver only vouches for an answer (AD) to a client that
    /// asked (RFC 6840 5.7); so DANE would silently never apply. Not cached: it is one query
    /// per MX host per delivery attempt.
    pub async fn query_authenticated(
        &self,
        name: &str,
        record_type: RecordType,
    ) -> Result<Message, QueryError> {
        if self.nameservers.is_empty() {
            return Err(QueryError::NoServer);
        }
        let qname = Name::from_ascii(name).map_err(|e| QueryError::NoAnswer(format!("{name}: {e}")))?;
        let mut last = String::new();
        for server in &self.nameservers {
            for _ in 0..self.attempts.max(1) {
                match tokio::time::timeout(self.timeout, ask(*server, &qname, record_type)).await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(e)) => last = format!("{server}: {e}"),
                    Err(_) => last = format!("{server}: timed out"),
                }
            }
        }
        Err(QueryError::NoAnswer(last))
    }
}

/// One query over UDP, again over TCP when the answer is truncated.
async fn ask(server: std::net::SocketAddr, name: &Name, record_type: RecordType) -> std::io::Result<Message> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut id = [0u8; 2];
    getrandom::fill(&mut id).map_err(|e| invalid(e.to_string()))?;
    let id = u16::from_be_bytes(id);
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.metadata.authentic_data = true;
    query.add_query(Query::query(name.clone(), record_type));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|e| invalid(e.to_string()))?;
    let matches = |answer: &Message| {
        answer.metadata.id == id
            && answer.metadata.message_type == MessageType::Response
            && answer
                .queries
                .first()
                .is_some_and(|q| q.name() == name && q.query_type() == record_type)
    };

    let local: std::net::SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let udp = tokio::net::UdpSocket::bind(local).await?;
    udp.connect(server).await?;
    udp.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let answer = loop {
        let n = udp.recv(&mut buf).await?;
        // Anything that is not the answer to our question is ignored (spoofing, stale replies).
        if let Ok(answer) = Message::from_vec(&buf[..n])
            && matches(&answer)
        {
            break answer;
        }
    };
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    let mut tcp = tokio::net::TcpStream::connect(server).await?;
    let length = u16::try_from(bytes.len()).map_err(|e| invalid(e.to_string()))?;
    tcp.write_all(&length.to_be_bytes()).await?;
    tcp.write_all(&bytes).await?;
    let mut length = [0u8; 2];
    tcp.read_exact(&mut length).await?;
    let mut reply = vec![0u8; u16::from_be_bytes(length) as usize];
    tcp.read_exact(&mut reply).await?;
    let answer = Message::from_vec(&reply).map_err(|e| invalid(e.to_string()))?;
    if matches(&answer) {
        Ok(answer)
    } else {
        Err(invalid("the TCP answer does not match the question".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sealmail_testkit::dns::DnsServer;
    use std::time::Duration;

    fn config(server: &DnsServer) -> DnsConfig {
        DnsConfig {
            nameservers: vec![server.addr()],
            timeout: Duration::from_millis(300),
            attempts: 1,
            ..DnsConfig::default()
        }
    }

    #[tokio::test]
    async fn answers_come_from_the_configured_server_over_udp_and_tcp() -> Result<(), String> {
        let server = DnsServer::start().await?;
        server.add_a("mx.a.test", [127, 0, 0, 5].into());
        server.add_mx("a.test", 10, "mx.a.test");
        // Long enough that the UDP answer is truncated and the resolver asks again over TCP.
        for i in 0..40 {
            server.add_txt("big.a.test", &format!("record {i} {}", "x".repeat(100)));
        }
        let dns = Dns::new(&config(&server)).map_err(|e| e.to_string())?;
        let mx = dns
            .resolver()
            .mx_lookup("a.test.")
            .await
            .map_err(|e| e.to_string())?;
        let hosts: Vec<String> = mx.answers().iter().map(|r| r.data.to_string()).collect();
        assert_eq!(hosts, ["10 mx.a.test."]);
        let ips = dns
            .resolver()
            .lookup_ip("mx.a.test.")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            ips.iter().collect::<Vec<_>>(),
            [std::net::IpAddr::from([127, 0, 0, 5])]
        );
        let txt = dns
            .resolver()
            .txt_lookup("big.a.test.")
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(txt.answers().len(), 40, "TCP fallback returned every record");
        let missing = dns.resolver().txt_lookup("nothing.a.test.").await;
        assert!(missing.is_err());
        // Not a loopback address: hickory answers those itself (RFC 6761).
        server.add(
            "5.2.0.192.in-addr.arpa",
            sealmail_testkit::dns::Rec::Ptr("mx.a.test".into()),
        );
        let names = dns
            .resolver()
            .reverse_lookup(std::net::IpAddr::from([192, 0, 2, 5]))
            .await
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = names.answers().iter().map(|r| r.data.to_string()).collect();
        assert_eq!(names, ["mx.a.test."]);
        Ok(())
    }

    #[tokio::test]
    async fn only_queries_that_ask_for_it_get_the_ad_bit() -> Result<(), String> {
        let server = DnsServer::start().await?;
        let name = "_25._tcp.mx.a.test";
        server.add(name, sealmail_testkit::dns::Rec::Tlsa(3, 1, 1, vec![7; 32]));
        server.secure(name);
        let dns = Dns::new(&config(&server)).map_err(|e| e.to_string())?;
        // hickory's resolver asks without AD or DO: a validating resolver does not vouch.
        let plain = dns
            .resolver()
            .lookup(format!("{name}."), RecordType::TLSA)
            .await
            .map_err(|e| e.to_string())?;
        assert!(!plain.message().metadata.authentic_data);
        let asked = dns
            .query_authenticated(&format!("{name}."), RecordType::TLSA)
            .await
            .map_err(|e| e.to_string())?;
        assert!(asked.metadata.authentic_data);
        assert_eq!(asked.answers.len(), 1);
        // Not secure: no AD even when asked; unknown: NXDOMAIN.
        server.add(
            "_25._tcp.mx.b.test",
            sealmail_testkit::dns::Rec::Tlsa(3, 1, 1, vec![7; 32]),
        );
        let insecure = dns
            .query_authenticated("_25._tcp.mx.b.test.", RecordType::TLSA)
            .await
            .map_err(|e| e.to_string())?;
        assert!(!insecure.metadata.authentic_data && insecure.answers.len() == 1);
        let missing = dns
            .query_authenticated("_25._tcp.nothing.a.test.", RecordType::TLSA)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            missing.metadata.response_code,
            hickory_resolver::proto::op::ResponseCode::NXDomain
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout_not_an_answer() -> Result<(), String> {
        let server = DnsServer::start().await?;
        server.timeout("slow.a.test");
        let dns = Dns::new(&config(&server)).map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        let result = dns.resolver().txt_lookup("slow.a.test.").await;
        let error = result.err().ok_or("a timeout produced an answer")?;
        assert!(error.to_string().to_lowercase().contains("time"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        Ok(())
    }
}

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
        Ok(Dns {
            resolver,
            reverse_lookups: config.reverse_lookups,
            trust_ad_bit: config.trust_ad_bit,
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

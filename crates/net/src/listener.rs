//! Binding, accepting, connection caps and graceful shutdown.
//!
//! Caps and rates per client count an IPv4 address alone and an IPv6 address by its /64 (one
//! host usually holds a whole /64, so counting its addresses one by one would let it take every
//! slot); an IPv4-mapped IPv6 address counts as its IPv4 address. Each role's listeners together
//! hold at most `limits.max_connections_per_role_percent` of `limits.max_connections`, so a flood
//! on `mx` leaves room for submission and IMAP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use sealmail_config::{ClientCertMode, Limits, Listener as ListenerSpec, Role, TlsMode};
use sealmail_types::rate::SlidingWindow;

use crate::connection::{Connection, ConnectionInfo, Timeouts};

/// A protocol that serves connections.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Serves one connection until it ends. On implicit-TLS listeners TLS is already active.
    async fn handle(&self, conn: Connection);

    /// The line sent, in plaintext and only on STARTTLS listeners, to a client turned away
    /// because a connection cap is reached (e.g. SMTP "421 4.7.0 ...\r\n").
    fn busy_reply(&self) -> &'static [u8];

    /// The line sent, in plaintext and only on STARTTLS listeners, to a banned client.
    fn banned_reply(&self) -> &'static [u8];
}

/// Decides at accept time, before any TLS work, whether a client is refused (banned).
pub trait AcceptFilter: Send + Sync + 'static {
    fn refuse(&self, ip: std::net::IpAddr) -> bool;

    /// Told when a client's TLS handshake on an implicit-TLS listener fails with garbage after
    /// our key share ([`crate::ConnError::is_handshake_garbage`]); failures at the hello, a
    /// connection closed without a word, and a prober that hangs up after our ServerHello are
    /// not abuse (load balancers, monitoring and TLS scanners do exactly that).
    fn tls_failed(self: Arc<Self>, _ip: std::net::IpAddr, _listener: &'static str) {}

    /// Told when a client's TLS handshake on an implicit-TLS listener was abandoned after our
    /// key share, or never came ([`crate::ConnError::is_handshake_abandoned`]): cheap for the
    /// client, a key exchange for us; counted lightly.
    fn tls_abandoned(self: Arc<Self>, _ip: std::net::IpAddr, _listener: &'static str) {}
}

/// A listening socket with the protocol that serves it.
pub struct BoundListener {
    pub spec: ListenerSpec,
    pub socket: TcpListener,
    pub handler: Arc<dyn Handler>,
}

/// Binds every listener before anything is served, so that a port in use fails start-up whole
/// (and so that privileges can be dropped after binding).
pub async fn bind(specs: &[ListenerSpec]) -> Result<Vec<(ListenerSpec, TcpListener)>, String> {
    let mut bound = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let socket = TcpListener::bind(spec.bind).await.map_err(|e| {
            format!(
                "cannot listen on listener[{i}] {} ({} {}): {e}; stop whatever uses that port or change listener[{i}].bind",
                spec.bind,
                spec.role,
                spec.tls.as_str()
            )
        })?;
        bound.push((spec.clone(), socket));
    }
    Ok(bound)
}

/// The client a connection is counted against: an IPv4 address, or the /64 an IPv6 address is
/// in (as its first address); an IPv4-mapped IPv6 address is its IPv4 address. Bans use the same
/// grouping (`sealmail_guard::ban_key`).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Counts connections per client (see [`client_key`]).
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    per_ip: Arc<PerIp>,
    key: IpAddr,
}

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let key = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            key,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Recent connection times per client (see [`client_key`]), for the per-minute rate limit.
struct RecentConnections(SlidingWindow<IpAddr>);

/// Addresses remembered at most; past it, addresses quiet for a minute are forgotten.
const RATE_TRACKED: usize = 100_000;

impl Default for RecentConnections {
    fn default() -> RecentConnections {
        RecentConnections(SlidingWindow::new(Duration::from_secs(60), RATE_TRACKED))
    }
}

impl RecentConnections {
    /// Records a connection from `ip`; false when it is over `per_minute`.
    fn admit(&self, ip: IpAddr, per_minute: u32) -> bool {
        self.0.take(client_key(ip), 1, per_minute)
    }
}

/// What an admitted connection holds until it ends: a global slot, one of its role's, and one
/// of its client's.
type Slots = (OwnedSemaphorePermit, OwnedSemaphorePermit, IpSlot);

fn role_index(role: Role) -> usize {
    match role {
        Role::Mx => 0,
        Role::Submission => 1,
        Role::Imap => 2,
        // Both web roles share one share: `http` only redirects and answers ACME.
        Role::Https | Role::Http => 3,
    }
}

/// Connections one role's listeners may hold together: their share of the global cap, at least one.
fn role_cap(limits: &Limits) -> usize {
    let percent = usize::from(limits.max_connections_per_role_percent.clamp(1, 100));
    limits
        .max_connections
        .saturating_mul(percent)
        .div_ceil(100)
        .max(1)
}

/// The server's TLS configuration with client certificates asked for, as a listener's
/// `client_cert` chooses.
pub struct ClientAuthConfigs {
    pub optional: Arc<rustls::ServerConfig>,
    pub required: Arc<rustls::ServerConfig>,
}

/// Runs listeners until shut down.
pub struct Server {
    limits: Limits,
    tls: Arc<rustls::ServerConfig>,
    /// For listeners with `client_cert = "optional"` and `"required"`: the same configuration,
    /// asking for client certificates.
    client_auth: Option<ClientAuthConfigs>,
    /// Roles served with a configuration of their own (`https`: its ALPN protocols).
    role_tls: HashMap<Role, Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    global: Arc<Semaphore>,
    /// Each role's share of the global cap, in `role_index` order.
    per_role: [Arc<Semaphore>; 4],
    per_ip: Arc<PerIp>,
    rate: RecentConnections,
    filter: Option<Arc<dyn AcceptFilter>>,
    /// Addresses whose PROXY protocol headers are believed.
    proxies: Vec<ipnet::IpNet>,
}

impl Server {
    pub fn new(limits: Limits, tls: Arc<rustls::ServerConfig>, shutdown: CancellationToken) -> Server {
        let role_cap = role_cap(&limits);
        Server {
            global: Arc::new(Semaphore::new(limits.max_connections)),
            per_role: std::array::from_fn(|_| Arc::new(Semaphore::new(role_cap))),
            limits,
            tls,
            client_auth: None,
            role_tls: HashMap::new(),
            shutdown,
            sessions: TaskTracker::new(),
            per_ip: Arc::default(),
            rate: RecentConnections::default(),
            filter: None,
            proxies: Vec::new(),
        }
    }

    /// Serves listeners that ask for client certificates with these configurations.
    pub fn with_client_auth(mut self, configs: ClientAuthConfigs) -> Server {
        self.client_auth = Some(configs);
        self
    }

    /// Serves the listeners of `role` with this configuration (unless they ask for client
    /// certificates).
    pub fn with_role_tls(mut self, role: Role, config: Arc<rustls::ServerConfig>) -> Server {
        self.role_tls.insert(role, config);
        self
    }

    /// The TLS configuration of a listener of this role with this `client_cert` mode.
    fn tls_for(&self, role: Role, mode: ClientCertMode) -> Arc<rustls::ServerConfig> {
        if mode == ClientCertMode::Off
            && let Some(config) = self.role_tls.get(&role)
        {
            return config.clone();
        }
        match (mode, &self.client_auth) {
            (ClientCertMode::Optional, Some(configs)) => configs.optional.clone(),
            (ClientCertMode::Required, Some(configs)) => configs.required.clone(),
            _ => self.tls.clone(),
        }
    }

    /// Believes PROXY protocol headers from these addresses, on listeners that ask for them.
    pub fn with_proxies(mut self, proxies: Vec<ipnet::IpNet>) -> Server {
        self.proxies = proxies;
        self
    }

    /// Refuses clients the filter names, at accept time.
    pub fn with_filter(mut self, filter: Arc<dyn AcceptFilter>) -> Server {
        self.filter = Some(filter);
        self
    }

    /// Accepts on every listener until the shutdown token is cancelled, then stops accepting and
    /// waits up to `limits.shutdown_grace` for sessions to finish. Sessions still running after
    /// that are dropped (their sockets closed) when the caller's runtime ends.
    pub async fn run(self, listeners: Vec<BoundListener>) {
        let server = Arc::new(self);
        let mut accept_loops = Vec::new();
        for listener in listeners {
            let server = server.clone();
            accept_loops.push(tokio::spawn(async move { server.accept_loop(listener).await }));
        }
        server.shutdown.cancelled().await;
        for task in &accept_loops {
            task.abort();
        }
        server.sessions.close();
        let open = server.sessions.len();
        if open > 0 {
            tracing::info!(sessions = open, grace = ?server.limits.shutdown_grace, "shutting down: waiting for sessions to finish");
        }
        if tokio::time::timeout(server.limits.shutdown_grace, server.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = server.sessions.len(),
                "shutdown grace period over; closing remaining sessions"
            );
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: BoundListener) {
        let local = listener.socket.local_addr().ok();
        tracing::info!(role = %listener.spec.role, tls = listener.spec.tls.as_str(), addr = ?local, "listening");
        loop {
            let (tcp, peer) = match listener.socket.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let from_proxy =
                listener.spec.proxy_protocol && self.proxies.iter().any(|net| net.contains(&peer.ip()));
            let server = self.clone();
            let (spec, handler) = (listener.spec.clone(), listener.handler.clone());
            let local = local.unwrap_or(listener.spec.bind);
            if from_proxy {
                // Reading the header takes a round trip: do it off the accept loop.
                self.sessions.spawn(async move {
                    let mut tcp = tcp;
                    let limit = server.limits.tls_handshake_timeout;
                    match tokio::time::timeout(limit, crate::proxy::read_header(&mut tcp)).await {
                        Ok(Ok(client)) => {
                            server
                                .admit(tcp, client.unwrap_or(peer), local, spec, handler)
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::info!(proxy = %peer, error = %e, "PROXY protocol header refused")
                        }
                        Err(_) => tracing::info!(proxy = %peer, "no PROXY protocol header in time"),
                    }
                });
            } else {
                self.sessions
                    .spawn(async move { server.admit(tcp, peer, local, spec, handler).await });
            }
        }
    }

    /// Applies the listener's allow/deny lists, the ban filter and the connection caps to the
    /// client's address (the real one, behind a proxy), then serves the connection.
    async fn admit(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        spec: ListenerSpec,
        handler: Arc<dyn Handler>,
    ) {
        let plaintext_first = spec.tls == TlsMode::StartTls;
        let refused = !spec.permits(peer.ip()) || self.filter.as_ref().is_some_and(|f| f.refuse(peer.ip()));
        if refused {
            sealmail_metrics::CONNECTIONS_REFUSED.inc();
            tracing::debug!(%peer, "connection refused: address not allowed or banned");
            return turn_away(tcp, plaintext_first.then_some(handler.banned_reply())).await;
        }
        if !self.rate.admit(peer.ip(), self.limits.max_connection_rate_per_ip) {
            sealmail_metrics::CONNECTIONS_REFUSED.inc();
            tracing::warn!(%peer, "connection refused: per-IP connection rate limit reached");
            return turn_away(tcp, plaintext_first.then_some(handler.busy_reply())).await;
        }
        let Some(slots) = self.take_slots(peer, spec.role) else {
            sealmail_metrics::CONNECTIONS_REFUSED.inc();
            return turn_away(tcp, plaintext_first.then_some(handler.busy_reply())).await;
        };
        let info = ConnectionInfo {
            peer,
            local,
            role: spec.role,
            tls_mode: spec.tls,
        };
        let _slots = slots;
        sealmail_metrics::CONNECTIONS_ACCEPTED.inc();
        let tls = self.tls_for(spec.role, spec.client_cert);
        self.serve_one(info, tcp, handler, tls).await;
    }

    fn take_slots(&self, peer: SocketAddr, role: Role) -> Option<Slots> {
        let permit = self.global.clone().try_acquire_owned().ok();
        let Some(permit) = permit else {
            tracing::warn!(%peer, "connection refused: global connection cap reached");
            return None;
        };
        let role_permit = self.per_role[role_index(role)].clone().try_acquire_owned().ok();
        let Some(role_permit) = role_permit else {
            tracing::warn!(%peer, %role, "connection refused: the role's share of the connection cap is reached");
            return None;
        };
        let Some(slot) = self
            .per_ip
            .try_take(peer.ip(), self.limits.max_connections_per_ip)
        else {
            tracing::warn!(%peer, "connection refused: per-IP connection cap reached");
            return None;
        };
        Some((permit, role_permit, slot))
    }

    async fn serve_one(
        &self,
        info: ConnectionInfo,
        tcp: TcpStream,
        handler: Arc<dyn Handler>,
        tls: Arc<rustls::ServerConfig>,
    ) {
        let timeouts = Timeouts {
            handshake: self.limits.tls_handshake_timeout,
            command: self.limits.command_timeout,
        };
        let shutdown = self.shutdown.child_token();
        let peer = info.peer;
        let role = info.role.as_str();
        let conn = match info.tls_mode {
            TlsMode::StartTls => Connection::over_stream(info, tcp, Some(tls), timeouts, shutdown),
            TlsMode::None => Connection::over_stream(info, tcp, None, timeouts, shutdown),
            TlsMode::Implicit => match Connection::implicit_tls(info, tcp, tls, timeouts, shutdown).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    if let Some(filter) = &self.filter {
                        if e.is_handshake_garbage() {
                            filter.clone().tls_failed(peer.ip(), role);
                        } else if e.is_handshake_abandoned() {
                            filter.clone().tls_abandoned(peer.ip(), role);
                        }
                    }
                    return;
                }
            },
        };
        handler.handle(conn).await;
    }
}

async fn turn_away(mut tcp: TcpStream, reply: Option<&'static [u8]>) {
    if let Some(reply) = reply {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.write_all(reply)).await;
    }
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0u8; 4]))
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(client_key(ip("::1")), ip("::"));
    }

    #[test]
    fn one_ipv6_64_shares_one_connection_cap() {
        let per_ip = Arc::new(PerIp::default());
        let first = per_ip.try_take(ip("2001:db8:1:2::1"), 2);
        let second = per_ip.try_take(ip("2001:db8:1:2::2"), 2);
        assert!(first.is_some() && second.is_some());
        assert!(
            per_ip.try_take(ip("2001:db8:1:2:dead:beef::3"), 2).is_none(),
            "a third address of the same /64 got a slot"
        );
        assert!(
            per_ip.try_take(ip("2001:db8:1:3::1"), 2).is_some(),
            "another /64 was refused"
        );
        // Mapped IPv4 counts with the plain IPv4 address.
        let _a = per_ip.try_take(ip("192.0.2.7"), 1);
        assert!(per_ip.try_take(ip("::ffff:192.0.2.7"), 1).is_none());
        drop(first);
        assert!(
            per_ip.try_take(ip("2001:db8:1:2::4"), 2).is_some(),
            "a freed slot stayed taken"
        );
    }

    #[test]
    fn one_ipv6_64_shares_one_connection_rate() {
        let rate = RecentConnections::default();
        assert!(rate.admit(ip("2001:db8:1:2::1"), 2));
        assert!(rate.admit(ip("2001:db8:1:2::2"), 2));
        assert!(
            !rate.admit(ip("2001:db8:1:2::3"), 2),
            "a new address of the same /64 was not limited"
        );
        assert!(rate.admit(ip("2001:db8:1:3::1"), 2));
    }

    #[test]
    fn each_role_gets_its_share_of_the_global_cap() {
        let limits = |max_connections, max_connections_per_role_percent| Limits {
            max_connections,
            max_connections_per_role_percent,
            ..Limits::default()
        };
        assert_eq!(role_cap(&limits(2048, 50)), 1024);
        assert_eq!(role_cap(&limits(3, 50)), 2);
        assert_eq!(role_cap(&limits(1, 1)), 1);
        assert_eq!(role_cap(&limits(10, 100)), 10);
    }
}

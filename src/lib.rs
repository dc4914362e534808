//! scp-auth-proxy: a sidecar that signs Samsung Cloud Platform OpenAPI requests.
//!
//! [`start`] runs the real data plane and admin listener in-process; `main.rs` only parses the
//! command line, loads configuration and waits for signals.

pub(crate) mod admin;
pub mod app;
pub mod body;
pub mod catalog;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod credentials;
pub mod emulator;
pub(crate) mod endpoints;
pub(crate) mod env;
pub mod error;
pub mod forward;
pub mod forward_proxy;
pub mod layers;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod policy;
pub(crate) mod ready;
pub(crate) mod reload;
pub(crate) mod route;
pub(crate) mod server;
pub mod signer;
pub mod target;
pub(crate) mod telemetry;
pub(crate) mod wait;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{Admin, Health};
use crate::config::Config;
use crate::credentials::{CredentialStore, Credentials};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        addr: config::ListenAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Services(#[from] target::TargetError),
    #[error("telemetry.otlp_endpoint: TLS setup failed: {0}")]
    Telemetry(#[source] rustls::Error),
    #[error("audit.file {}: cannot open for appending: {source}", path.display())]
    AuditFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("services.{service}.upstream {upstream} is this proxy's own {key} ({listen}): every request would loop back into the proxy; point it at the SCP endpoint")]
    Loop {
        service: String,
        upstream: String,
        key: &'static str,
        listen: SocketAddr,
    },
    #[error("{var} {proxy} is this proxy's own {key} ({listen}): services.{service}'s signed requests would go out through it and back into the proxy (a loop); point {var} at the egress proxy the sidecar is meant to use, unset it in the sidecar's environment, or list the upstream's host in NO_PROXY")]
    EgressLoop {
        service: String,
        var: &'static str,
        proxy: String,
        key: &'static str,
        listen: SocketAddr,
    },
    #[error(transparent)]
    ForwardProxyCa(#[from] forward_proxy::ca::CaError),
}

/// Refuses a loop back into one of the proxy's own listeners: a service whose upstream is one
/// of them, or whose connections would go through an egress proxy (`HTTPS_PROXY` /
/// `HTTP_PROXY`, as `egress` plans them for that upstream) that is one of them, so the signed
/// requests would come back into the sidecar. Only literal IPs and `localhost` are compared: a
/// name other than `localhost` is not resolved.
pub(crate) fn check_loops(
    services: &[config::ServiceConfig],
    listeners: &[(&'static str, SocketAddr)],
    egress: &forward::Egress,
) -> Result<(), StartError> {
    let own = |host: &str, port: u16| {
        listeners
            .iter()
            .find(|(_, listen)| names_listener(host, port, *listen))
            .copied()
    };
    for svc in services {
        let up = &svc.upstream;
        let port = up.port();
        if let Some((key, listen)) = own(up.authority.host(), port) {
            return Err(StartError::Loop {
                service: svc.name.clone(),
                upstream: up.base.clone(),
                key,
                listen,
            });
        }
        // An unusable proxy setting is reported by the client built for this service.
        let Ok(forward::EgressRoute::Proxy { proxy, var, .. }) = egress.route(up) else {
            continue;
        };
        let Ok(uri) = proxy.parse::<http::Uri>() else {
            continue;
        };
        let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
            continue;
        };
        if let Some((key, listen)) = own(host, port) {
            return Err(StartError::EgressLoop {
                service: svc.name.clone(),
                var,
                proxy,
                key,
                listen,
            });
        }
    }
    Ok(())
}

/// Whether a connection to `host:port` (an IP, bracketed or not, or a name) reaches `listen`:
/// the same address, or a loopback one (`localhost`, `*.localhost`) or the unspecified one
/// (which Linux connects to the local host) against a listener on loopback or on all
/// interfaces. Another name is never taken to be the listener (it is not resolved).
fn names_listener(host: &str, port: u16, listen: SocketAddr) -> bool {
    if port != listen.port() {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let listen_ip = listen.ip().to_canonical();
    let local = listen_ip.is_loopback() || listen_ip.is_unspecified();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            let ip = ip.to_canonical();
            ip == listen_ip
                || (listen_ip.is_unspecified() && ip.is_loopback())
                || (ip.is_unspecified() && local)
        }
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost")) && local
        }
    }
}

/// A running proxy: both listeners bound and serving.
pub struct Running {
    /// The data plane's TCP address (the unspecified `0.0.0.0:0` when it listens on a Unix
    /// socket: see `listen`).
    pub addr: SocketAddr,
    /// Where the data plane listens, TCP or Unix socket.
    pub listen: config::ListenAddr,
    pub admin_addr: SocketAddr,
    /// The forward-proxy listener's address, when `[forward_proxy] listen` is set.
    pub forward_addr: Option<SocketAddr>,
    pub health: Arc<Health>,
    pub credentials: CredentialStore,
    pub metrics: Metrics,
    /// What a reload rebuilds and swaps (see `reload`).
    pub(crate) live: reload::Live,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<bool>,
}

impl Running {
    /// Begins a graceful shutdown: readiness turns 503, then (after `shutdown_delay`) the
    /// listener closes and in-flight requests get up to `shutdown_grace` to finish.
    pub fn shutdown(&self) {
        self.health.set_draining();
        let _ = self.shutdown.send(true);
    }

    /// Resolves once a shutdown has begun from inside (`POST /quitquitquit`) or by
    /// [`Running::shutdown`]; the caller then waits for [`Running::wait`].
    pub async fn shutdown_requested(&self) {
        wait_true(self.shutdown.subscribe()).await;
    }

    /// Waits until serving has stopped; true when every request finished within the grace.
    pub async fn wait(self) -> bool {
        self.task.await.unwrap_or(false)
    }
}

async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: config::ListenAddr::Tcp(addr),
            key,
            source,
        })
}

/// Binds and starts serving `config` with `credentials`; the egress proxy settings come from
/// the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), read once here.
pub async fn start(config: Config, credentials: Credentials) -> Result<Running, StartError> {
    start_with_egress(config, credentials, forward::Egress::from_env()).await
}

/// [`start`] with the egress proxy settings given rather than read from the environment.
pub async fn start_with_egress(
    config: Config,
    credentials: Credentials,
    egress: forward::Egress,
) -> Result<Running, StartError> {
    let metrics = Metrics::new();
    metrics.set_key_loaded(credentials.loaded_at);
    let store = CredentialStore::new(credentials);
    // A pin past its date starts anyway (a fleet must not crash-loop when a date passes), but
    // says so now and every hour, and the days-left metric goes negative.
    monitor::report(
        &config.services,
        catalog::Date::of(std::time::SystemTime::now()),
        &metrics,
        false,
    );
    let mut parts = app::ProxyParts::new(&config, store.clone(), metrics.clone(), &egress)?;
    if let Some(path) = &config.audit.file {
        parts.audit = layers::audit::Sink::file(path).map_err(|source| StartError::AuditFile {
            path: path.clone(),
            source,
        })?;
    }
    parts.telemetry =
        telemetry::Exporter::start(&config.telemetry, &metrics).map_err(StartError::Telemetry)?;
    let spans = parts.telemetry.clone();
    let listen_err = |source| StartError::Bind {
        addr: config.server.listen.clone(),
        key: "server.listen",
        source,
    };
    let listener = server::Listener::bind(
        &config.server.listen,
        config.server.socket_mode,
        config.server.reuse_port,
    )
    .await
    .map_err(listen_err)?;
    let admin_listener = bind(config.server.admin_listen, "server.admin_listen").await?;
    let listen = listener.local_addr().map_err(listen_err)?;
    // The endpoint catalog points clients at the address bound, not the one configured.
    parts.set_listen(&listen);
    if config.routing.rewrite_endpoint_catalog && listen.tcp().is_none() {
        tracing::info!(%listen, "endpoint catalog passed on as it is on this listener: its URLs cannot name a Unix socket");
    }
    let (service, install) = app::reloadable_service(&parts, &listen);
    let addr = listen
        .tcp()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config::ListenAddr::Tcp(config.server.admin_listen),
            key: "server.admin_listen",
            source,
        })?;
    let forward = match config.forward_proxy.listen {
        Some(listen) => Some(forward_proxy_parts(&config, listen, &metrics).await?),
        None => None,
    };
    let forward_addr = match (&forward, config.forward_proxy.listen) {
        (Some((listener, _)), Some(wanted)) => {
            Some(listener.local_addr().map_err(|source| StartError::Bind {
                addr: config::ListenAddr::Tcp(wanted),
                key: "forward_proxy.listen",
                source,
            })?)
        }
        _ => None,
    };
    let mut own = vec![("server.admin_listen", admin_addr)];
    if let Some(tcp) = listen.tcp() {
        own.push(("server.listen", tcp));
    }
    if let Some(f) = forward_addr {
        own.push(("forward_proxy.listen", f));
    }
    check_loops(&config.services, &own, &egress)?;
    let live = reload::Live {
        install,
        store: store.clone(),
        metrics: metrics.clone(),
        egress: egress.clone(),
        audit: parts.audit.clone(),
        telemetry: parts.telemetry.clone(),
        own,
        running: Arc::new(std::sync::Mutex::new(config.clone())),
    };
    let health = Arc::new(Health::default());
    let (tx, rx) = watch::channel(false);

    let admin = Admin {
        health: health.clone(),
        metrics: metrics.clone(),
        credentials: store.clone(),
        quit: config.server.enable_quit.then(|| tx.clone()),
        ca_pem: forward.as_ref().map(|(_, fp)| Arc::from(fp.ca.pem())),
    };
    if config.server.enable_quit && !admin_addr.ip().is_loopback() {
        tracing::warn!(%admin_addr, "server.enable_quit is on and the admin listener is not on loopback: anything that reaches it can stop the proxy");
    }
    let mut server_cfg = config.server.clone();
    // The descriptor budget: the data plane's cap leaves a reserve, so the admin listener
    // (with a small cap of its own) can always accept.
    let budget = server::fd_budget(server::raise_fd_limit());
    let max_connections = *server_cfg
        .max_connections
        .get_or_insert(budget.max_connections);
    if max_connections > budget.max_connections {
        tracing::warn!(
            max_connections,
            fd_limit = budget.limit,
            "server.max_connections exceeds what the file-descriptor limit allows for (about half of it, the rest for upstream connections and the admin listener)"
        );
    }
    let mut admin_cfg = config.server.clone();
    admin_cfg.max_connections = Some(admin::MAX_CONNECTIONS);
    // The admin listener outlives the data plane's drain so /readyz can say 503 meanwhile.
    let admin_task = tokio::spawn(async move {
        // Stopped by `abort` once the data plane has drained, never by the signal itself.
        server::serve(
            admin_listener,
            admin,
            &admin_cfg,
            std::future::pending(),
            std::time::Duration::from_secs(1),
        )
        .await
    });
    let delay = config.server.shutdown_delay;
    let grace = config.server.shutdown_grace;
    let monitor = monitor::spawn_monitor(
        config.services.clone(),
        metrics.clone(),
        egress,
        config.server.check_live_versions,
    );
    let task = tokio::spawn(async move {
        let stop = |rx| async move {
            wait_true(rx).await;
            // Keep accepting while Kubernetes removes the pod from its endpoints.
            tokio::time::sleep(delay).await;
        };
        // Both data-plane listeners share the one stack: one concurrency limit, one pool per
        // upstream, one set of metrics.
        let forward = async {
            match forward {
                Some((listener, fp)) => {
                    forward_proxy::serve(
                        listener,
                        fp,
                        service.clone(),
                        &server_cfg,
                        stop(rx.clone()),
                        grace,
                    )
                    .await
                }
                None => true,
            }
        };
        let drain = server::Drain {
            // From SIGTERM on, responses tell clients to stop reusing connections...
            draining: rx.clone(),
            // ...while the listener keeps accepting as Kubernetes removes the pod from its
            // endpoints.
            stop: stop(rx.clone()),
            grace,
        };
        let plain = server::serve_draining(listener, service.clone(), &server_cfg, drain);
        let (plain, forward) = tokio::join!(plain, forward);
        let drained = plain && forward;
        if !drained {
            tracing::warn!(grace = ?grace, "shutdown grace ran out with requests still in flight");
        }
        admin_task.abort();
        monitor.abort();
        if let Some(spans) = spans {
            // The last requests' spans, bounded so a dead collector cannot hold up the exit.
            spans.flush(std::time::Duration::from_secs(2)).await;
        }
        drained
    });
    health.set_ready();
    match forward_addr {
        Some(forward_addr) => {
            tracing::info!(addr = %listen, %admin_addr, %forward_addr, max_connections, fd_limit = budget.limit, "serving")
        }
        None => {
            tracing::info!(addr = %listen, %admin_addr, max_connections, fd_limit = budget.limit, "serving")
        }
    }
    Ok(Running {
        addr,
        listen,
        admin_addr,
        forward_addr,
        health,
        credentials: store,
        metrics,
        live,
        shutdown: tx,
        task,
    })
}

/// The forward proxy's listener and state: its CA (from files, else generated), written to
/// `ca_cert_out` when set.
async fn forward_proxy_parts(
    config: &Config,
    listen: SocketAddr,
    metrics: &Metrics,
) -> Result<(TcpListener, forward_proxy::ForwardProxy), StartError> {
    use forward_proxy::{ca::Authority, Intercepts};
    let fpc = &config.forward_proxy;
    let intercepts = Intercepts::new(&config.services);
    let ca = match (&fpc.ca_cert_file, &fpc.ca_key_file) {
        (Some(cert), Some(key)) => Authority::from_files(cert, key)?,
        _ => Authority::generate(&intercepts.hosts())?,
    };
    if let Some(out) = &fpc.ca_cert_out {
        ca.write_cert(out)?;
    }
    let listener = bind(listen, "forward_proxy.listen").await?;
    tracing::info!(
        ca = %ca.source,
        intercepts = ?intercepts.allowed(),
        "forward proxy: CONNECT accepted only for these authorities"
    );
    Ok((
        listener,
        forward_proxy::ForwardProxy {
            ca: Arc::new(ca),
            intercepts: Arc::new(intercepts),
            metrics: metrics.clone(),
        },
    ))
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(up: &str) -> config::ServiceConfig {
        config::ServiceConfig {
            name: "virtualserver".into(),
            upstream: config::Upstream::parse(up).unwrap(),
            api_version: "1.3".into(),
            region: None,
            timeout: std::time::Duration::from_secs(1),
            body_idle_timeout: std::time::Duration::from_secs(30),
            max_idle_connections: 32,
            ca_file: None,
            allow: None,
            allow_unsupported_version: false,
            retry: Default::default(),
            operation_versions: Vec::new(),
            intercept: Vec::new(),
            max_concurrent_requests: None,
        }
    }

    #[test]
    fn an_upstream_on_the_own_listener_is_a_loop() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        for (up, listen, looped) in [
            ("http://127.0.0.1:8080", local, true),
            ("http://localhost:8080", local, true),
            ("http://127.0.0.1:8080", any, true),
            ("http://[::1]:8080", "[::]:8080".parse().unwrap(), true),
            ("http://127.0.0.1:8081", local, false),
            (
                "https://virtualserver.kr-west1.e.samsungsdscloud.com",
                local,
                false,
            ),
            ("http://10.0.0.5:8080", local, false),
        ] {
            let r = check_loops(
                &[svc(up)],
                &[("server.listen", listen)],
                &forward::Egress::direct(),
            );
            assert_eq!(r.is_err(), looped, "{up} vs {listen}");
            if let Err(e) = r {
                let m = e.to_string();
                assert!(
                    m.contains("services.virtualserver.upstream") && m.contains("server.listen"),
                    "{m}"
                );
            }
        }
    }

    #[test]
    fn a_host_names_a_listener_by_ip_loopback_or_the_unspecified_address() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        for (host, port, listen, same) in [
            ("127.0.0.1", 8443, "127.0.0.1:8443", true),
            ("localhost", 8443, "127.0.0.1:8443", true),
            ("LocalHost.", 8443, "127.0.0.1:8443", true),
            ("proxy.localhost", 8443, "127.0.0.1:8443", true),
            ("localhost", 8443, "0.0.0.0:8443", true),
            ("127.0.0.1", 8443, "0.0.0.0:8443", true),
            ("0.0.0.0", 8443, "127.0.0.1:8443", true),
            ("[::1]", 8443, "[::1]:8443", true),
            ("[::1]", 8443, "[::]:8443", true),
            ("::ffff:127.0.0.1", 8443, "127.0.0.1:8443", true),
            ("10.0.0.5", 8443, "10.0.0.5:8443", true),
            ("10.0.0.5", 8443, "0.0.0.0:8443", false),
            ("localhost", 8443, "10.0.0.5:8443", false),
            ("127.0.0.1", 8444, "127.0.0.1:8443", false),
            ("127.0.0.2", 8443, "127.0.0.1:8443", false),
            ("[::1]", 8443, "127.0.0.1:8443", false),
            ("proxy.corp.example", 8443, "0.0.0.0:8443", false),
            ("notlocalhost", 8443, "127.0.0.1:8443", false),
        ] {
            assert_eq!(
                names_listener(host, port, at(listen)),
                same,
                "{host}:{port} vs {listen}"
            );
        }
    }

    #[test]
    fn an_egress_proxy_on_the_own_listener_is_a_loop() {
        let public = "https://virtualserver.kr-west1.e.samsungsdscloud.com";
        let forward: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let own = [
            ("server.listen", "127.0.0.1:8080".parse().unwrap()),
            ("forward_proxy.listen", forward),
        ];
        let to_self = forward::Egress::direct().with_https_proxy("http://localhost:8443");
        // (upstream, egress, looped)
        for (up, egress, looped) in [
            (public, to_self.clone(), true),
            (
                public,
                forward::Egress::direct().with_https_proxy("http://u:p@127.0.0.1:8080"),
                true,
            ),
            // HTTP_PROXY is the one for http upstreams.
            (
                "http://virtualserver.example",
                forward::Egress::direct().with_http_proxy("http://0.0.0.0:8443"),
                true,
            ),
            ("http://virtualserver.example", to_self.clone(), false),
            // Not proxied: NO_PROXY, a loopback upstream, another proxy.
            (
                public,
                to_self.clone().with_no_proxy(".samsungsdscloud.com"),
                false,
            ),
            ("http://127.0.0.1:9000", to_self.clone(), false),
            (
                public,
                forward::Egress::direct().with_https_proxy("http://127.0.0.1:3128"),
                false,
            ),
            (public, forward::Egress::direct(), false),
        ] {
            let r = check_loops(&[svc(up)], &own, &egress);
            assert_eq!(r.is_err(), looped, "{up} via {egress:?}");
            if let Err(e) = r {
                let m = e.to_string();
                assert!(
                    m.contains("_PROXY http://")
                        && m.contains("services.virtualserver")
                        && m.contains(".listen (127.0.0.1:")
                        && m.contains("loop")
                        && !m.contains("u:p"),
                    "{m}"
                );
            }
        }
    }
}

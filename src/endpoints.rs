//! The IAM endpoint catalog (`GET /v1/endpoints`:
//! `{"endpoints":[{"region","service_type","service_name","url"}]}`), rewritten so that a
//! client that follows it stays on the proxy: every `url` whose authority is a configured
//! service's upstream becomes that service's prefix URL on the proxy
//! (`http://<listen>/<service>`, the rest of the URL kept).
//!
//! A client that came through the forward proxy (`HTTPS_PROXY`, [`Via::Forward`]) reaches a
//! service by its public name through a tunnel, not by a loopback prefix (its requests to
//! `http://127.0.0.1` would not go through the forward listener at all). For it, an upstream's
//! URL becomes the service's first `services.NAME.intercept` authority
//! (`https://virtualserver.kr-west1.e.samsungsdscloud.com`, for an upstream that is a local
//! emulator), and a service with none keeps its URL: the upstream's own authority is the
//! public one the tunnel intercepts.
//!
//! Pure: bytes in, bytes out. Only the `url` strings change; every other byte of the body stays
//! as the upstream sent it, and a body with nothing to rewrite is handed back untouched. The
//! layer that applies it is [`crate::layers::endpoint_catalog`].

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::uri::Authority;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{ListenAddr, Upstream};

/// The catalog's path on a service that serves it.
pub const PATH: &str = "/v1/endpoints";

/// Whether `method` on the service-relative `path` asks for the endpoint catalog.
pub fn is_catalog_request(method: &http::Method, path: &str) -> bool {
    method == http::Method::GET && (path == PATH || path == "/v1/endpoints/")
}

/// Where clients reach the proxy, as a URL base (`http://HOST:PORT`): the listen address, with
/// a wildcard address (`0.0.0.0`, `::`) as the loopback one, which is how a sidecar's app
/// reaches it. `None` for a Unix socket, which no URL in a catalog can name.
pub fn proxy_base(listen: &ListenAddr) -> Option<String> {
    let addr = listen.tcp()?;
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Some(format!("http://{}", SocketAddr::new(ip, addr.port())))
}

/// Which listener the catalog request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The plain listener (`server.listen`): URLs become `http://<listen>/<service>`.
    Plain,
    /// The forward proxy (`HTTPS_PROXY`): URLs become the service's public intercepted name.
    Forward,
}

/// One configured service as the rewrite sees it.
#[derive(Clone, Debug)]
struct Service {
    name: String,
    host: String,
    /// The effective port (the scheme's default when the upstream names none).
    port: u16,
    /// `https://` + the first `services.NAME.intercept` authority (`:443` left out).
    public: Option<String>,
}

/// Where one catalog URL goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A configured service's upstream: this URL instead.
    To(String),
    /// A configured service's upstream that the client already reaches as it is (the forward
    /// proxy intercepts the upstream's own authority).
    Keep,
    /// No configured service's upstream: left as it is, and named in `Scp-Proxy-Unrouted`.
    Unrouted,
}

/// Every configured service's upstream, and where the proxy serves it. Built once at start.
#[derive(Clone, Debug)]
pub struct EndpointMap {
    services: Vec<Service>,
    /// `http://HOST:PORT` of the proxy's plain listener; `None` on a Unix socket, which no URL
    /// can name (plain-listener catalogs then pass as they are).
    base: Option<String>,
}

/// What [`EndpointMap::rewrite`] did to one catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// The new body; `None` when no URL was rewritten (the upstream's bytes stand).
    pub body: Option<Vec<u8>>,
    /// How many `url`s now point at the proxy.
    pub rewritten: usize,
    /// The entries left as they were (a service the proxy does not serve), by `service_name`
    /// (else the URL's authority), in catalog order, each once.
    pub unrouted: Vec<String>,
}

/// A body that is not an endpoint catalog: passed on unchanged by the layer.
#[derive(Debug, thiserror::Error)]
#[error("not an endpoint catalog ({{\"endpoints\":[...]}})")]
pub struct NotACatalog(#[source] serde_json::Error);

#[derive(Deserialize)]
struct Catalog<'a> {
    #[serde(borrow)]
    endpoints: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(default, borrow)]
    service_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    url: Option<&'a RawValue>,
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// `scheme://authority` + the rest (path, query, fragment; possibly empty).
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, after) = url.split_once("://")?;
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some((scheme, &after[..end], &after[end..]))
}

impl EndpointMap {
    /// `services` (name, upstream, intercepted authorities) served at `base` (see
    /// [`proxy_base`]).
    pub fn new<'a>(
        services: impl IntoIterator<Item = (&'a str, &'a Upstream, &'a [Authority])>,
        base: Option<String>,
    ) -> Self {
        let services = services
            .into_iter()
            .map(|(name, up, intercept)| {
                let port = up.port();
                // Intercepted names are tunnelled, so https; 443 is its default port.
                let public = intercept.first().map(|a| match a.port_u16() {
                    Some(443) => format!("https://{}", a.host()),
                    _ => format!("https://{a}"),
                });
                Service {
                    name: name.to_owned(),
                    host: up.authority.host().to_ascii_lowercase(),
                    port,
                    public,
                }
            })
            .collect();
        Self { services, base }
    }

    /// The same services, served at `base`.
    pub fn with_base(&self, base: Option<String>) -> Self {
        Self {
            services: self.services.clone(),
            base,
        }
    }

    /// Where `url` (an entry naming `service_name`) goes for a client that came `via` that
    /// listener.
    pub fn lookup(&self, via: Via, service_name: Option<&str>, url: &str) -> Lookup {
        let Some((name, rest)) = self.service_of(service_name, url) else {
            return Lookup::Unrouted;
        };
        match via {
            Via::Plain => match &self.base {
                Some(base) => Lookup::To(format!("{base}/{}{rest}", name.name)),
                None => Lookup::Keep,
            },
            Via::Forward => match &name.public {
                Some(public) => Lookup::To(format!("{public}{rest}")),
                None => Lookup::Keep,
            },
        }
    }

    /// Where `url` is on the plain listener, if its authority is a configured service's
    /// upstream.
    #[cfg(test)]
    fn route(&self, service_name: Option<&str>, url: &str) -> Option<String> {
        match self.lookup(Via::Plain, service_name, url) {
            Lookup::To(to) => Some(to),
            Lookup::Keep | Lookup::Unrouted => None,
        }
    }

    /// The configured service whose upstream `url` names, and the rest of the URL. Services
    /// sharing an upstream (every service on the emulator) are told apart by the entry's
    /// `service_name`.
    fn service_of<'u>(
        &self,
        service_name: Option<&str>,
        url: &'u str,
    ) -> Option<(&Service, &'u str)> {
        let (scheme, text, rest) = split_url(url)?;
        let authority: Authority = text.parse().ok()?;
        // `Authority` takes any text after the last ':' as the port; such a URL names no
        // upstream.
        let has_port = text.rsplit_once(':').is_some_and(|(_, t)| !t.contains(']'));
        let port = match authority.port_u16() {
            Some(p) => p,
            None if has_port => return None,
            None => default_port(scheme)?,
        };
        let host = authority.host();
        let mut at = self
            .services
            .iter()
            .filter(|s| s.port == port && s.host.eq_ignore_ascii_case(host));
        let first = at.next()?;
        let chosen = match at.next() {
            None => first,
            Some(second) => [first, second]
                .into_iter()
                .chain(at)
                .find(|s| Some(s.name.as_str()) == service_name)?,
        };
        Some((chosen, rest))
    }

    /// Rewrites the catalog in `body` for a client that came `via` that listener. Only the
    /// `url` string values change; an entry that is not an object, or has no string `url`, is
    /// left alone and not counted.
    pub fn rewrite(&self, via: Via, body: &[u8]) -> Result<Rewritten, NotACatalog> {
        let catalog: Catalog<'_> = serde_json::from_slice(body).map_err(NotACatalog)?;
        let origin = body.as_ptr() as usize;
        let mut splices: Vec<(usize, usize, String)> = Vec::new();
        let mut out = Rewritten::default();
        for raw in catalog.endpoints {
            let Ok(entry) = serde_json::from_str::<Entry<'_>>(raw.get()) else {
                continue;
            };
            let Some(url_raw) = entry.url else { continue };
            let Ok(url) = serde_json::from_str::<Cow<'_, str>>(url_raw.get()) else {
                continue;
            };
            let name = entry.service_name.as_deref();
            match self.lookup(via, name, &url) {
                Lookup::Keep => {}
                Lookup::To(to) if to == *url => {}
                Lookup::To(to) => {
                    // The raw value borrows from `body`: its bytes are where it sits there.
                    let start = url_raw.get().as_ptr() as usize - origin;
                    let end = start + url_raw.get().len();
                    if end <= body.len() {
                        let json = serde_json::to_string(&to).map_err(NotACatalog)?;
                        splices.push((start, end, json));
                        out.rewritten += 1;
                    }
                }
                Lookup::Unrouted => {
                    let label = match name.filter(|n| !n.is_empty()) {
                        Some(n) => n.to_owned(),
                        None => split_url(&url).map_or("?", |(_, a, _)| a).to_owned(),
                    };
                    if !out.unrouted.contains(&label) {
                        out.unrouted.push(label);
                    }
                }
            }
        }
        if !splices.is_empty() {
            let mut new = Vec::with_capacity(body.len() + splices.len() * 32);
            let mut at = 0;
            for (start, end, json) in &splices {
                new.extend_from_slice(&body[at..*start]);
                new.extend_from_slice(json.as_bytes());
                at = *end;
            }
            new.extend_from_slice(&body[at..]);
            out.body = Some(new);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VS: &str = "https://virtualserver.kr-west1.e.samsungsdscloud.com";
    const IAM: &str = "https://iam.e.samsungsdscloud.com";

    fn map() -> EndpointMap {
        let vs = Upstream::parse(VS).unwrap();
        let iam = Upstream::parse(IAM).unwrap();
        EndpointMap::new(
            [("virtualserver", &vs, &[][..]), ("iam", &iam, &[])],
            Some("http://127.0.0.1:8080".into()),
        )
    }

    fn entry(name: &str, url: &str) -> String {
        format!(
            r#"{{"region":"kr-west1","service_type":"scp-{name}","service_name":"{name}","url":"{url}"}}"#
        )
    }

    #[test]
    fn urls_of_configured_upstreams_point_at_the_proxy_and_nothing_else_changes() {
        let body = format!(
            "{{ \"endpoints\" : [\n  {},\n  {},\n  {}, {}\n], \"total\": 3 }}",
            entry("virtualserver", &format!("{VS}/")),
            entry("iam", IAM),
            entry("vpc", "https://vpc.kr-west1.e.samsungsdscloud.com"),
            entry("dns", "https://dns.kr-west1.e.samsungsdscloud.com/v1?x=1"),
        );
        let r = map().rewrite(Via::Plain, body.as_bytes()).unwrap();
        assert_eq!(r.rewritten, 2);
        assert_eq!(r.unrouted, ["vpc", "dns"]);
        let want = body
            .replace(&format!("{VS}/"), "http://127.0.0.1:8080/virtualserver/")
            .replace(IAM, "http://127.0.0.1:8080/iam");
        assert_eq!(String::from_utf8(r.body.unwrap()).unwrap(), want);
    }

    #[test]
    fn nothing_to_rewrite_hands_back_no_body() {
        let body = format!(
            "{{\"endpoints\":[{}]}}",
            entry("vpc", "https://vpc.kr-west1.e.samsungsdscloud.com")
        );
        let r = map().rewrite(Via::Plain, body.as_bytes()).unwrap();
        assert_eq!(
            r,
            Rewritten {
                body: None,
                rewritten: 0,
                unrouted: vec!["vpc".into()]
            }
        );
        assert_eq!(
            map().rewrite(Via::Plain, br#"{"endpoints":[]}"#).unwrap(),
            Rewritten::default()
        );
    }

    #[test]
    fn authority_matches_case_insensitively_with_default_ports() {
        let m = map();
        let to = |url: &str| m.route(Some("x"), url);
        assert_eq!(
            to("https://VirtualServer.KR-west1.e.samsungsdscloud.com:443/v1/images?a=b").as_deref(),
            Some("http://127.0.0.1:8080/virtualserver/v1/images?a=b")
        );
        assert_eq!(
            to("https://iam.e.samsungsdscloud.com?q").as_deref(),
            Some("http://127.0.0.1:8080/iam?q")
        );
        // Another port, another host, no scheme, a malformed authority: not the upstream.
        for url in [
            "https://iam.e.samsungsdscloud.com:8443",
            "http://iam.e.samsungsdscloud.com",
            "https://iam.e.samsungsdscloud.com.evil.example",
            "iam.e.samsungsdscloud.com",
            "https://iam.e.samsungsdscloud.com:x/",
            "",
        ] {
            assert_eq!(to(url), None, "{url}");
        }
    }

    #[test]
    fn services_sharing_an_upstream_are_told_apart_by_service_name() {
        let up = Upstream::parse("http://127.0.0.1:18080").unwrap();
        let m = EndpointMap::new(
            [("virtualserver", &up, &[][..]), ("iam", &up, &[])],
            Some("http://127.0.0.1:8080".into()),
        );
        let url = "http://127.0.0.1:18080";
        assert_eq!(
            m.route(Some("iam"), url).as_deref(),
            Some("http://127.0.0.1:8080/iam")
        );
        assert_eq!(
            m.route(Some("virtualserver"), url).as_deref(),
            Some("http://127.0.0.1:8080/virtualserver")
        );
        // Shared, and the entry names neither: which one is unknowable, so it stays.
        assert_eq!(m.route(Some("vpc"), url), None);
        assert_eq!(m.route(None, url), None);
        // One service at an upstream takes its entries whatever they are called (a service
        // configured under another name).
        assert_eq!(
            map().route(Some("vs"), VS).as_deref(),
            Some("http://127.0.0.1:8080/virtualserver")
        );
    }

    #[test]
    fn escaped_urls_are_decoded_before_matching_and_odd_entries_left_alone() {
        let body = r#"{"endpoints":[
            {"service_name":"iam","url":"https:\/\/iam.e.samsungsdscloud.com\u002fv1"},
            "not an object", 7, null,
            {"service_name":"nourl"},
            {"service_name":"numeric","url":5},
            {"url":"https://vpc.kr-west1.e.samsungsdscloud.com/"}
        ]}"#;
        let r = map().rewrite(Via::Plain, body.as_bytes()).unwrap();
        assert_eq!(r.rewritten, 1);
        assert_eq!(r.unrouted, ["vpc.kr-west1.e.samsungsdscloud.com"]);
        let text = String::from_utf8(r.body.unwrap()).unwrap();
        assert!(
            text.contains(r#"{"service_name":"iam","url":"http://127.0.0.1:8080/iam/v1"}"#),
            "{text}"
        );
        assert!(text.contains("\"not an object\", 7, null"), "{text}");
    }

    #[test]
    fn through_the_forward_proxy_urls_become_the_intercepted_names_not_loopback() {
        // virtualserver on a local emulator, intercepting SCP's name; iam on SCP itself.
        let emu = Upstream::parse("http://127.0.0.1:18080").unwrap();
        let iam = Upstream::parse(IAM).unwrap();
        let intercept: [Authority; 1] = ["virtualserver.kr-west1.e.samsungsdscloud.com:443"
            .parse()
            .unwrap()];
        let odd: [Authority; 1] = ["iam.example:8443".parse().unwrap()];
        let m = EndpointMap::new(
            [("virtualserver", &emu, &intercept[..]), ("iam", &iam, &[])],
            Some("http://127.0.0.1:8080".into()),
        );
        let body = format!(
            "{{\"endpoints\":[{},{},{}]}}",
            entry("virtualserver", "http://127.0.0.1:18080/v1"),
            entry("iam", IAM),
            entry("vpc", "https://vpc.kr-west1.e.samsungsdscloud.com"),
        );
        let r = m.rewrite(Via::Forward, body.as_bytes()).unwrap();
        assert_eq!(r.rewritten, 1);
        assert_eq!(r.unrouted, ["vpc"]);
        let text = String::from_utf8(r.body.unwrap()).unwrap();
        assert_eq!(
            text,
            body.replace(
                "http://127.0.0.1:18080/v1",
                "https://virtualserver.kr-west1.e.samsungsdscloud.com/v1"
            )
        );
        assert!(!text.contains("127.0.0.1"), "{text}");
        // The same catalog on the plain listener: loopback prefixes.
        let plain = m.rewrite(Via::Plain, body.as_bytes()).unwrap();
        assert_eq!(plain.rewritten, 2);
        // SCP's own catalog through the tunnel: every URL already the public one, so the
        // upstream's bytes stand.
        let scp = format!("{{\"endpoints\":[{}]}}", entry("iam", IAM));
        let r = m.rewrite(Via::Forward, scp.as_bytes()).unwrap();
        assert_eq!((r.body, r.rewritten, r.unrouted.len()), (None, 0, 0));
        // An intercepted authority on another port keeps it.
        let m = EndpointMap::new(
            [("iam", &emu, &odd[..])],
            Some("http://127.0.0.1:8080".into()),
        );
        assert_eq!(
            m.lookup(Via::Forward, Some("iam"), "http://127.0.0.1:18080"),
            Lookup::To("https://iam.example:8443".into())
        );
    }

    #[test]
    fn a_body_that_is_not_a_catalog_is_refused() {
        for body in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"endpoints":{}}"#,
            br#"{"endpoints":[],"endpoints":[]}"#,
            b"{\"endpoints\":[]} trailing",
        ] {
            assert!(
                map().rewrite(Via::Plain, body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_proxy_base_is_reachable_from_the_pod() {
        let tcp = |s: &str| ListenAddr::Tcp(s.parse().unwrap());
        assert_eq!(
            proxy_base(&tcp("127.0.0.1:8080")).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            proxy_base(&tcp("0.0.0.0:8080")).as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            proxy_base(&tcp("[::]:8080")).as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(
            proxy_base(&tcp("10.0.0.5:9000")).as_deref(),
            Some("http://10.0.0.5:9000")
        );
        assert_eq!(proxy_base(&ListenAddr::Unix("/run/p.sock".into())), None);
    }
}

//! Re-signed retries through the real listener against a scripted upstream.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;

async fn proxy(up: &str, retry: &str) -> (scp_auth_proxy::Running, tempfile::TempDir) {
    let (cfg, dir) = TestConfig::new(up)
        .server("check_live_versions = false")
        .raw(retry)
        .load();
    (start_proxy(cfg).await, dir)
}

fn metric(p: &scp_auth_proxy::Running, outcome: &str) -> u64 {
    let text = p.metrics.encode();
    let key =
        format!("scp_auth_proxy_retries_total{{service=\"virtualserver\",outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.parse().unwrap())
}

fn header(r: &Recorded, name: &str) -> String {
    r.headers[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_get_after_a_503_is_sent_again_freshly_signed() {
    let up = ScriptedUpstream::start(vec![
        Scripted::new(503, "busy").header("content-type", "text/plain"),
        Scripted::new(200, "{\"images\":[]}"),
    ])
    .await;
    let (p, _dir) = proxy(&up.base(), "").await;
    let (status, _, body) = send(&client(), get(p.addr, "/v1/images?limit=1")).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"{\"images\":[]}"[..]));
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "one retry");
    for r in &seen {
        assert!(
            r.signature_ok,
            "attempt not validly signed: {:?}",
            r.headers
        );
        assert_eq!(r.target, "/v1/images?limit=1");
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(header(a, "scp-timestamp"), header(b, "scp-timestamp"));
    assert_ne!(header(a, "scp-signature"), header(b, "scp-signature"));
    println!(
        "attempt 1: Scp-Timestamp {} Scp-Signature {}\nattempt 2: Scp-Timestamp {} Scp-Signature {}",
        header(a, "scp-timestamp"),
        header(a, "scp-signature"),
        header(b, "scp-timestamp"),
        header(b, "scp-signature")
    );
    assert_eq!((metric(&p, "retried"), metric(&p, "recovered")), (1, 1));
}

#[tokio::test]
async fn a_post_is_not_retried_unless_its_operation_opts_in() {
    let up = ScriptedUpstream::start(vec![Scripted::new(503, "busy")]).await;
    let (p, _dir) = proxy(&up.base(), "").await;
    let post = |addr: std::net::SocketAddr, target: &str, body: &'static str| {
        Request::post(format!("http://{addr}{target}"))
            .body(common::body(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let (status, _, _) = send(&client(), post(p.addr, "/v1/images", "{\"name\":\"a\"}")).await;
    assert_eq!(status, 503);
    assert_eq!(up.requests().len(), 1, "a POST must not be retried");
    assert_eq!(metric(&p, "retried"), 0);
    p.shutdown();

    // Opted in: an empty-bodied POST is retried; a streamed body never is.
    let up = ScriptedUpstream::start(vec![Scripted::new(503, "busy")]).await;
    let (p, _dir) = proxy(
        &up.base(),
        "[services.virtualserver.retry]\noperations = [\"POST /v1/images/*/refresh\"]",
    )
    .await;
    let (status, _, _) = send(&client(), post(p.addr, "/v1/images/i-1/refresh", "")).await;
    assert_eq!(status, 503);
    assert_eq!(up.requests().len(), 2);
    let (status, _, _) = send(
        &client(),
        post(p.addr, "/v1/images/i-1/refresh", "streamed"),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        up.requests().len(),
        3,
        "a streamed body must not be retried"
    );
    assert_eq!(metric(&p, "exhausted"), 1);
}

#[tokio::test]
async fn the_budget_stops_retries() {
    let up = ScriptedUpstream::start(vec![Scripted::new(502, "down")]).await;
    let (p, _dir) = proxy(
        &up.base(),
        "[services.virtualserver.retry]\nbudget_percent = 0",
    )
    .await;
    for _ in 0..5 {
        let (status, _, _) = send(&client(), get(p.addr, "/v1/images")).await;
        assert_eq!(status, 502);
    }
    let reserve = scp_auth_proxy::layers::retry::RESERVE as usize;
    assert_eq!(up.requests().len(), 5 + reserve);
    assert_eq!(metric(&p, "retried") as usize, reserve);
    assert_eq!(metric(&p, "budget") as usize, 5 - reserve);
}

#[tokio::test]
async fn connect_failures_and_waf_417s_are_retried_and_off_turns_it_off() {
    // Nothing listens there: both attempts fail to connect.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let (p, _dir) = proxy(&dead, "").await;
    let (status, _, body) = send(&client(), get(p.addr, "/v1/images")).await;
    assert_eq!(
        (status.as_u16(), error_code(&body).as_str()),
        (502, "upstream_unreachable")
    );
    assert_eq!((metric(&p, "retried"), metric(&p, "exhausted")), (1, 1));

    let up = ScriptedUpstream::start(vec![
        Scripted::new(417, "<html>blocked</html>").header("content-type", "text/html"),
        Scripted::new(200, "{}"),
    ])
    .await;
    let (p, _dir) = proxy(&up.base(), "").await;
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 200);
    assert_eq!(up.requests().len(), 2);

    let up = ScriptedUpstream::start(vec![Scripted::new(503, "busy")]).await;
    let (p, _dir) = proxy(
        &up.base(),
        "[services.virtualserver.retry]\nmax_attempts = 1",
    )
    .await;
    assert_eq!(send(&client(), get(p.addr, "/v1/images")).await.0, 503);
    assert_eq!(up.requests().len(), 1);
    assert_eq!(metric(&p, "retried"), 0);
}

//! Span export through the real listener to a local OTLP/HTTP receiver: the span of a request
//! that sent a traceparent continues its trace, the span id is the parent the upstream saw,
//! unsampled requests are not exported, and a refused request's span names its error code.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// What the receiver got: path, content type, body.
type Posts = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A minimal OTLP/HTTP receiver on 127.0.0.1: records each POST, answers 200 `{}`.
async fn receiver() -> (std::net::SocketAddr, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let posts: Posts = Arc::default();
    let seen = posts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let bytes = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let ct = parts
                            .headers
                            .get("content-type")
                            .map(|v| v.to_str().unwrap_or_default().to_owned())
                            .unwrap_or_default();
                        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        seen.lock()
                            .unwrap()
                            .push((parts.uri.path().to_owned(), ct, v));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, posts)
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_local_otlp_receiver() {
    let up = ScriptedUpstream::start(vec![Scripted::new(200, "{}")]).await;
    let (recv, posts) = receiver().await;
    let toml = basic_toml(&up.base(), "", r#"allow = ["GET /v1/images/*"]"#)
        + &format!("[telemetry]\notlp_endpoint = \"http://{recv}\"\nservice_name = \"sidecar-under-test\"\n");
    let (mut cfg, _dir) = config_from(&toml);
    cfg.server.check_live_versions = false;
    let p = start_proxy(cfg).await;

    let with_parent = |flags: &str| {
        Request::get(format!("http://{}/v1/images/img-1", p.addr))
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-{flags}"))
            .body(body(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&client(), with_parent("01")).await.0, 200);
    assert_eq!(
        send(&client(), get(p.addr, "/v1/images/img-2")).await.0,
        200
    );
    // The caller decided not to sample: no span.
    assert_eq!(send(&client(), with_parent("00")).await.0, 200);
    let refused = Request::delete(format!("http://{}/v1/images/img-3", p.addr))
        .body(body(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), refused).await.0, 403);

    // Shutdown flushes what is queued: after it, the receiver holds every span.
    p.shutdown();
    assert!(p.wait().await);
    let posts = posts.lock().unwrap().clone();
    assert!(!posts.is_empty(), "no OTLP export arrived");
    let mut spans = Vec::new();
    for (path, ct, v) in &posts {
        assert_eq!(path, "/v1/traces");
        assert_eq!(ct, "application/json");
        let rs = &v["resourceSpans"][0];
        let name = &rs["resource"]["attributes"][0];
        assert_eq!(
            (&name["key"], &name["value"]["stringValue"]),
            (
                &Value::from("service.name"),
                &Value::from("sidecar-under-test")
            )
        );
        spans.extend(
            rs["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .cloned(),
        );
    }
    println!("first span: {}", spans[0]);
    assert_eq!(spans.len(), 3, "{spans:?}");
    let seen = up.requests();
    assert_eq!(seen.len(), 3);
    let sent_parent = |i: usize| {
        let tp = seen[i].headers["traceparent"].to_str().unwrap().to_owned();
        let parts: Vec<String> = tp.split('-').map(str::to_owned).collect();
        (parts[1].clone(), parts[2].clone(), parts[3].clone())
    };

    // 1: the caller's trace continues; the span's id is the parent the upstream saw.
    let s = &spans[0];
    let (trace, span_id, flags) = sent_parent(0);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(s["traceId"], TRACE);
    assert_eq!(s["parentSpanId"], CALLER_SPAN);
    assert_eq!(s["spanId"], span_id.as_str());
    assert_eq!(s["name"], "GET /v1/images/*");
    assert_eq!(s["kind"], 2);
    assert_eq!(attr(s, "http.response.status_code")["intValue"], "200");
    assert_eq!(attr(s, "scp.service")["stringValue"], "virtualserver");
    let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && end >= start);
    assert!(
        !s.to_string().contains("img-1"),
        "a raw id in the span: {s}"
    );

    // 2: no traceparent: the proxy starts a sampled trace and is its root.
    let s = &spans[1];
    let (trace, span_id, flags) = sent_parent(1);
    assert_eq!(flags, "01");
    assert_eq!(s["traceId"], trace.as_str());
    assert_eq!(s["spanId"], span_id.as_str());
    assert!(s.get("parentSpanId").is_none(), "{s}");

    // 3 was unsampled (flags kept 00 upstream); 4 was refused before the upstream.
    assert_eq!(sent_parent(2).2, "00");
    let s = &spans[2];
    assert_eq!(s["name"], "DELETE /v1/images/*");
    assert_eq!(
        attr(s, "scp_auth_proxy.error_code")["stringValue"],
        "operation_not_allowed"
    );
    assert_eq!(attr(s, "http.response.status_code")["intValue"], "403");
    let all = serde_json::to_string(&posts.iter().map(|p| &p.2).collect::<Vec<_>>()).unwrap();
    assert!(!all.contains(SECRET) && !all.to_lowercase().contains("signature"));
}

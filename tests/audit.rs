//! The audit record and trace propagation, through the real listener: the fields of a
//! forwarded and a refused request, a sentinel secret absent, and a traceparent passed on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Request;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn records(path: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn forwarded_and_refused_records_name_the_operation_not_the_ids() {
    let up = ScriptedUpstream::start(vec![
        Scripted::new(200, "{\"id\":\"img-123\"}")
            .header("content-type", "application/json")
            .header("x-request-id", "scp-req-77"),
        Scripted::new(403, "{\"errors\":[]}")
            .header("content-type", "application/json")
            .header("x-scp-request-id", "scp-req-78"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let toml = basic_toml(
        &up.base(),
        "acct-1",
        r#"allow = ["GET /v1/images/*", "GET /v1/images"]"#,
    ) + &format!("[audit]\nfile = \"{}\"\n", file.display());
    let (mut cfg, _cfg_dir) = config_from(&toml);
    cfg.server.check_live_versions = false;
    let p = start_proxy(cfg).await;

    let req = Request::get(format!("http://{}/v1/images/img-123?x=1", p.addr))
        .header("x-request-id", "client-req-1")
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("tracestate", "vendor=abc")
        .body(body(bytes::Bytes::new()))
        .unwrap();
    let (status, _, _) = send(&client(), req).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(
        &client(),
        Request::delete(format!("http://{}/virtualserver/v1/images/img-9", p.addr))
            .body(body(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    // The upstream refuses this one: forwarded, with the explainer's hint named.
    let (status, headers, _) = send(&client(), get(p.addr, "/v1/images/img-5")).await;
    assert_eq!(status, 403);
    println!(
        "Scp-Proxy-Hint: {}",
        headers["scp-proxy-hint"].to_str().unwrap()
    );

    let recs = records(&file, 3);
    assert_eq!(recs.len(), 3, "{recs:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    println!("audit line: {}", text.lines().next().unwrap());
    assert!(!text.contains(SECRET), "the secret reached the audit file");
    assert!(
        !text.contains("img-123") && !text.contains("img-9") && !text.contains("img-5"),
        "raw ids: {text}"
    );
    for r in &recs {
        assert!(!r.to_string().to_lowercase().contains("signature"), "{r}");
    }
    let (f, r) = (&recs[0], &recs[1]);
    assert_eq!(f["request_id"], "client-req-1");
    assert_eq!(f["trace_id"], TRACE);
    assert_eq!(f["service"], "virtualserver");
    assert_eq!(f["operation"], "GET /v1/images/*");
    assert_eq!(f["api_version"], "virtualserver 1.3");
    assert_eq!(f["decision"], "forwarded");
    assert_eq!(f["code"], serde_json::Value::Null);
    assert_eq!(
        (f["status"].as_u64(), f["upstream_status"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(f["upstream_request_id"], "scp-req-77");
    assert_eq!(f["hint"], serde_json::Value::Null);
    assert_eq!(f["response_bytes"], 16);
    assert_eq!(f["access_key_id"], ACCESS_KEY);
    assert!(f["latency_ms"].as_f64().unwrap() >= f["upstream_ms"].as_f64().unwrap());
    assert!(f["time"].as_str().unwrap().ends_with('Z'));

    assert_eq!(r["decision"], "refused");
    assert_eq!(r["code"], "operation_not_allowed");
    assert_eq!(r["status"], 403);
    assert_eq!(r["upstream_status"], serde_json::Value::Null);
    assert_eq!(r["api_version"], serde_json::Value::Null);
    assert_eq!(r["service"], "virtualserver");
    assert_eq!(r["operation"], "DELETE /v1/images/*");
    assert_eq!(r["trace_id"].as_str().unwrap().len(), 32);
    assert_ne!(r["trace_id"], TRACE);

    let u = &recs[2];
    assert_eq!(u["decision"], "forwarded");
    assert_eq!(u["operation"], "GET /v1/images/*");
    assert_eq!(
        (u["status"].as_u64(), u["upstream_status"].as_u64()),
        (Some(403), Some(403))
    );
    assert_eq!(u["upstream_request_id"], "scp-req-78");
    assert_eq!(u["hint"], "forbidden");

    // Trace context went upstream: same trace, the proxy's own span as the parent.
    let seen = up.requests();
    assert_eq!(
        seen.len(),
        2,
        "the refused request must not reach the upstream"
    );
    let tp = seen[0].headers["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with(&format!("00-{TRACE}-")) && tp.ends_with("-01"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "the parent must be the proxy's span: {tp}"
    );
    assert_eq!(seen[0].headers["tracestate"], "vendor=abc");
    assert!(seen[0].signature_ok);
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_and_access_lines_in_the_json_log_carry_the_trace_id() {
    let up = RecordingUpstream::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = dir.path().join("p.toml");
    let toml = basic_toml(&up.base(), "", "").replace(
        "[credentials]",
        &format!("[credentials]\nsecret_key_file = \"{}\"", secret.display()),
    );
    std::fs::write(&cfg, toml).unwrap();
    let p = Proc::start(&["--config", cfg.to_str().unwrap()], &[]);
    let req = Request::get(format!("http://{}/v1/images", p.addr))
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-00"))
        .body(body(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, 200);
    assert_eq!(send(&client(), get(p.addr, "/v1/images/../x")).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    let find = |target: &str| {
        p.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == target)
            .collect::<Vec<_>>()
    };
    while find("audit").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = find("audit");
    assert_eq!(audit.len(), 2, "{}", p.log());
    assert_eq!(audit[0]["trace_id"], TRACE);
    assert_eq!(audit[0]["decision"], "forwarded");
    assert_eq!(audit[0]["operation"], "GET /v1/images");
    assert_eq!(audit[0]["access_key_id"], ACCESS_KEY);
    let access = find("access");
    assert_eq!(access[0]["trace_id"], TRACE);
    assert!(!p.log().contains(SECRET));
}

//! The signer per request: what `SignLayer` pays for every forwarded request (clone the keyed
//! HMAC state, hash the string to sign in pieces, base64 the MAC onto the stack).
//!
//! Run with `cargo bench --bench signer`; `cargo test` does not run it.

use criterion::{criterion_group, criterion_main, Criterion};
use scp_auth_proxy::signer::{SignInput, SigningKey};
use std::hint::black_box;

fn signer(c: &mut Criterion) {
    let key = SigningKey::new(b"bench-secret-0123456789abcdef0123456789abcdef");
    let base = "https://virtualserver.kr-west1.e.samsungsdscloud.com";
    let get = "/v1/images?limit=10";
    let post = "/v1/images/6f1c0d9e-3a34-4c6b-9b1e-0d4b0e3f2a11/import";
    let get_url = [base, get];
    let post_url = [base, post];
    let input = |method, url_parts| SignInput {
        method,
        url_parts,
        timestamp: "1764190000456",
        access_key: "bench-ak",
        account_id: "bench-account",
        client_type: "Openapi",
    };
    let mut g = c.benchmark_group("signer");
    g.bench_function("sign GET", |b| {
        let i = input("GET", &get_url);
        b.iter(|| black_box(key.sign(black_box(&i))))
    });
    g.bench_function("sign POST import", |b| {
        let i = input("POST", &post_url);
        b.iter(|| black_box(key.sign(black_box(&i))))
    });
    g.bench_function("mac only (no base64)", |b| {
        let i = input("GET", &get_url);
        b.iter(|| black_box(key.mac(black_box(&i))))
    });
    g.bench_function("key setup (once per reload)", |b| {
        b.iter(|| black_box(SigningKey::new(black_box(b"bench-secret"))))
    });
    g.finish();
}

criterion_group!(benches, signer);
criterion_main!(benches);

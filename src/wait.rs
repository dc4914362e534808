//! `scp-auth-proxy wait`: block until a sidecar's admin listener says ready, for an init step
//! or an entrypoint of an app that must not start before the proxy.
//!
//! Guarantees: returns once `GET /readyz` answers 200; polls every [`POLL`] with each attempt
//! bounded by [`ATTEMPT`]; never waits past the deadline it is given, and the timeout error
//! says what the last attempt saw (connection refused, 503 while draining, ...).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pause between attempts.
pub(crate) const POLL: Duration = Duration::from_millis(100);
/// Longest one attempt may take (connect, send, read the status line).
pub(crate) const ATTEMPT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("http://{admin}/readyz did not answer 200 within {} (last attempt: {last})", humantime::format_duration(*timeout))]
    Timeout {
        admin: SocketAddr,
        timeout: Duration,
        last: String,
    },
}

/// Where to reach an admin listener that listens on `addr`: an unspecified address
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Polls `admin`'s `/readyz` until it answers 200 or `timeout` passes; returns how long it took.
pub(crate) async fn until_ready(
    admin: SocketAddr,
    timeout: Duration,
) -> Result<Duration, WaitError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = String::from("no attempt made");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::Timeout {
                admin,
                timeout,
                last,
            });
        }
        match tokio::time::timeout(ATTEMPT.min(left), probe(admin)).await {
            Ok(Ok(200)) => return Ok(started.elapsed()),
            Ok(Ok(status)) => last = format!("status {status}"),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {
                last = format!(
                    "no answer within {}",
                    humantime::format_duration(ATTEMPT.min(left))
                )
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(POLL.min(left)).await;
    }
}

/// One `GET /readyz`; the status code of the answer.
async fn probe(admin: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(admin).await?;
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    // The status line fits in the first few bytes; the rest of the answer does not matter.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = s.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
    head.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP answer: {head:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_is_reached_on_loopback() {
        let a: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        assert_eq!(reachable(a), "127.0.0.1:9901".parse().unwrap());
        let a: SocketAddr = "[::]:9901".parse().unwrap();
        assert_eq!(reachable(a), "[::1]:9901".parse().unwrap());
        let a: SocketAddr = "10.0.0.1:9901".parse().unwrap();
        assert_eq!(reachable(a), a);
    }

    #[tokio::test]
    async fn times_out_against_nothing_and_says_why() {
        // A port just freed: nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let t = Instant::now();
        let err = until_ready(addr, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        let msg = err.to_string();
        assert!(msg.contains("within 300ms"), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }
}

//! The version monitor: the I/O side of the version lifecycle. Reads a service's live version
//! list, logs findings and keeps `scp_auth_proxy_api_version_days_left` current while serving.
//! The verdicts themselves are pure and live in [`crate::policy::lifecycle`].
//!
//! Guarantees: start-up never waits for the live check (it runs in the background, bounded by
//! [`LIVE_TIMEOUT`] and [`LIVE_MAX_BODY`] bytes); a pin past its date is logged at start and
//! again every [`RELOG_EVERY`], never fails serving.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};

use crate::body::NoTrailers;
use crate::catalog::Date;
use crate::config::ServiceConfig;
use crate::forward::{client_for, Egress};
use crate::metrics::{Metrics, PinLabel};
use crate::policy::lifecycle::{assess, compare_live, parse_live, Finding, LiveVersion, Severity};

/// How long the live version check may take.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest version-list body read.
pub const LIVE_MAX_BODY: usize = 256 * 1024;

/// Reads `svc`'s live version list: unsigned `GET /` on the service root, within `timeout`,
/// through the same egress (and CA file) as forwarded requests.
pub async fn fetch_live(
    svc: &ServiceConfig,
    egress: &Egress,
    timeout: Duration,
) -> Result<Vec<LiveVersion>, String> {
    let client = client_for(svc, egress).map_err(|e| e.to_string())?;
    let req = http::Request::get(format!("{}/", svc.upstream.base))
        .header(http::header::ACCEPT, "application/json")
        .body(NoTrailers::new(crate::body::empty()))
        .map_err(|e| e.to_string())?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("GET {}/ failed: {e}", svc.upstream.base))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), LIVE_MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the version list failed: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("GET {}/ answered {status}", svc.upstream.base));
        }
        parse_live(&body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("GET {}/ took longer than {timeout:?}", svc.upstream.base))?
}

/// How often an unsupported pin is logged again (and the days-left metric refreshed).
pub const RELOG_EVERY: Duration = Duration::from_secs(3600);

fn log(f: &Finding) {
    let op = f.operation.as_deref().unwrap_or("");
    match f.severity {
        Severity::Error => {
            tracing::error!(service = %f.service, operation = op, kind = f.kind, "api version: {}", f.message)
        }
        Severity::Warn => {
            tracing::warn!(service = %f.service, operation = op, kind = f.kind, "api version: {}", f.message)
        }
        Severity::Info => {
            tracing::info!(service = %f.service, operation = op, kind = f.kind, "api version: {}", f.message)
        }
    }
}

/// Assesses every pin (operation pins too) on `today`, sets
/// `scp_auth_proxy_api_version_days_left{service[, operation]}`, and logs the findings (only
/// errors when `errors_only`). Returns whether any pin is unsupported.
pub fn report(
    services: &[ServiceConfig],
    today: Date,
    metrics: &Metrics,
    errors_only: bool,
) -> bool {
    let mut unsupported = false;
    for pin in services.iter().flat_map(|s| s.pins()) {
        let a = assess(pin, today);
        if let Some(d) = a.days_left {
            metrics
                .version_days_left
                .get_or_create(&PinLabel {
                    service: pin.service.to_owned(),
                    operation: pin.op.map(|r| r.text.clone()),
                })
                .set(d);
        }
        unsupported |= a.is_unsupported();
        for f in &a.findings {
            if !errors_only || f.severity == Severity::Error {
                log(f);
            }
        }
    }
    unsupported
}

/// The background side of serving: once, each service's live version list is compared with
/// the catalog (when `check_live`; loopback upstreams, the emulator or a test double, are
/// skipped); then every hour the days-left metric is refreshed and unsupported pins are logged
/// again. Start-up never waits for it.
pub fn spawn_monitor(
    services: Vec<ServiceConfig>,
    metrics: Metrics,
    egress: Egress,
    check_live: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if check_live {
            let checks = services
                .iter()
                .filter(|s| !s.upstream.is_loopback())
                .map(|svc| {
                    let egress = &egress;
                    async move {
                        match fetch_live(svc, egress, LIVE_TIMEOUT).await {
                            Ok(live) => compare_live(svc.pin(), &live).iter().for_each(log),
                            Err(e) => tracing::warn!(
                                service = %svc.name,
                                "api version: could not read the live version list ({e}); set server.check_live_versions = false to skip this check"
                            ),
                        }
                    }
                });
            futures_util::future::join_all(checks).await;
        }
        let mut tick = tokio::time::interval(RELOG_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate: start-up has just reported.
        tick.tick().await;
        loop {
            tick.tick().await;
            report(
                &services,
                Date::of(std::time::SystemTime::now()),
                &metrics,
                true,
            );
        }
    })
}

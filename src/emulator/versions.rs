//! `Scp-Api-Version` as the cloud treats it, from [`crate::catalog`] (the one place the
//! versions and their dates live).
//!
//! No header: served as the CURRENT version. A header must read `<service> <MAJOR.MINOR>`,
//! name the service the endpoint belongs to, and a version the catalog knows for the operation
//! called and still supports on today's date (the last day is inclusive); otherwise 406. An
//! operation outside every catalog set (the IAM endpoint catalog, security groups) accepts any
//! well-formed version of its service: the catalog has no word on it, so neither does the
//! emulator.

use http::{HeaderMap, HeaderName, StatusCode};

use super::response::ScpError;
use crate::catalog::{self, Date, Status};

pub(crate) const SCP_API_VERSION: HeaderName = HeaderName::from_static("scp-api-version");

/// Why a request's `Scp-Api-Version` is not acceptable (406).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VersionError {
    Malformed { sent: String },
    OtherService { sent: String, service: &'static str },
    Unknown { sent: String, known: String },
    Planned { sent: String },
    Ended { sent: String, last_day: Date },
}

impl VersionError {
    pub(crate) fn to_error(&self) -> ScpError {
        let detail = match self {
            VersionError::Malformed { sent } => format!(
                "Scp-Api-Version {sent:?} is not \"<service> <MAJOR.MINOR>\" \
                 (e.g. \"virtualserver 1.3\")"
            ),
            VersionError::OtherService { sent, service } => format!(
                "Scp-Api-Version {sent:?} names another service; this endpoint belongs to \
                 {service}"
            ),
            VersionError::Unknown { sent, known } => {
                format!("Scp-Api-Version {sent:?} is not a known version (known: {known})")
            }
            VersionError::Planned { sent } => {
                format!("Scp-Api-Version {sent:?} is PLANNED and cannot be called yet")
            }
            VersionError::Ended { sent, last_day } => format!(
                "Scp-Api-Version {sent:?} is no longer supported: its last day was {last_day}; \
                 move to a supported version (GET / lists them)"
            ),
        };
        ScpError::new(
            StatusCode::NOT_ACCEPTABLE,
            "ApiVersion.NotAcceptable",
            "Not Acceptable",
            detail,
        )
    }
}

/// The catalog set `method` on the service-relative `path` belongs to, if any.
fn set_of(service: &str, method: &str, path: &str) -> Option<&'static catalog::OperationSet> {
    catalog::sets_of(service).find(|set| {
        set.operations.iter().any(|op| {
            crate::policy::allowlist::Rule::parse(op).is_ok_and(|r| r.matches(method, path))
        })
    })
}

/// Checks the request's `Scp-Api-Version` for `method` on `path`, an endpoint of `service`,
/// on `today`.
pub(crate) fn check(
    headers: &HeaderMap,
    service: &'static str,
    method: &str,
    path: &str,
    today: Date,
) -> Result<(), VersionError> {
    let mut all = headers.get_all(&SCP_API_VERSION).iter();
    let value = match (all.next(), all.next()) {
        (None, _) => return Ok(()),
        (Some(v), None) => v,
        (Some(v), Some(_)) => {
            return Err(VersionError::Malformed {
                sent: String::from_utf8_lossy(v.as_bytes()).into_owned() + " (sent twice)",
            })
        }
    };
    let sent = String::from_utf8_lossy(value.as_bytes()).into_owned();
    let Some((svc, version)) = sent.trim().split_once(' ') else {
        return Err(VersionError::Malformed { sent });
    };
    if svc.is_empty() || !crate::config::is_major_minor(version) {
        return Err(VersionError::Malformed { sent });
    }
    if svc != service {
        return Err(VersionError::OtherService { sent, service });
    }
    let Some(set) = set_of(service, method, path) else {
        return Ok(());
    };
    let Some(v) = catalog::find_in(set, version) else {
        let known = catalog::versions_in(set)
            .map(|v| v.version)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(VersionError::Unknown { sent, known });
    };
    if v.status == Status::Planned {
        return Err(VersionError::Planned { sent });
    }
    match v.last_day {
        Some(last_day) if !v.is_supported_on(today) => Err(VersionError::Ended { sent, last_day }),
        _ => Ok(()),
    }
}

/// The unsigned `GET /` answer: `{"versions":[{"id","status","not_before","links"}]}` for
/// `service`, newest first. `not_before` is the last supported day (null: none announced).
pub(crate) fn list(service: &str, base_url: &str) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = catalog::versions_of(service)
        .map(|v| {
            serde_json::json!({
                "id": format!("v{}", v.version),
                "status": v.status.as_str(),
                "not_before": v.last_day.map(|d| d.to_string()),
                "links": [{ "rel": "self", "href": format!("{base_url}/") }],
            })
        })
        .collect();
    serde_json::json!({ "versions": versions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(SCP_API_VERSION, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn catalog_rules_with_an_injected_date() {
        let vs = "virtualserver";
        let d = Date::new;
        assert_eq!(
            check(&HeaderMap::new(), vs, "GET", "/v1/images", d(2030, 1, 1)),
            Ok(())
        );
        assert_eq!(
            check(
                &with("virtualserver 1.3"),
                vs,
                "GET",
                "/v1/images",
                d(2099, 1, 1)
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &with(" virtualserver 1.3 "),
                vs,
                "GET",
                "/v1/images",
                d(2026, 1, 1)
            ),
            Ok(())
        );
        // The last day is still served; the day after is not.
        assert_eq!(
            check(
                &with("virtualserver 1.1"),
                vs,
                "GET",
                "/v1/images",
                d(2026, 5, 31)
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &with("virtualserver 1.1"),
                vs,
                "GET",
                "/v1/images",
                d(2026, 6, 1)
            ),
            Err(VersionError::Ended {
                sent: "virtualserver 1.1".into(),
                last_day: d(2026, 5, 31)
            })
        );
        assert_eq!(
            check(
                &with("virtualserver 1.2"),
                vs,
                "GET",
                "/v1/images",
                d(2026, 8, 31)
            ),
            Ok(())
        );
        assert!(check(
            &with("virtualserver 1.2"),
            vs,
            "GET",
            "/v1/images",
            d(2026, 9, 1)
        )
        .is_err());
        assert_eq!(
            check(
                &with("virtualserver 1.0"),
                vs,
                "GET",
                "/v1/images",
                d(2025, 12, 31)
            ),
            Ok(())
        );
        assert!(check(
            &with("virtualserver 1.0"),
            vs,
            "GET",
            "/v1/images",
            d(2026, 1, 1)
        )
        .is_err());
        assert!(matches!(
            check(&with("virtualserver 9.9"), vs, "GET", "/v1/images", d(2026, 1, 1)),
            Err(VersionError::Unknown { ref known, .. }) if known == "1.3, 1.2, 1.1, 1.0"
        ));
        assert!(matches!(
            check(&with("vpc 1.3"), vs, "GET", "/v1/images", d(2026, 1, 1)),
            Err(VersionError::OtherService { .. })
        ));
        for bad in [
            "virtualserver",
            "virtualserver v1.3",
            "1.3",
            "virtualserver  1.3",
        ] {
            let mut h = HeaderMap::new();
            h.insert(SCP_API_VERSION, HeaderValue::from_static(bad));
            assert!(
                matches!(
                    check(&h, vs, "GET", "/v1/images", d(2026, 1, 1)),
                    Err(VersionError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        let mut twice = with("virtualserver 1.3");
        twice.append(
            SCP_API_VERSION,
            HeaderValue::from_static("virtualserver 1.3"),
        );
        assert!(check(&twice, vs, "GET", "/v1/images", d(2026, 1, 1)).is_err());
        // A service the catalog has no versions for takes any well-formed version of itself.
        assert_eq!(
            check(
                &with("iam 1.0"),
                "iam",
                "GET",
                "/v1/endpoints",
                d(2026, 1, 1)
            ),
            Ok(())
        );
        assert!(check(
            &with("virtualserver 1.3"),
            "iam",
            "GET",
            "/v1/endpoints",
            d(2026, 1, 1)
        )
        .is_err());
        // An operation the catalog has no dates for: any well-formed version of the service.
        let sg = "/v1/servers/s/security-groups";
        assert_eq!(
            check(&with("virtualserver 1.0"), vs, "POST", sg, d(2026, 6, 1)),
            Ok(())
        );
        assert_eq!(
            check(&with("virtualserver 9.9"), vs, "POST", sg, d(2026, 6, 1)),
            Ok(())
        );
        assert!(check(&with("iam 1.0"), vs, "POST", sg, d(2026, 6, 1)).is_err());
        let imp = "/v1/images/x/import";
        assert!(check(&with("virtualserver 1.0"), vs, "POST", imp, d(2026, 6, 1)).is_err());
        let e = check(
            &with("virtualserver 1.0"),
            vs,
            "GET",
            "/v1/images",
            d(2026, 1, 1),
        )
        .unwrap_err()
        .to_error();
        assert_eq!(e.status, StatusCode::NOT_ACCEPTABLE);
        assert!(e.detail.contains("2025-12-31"), "{}", e.detail);
    }

    #[test]
    fn version_list_comes_from_the_catalog() {
        let v = list("virtualserver", "http://127.0.0.1:1");
        let list = v["versions"].as_array().unwrap();
        let ids: Vec<_> = list.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["v1.3", "v1.2", "v1.1", "v1.0"]);
        assert_eq!(list[0]["status"], "CURRENT");
        assert!(list[0]["not_before"].is_null());
        assert_eq!(list[1]["status"], "SUPPORTED");
        assert_eq!(list[1]["not_before"], "2026-08-31");
        assert_eq!(list[2]["status"], "DEPRECATED");
        assert_eq!(list[2]["not_before"], "2026-05-31");
        assert_eq!(list[3]["not_before"], "2025-12-31");
        assert_eq!(list[0]["links"][0]["href"], "http://127.0.0.1:1/");
    }
}

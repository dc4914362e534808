//! Version lifecycle: what the built-in catalog (and, when asked, the upstream's live version
//! list) says about each service's pinned `api_version`, as pure functions of a given day.
//!
//! Used by `check-config` (errors fail it unless the service sets
//! `allow_unsupported_version = true`), by serving (`crate::monitor` logs them at start and
//! hourly, and sets the days-left metric) and by `versions`. Pure: reading the live list and
//! the hourly loop live in `crate::monitor`.

use crate::catalog::{self, Date, Status};
use crate::policy::allowlist::Rule;

/// One version pin as the lifecycle checks see it (`services.NAME.api_version`, or one
/// `services.NAME.operation_versions` entry; see `ServiceConfig::pins`), so this module needs
/// nothing from the configuration's types.
#[derive(Clone, Copy, Debug)]
pub struct Pin<'a> {
    pub service: &'a str,
    pub version: &'a str,
    /// `allow_unsupported_version`: an unsupported pin does not fail `check-config`.
    pub waived: bool,
    /// The upstream's `scheme://authority`, for messages.
    pub upstream: &'a str,
    /// The operation pin's rule; `None` for the service's own `api_version`, which applies
    /// to every operation no operation pin matches.
    pub op: Option<&'a Rule>,
    /// Whether the service has operation pins (its own pin then covers only the others).
    pub has_operation_pins: bool,
}

impl Pin<'_> {
    /// The config key it comes from: `services.NAME.api_version` or
    /// `services.NAME.operation_versions."METHOD /path"`.
    pub fn key(&self) -> String {
        match self.op {
            None => format!("services.{}.api_version", self.service),
            Some(r) => format!(
                "services.{}.operation_versions.\"{}\"",
                self.service, r.text
            ),
        }
    }

    /// The operations it applies to, for messages and tables.
    pub fn operations(&self) -> String {
        match self.op {
            Some(r) => r.text.clone(),
            None if !self.has_operation_pins => "every operation".into(),
            None => "every other operation".into(),
        }
    }

    /// The catalog's operation sets this pin applies to: for an operation pin, those with an
    /// operation its rule overlaps; for the service's pin, all of the service's.
    pub fn sets(&self) -> Vec<&'static catalog::OperationSet> {
        let sets = catalog::sets_of(self.service);
        match self.op {
            None => sets.collect(),
            Some(rule) => sets
                .filter(|set| {
                    set.operations
                        .iter()
                        .any(|t| Rule::parse(t).is_ok_and(|r| r.intersects(rule)))
                })
                .collect(),
        }
    }
}

/// A pin within this many days of its last supported day is warned about.
pub const WARN_DAYS: i64 = 90;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Said once, no verdict (an operation the catalog has no dates for).
    Info,
    Warn,
    Error,
}

/// One thing to tell the operator about a service's pin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub service: String,
    /// The operation pin's rule (`METHOD /path`); `None` for the service's own pin.
    pub operation: Option<String>,
    pub severity: Severity,
    /// Stable name of what was found, for logs.
    pub kind: &'static str,
    pub message: String,
    /// True when this finding must fail `check-config` (an error the service did not waive).
    pub blocks_deploy: bool,
}

/// The catalog's verdict on a service's pin on `today`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// Days until the pin's last supported day (negative past it); `None` when the catalog
    /// announces no end or does not know the pin.
    pub days_left: Option<i64>,
    pub findings: Vec<Finding>,
}

impl Assessment {
    /// Whether the pin is past its date (or not callable at all).
    pub fn is_unsupported(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

fn newest(set: &'static catalog::OperationSet) -> String {
    match catalog::current_in(set) {
        Some(v) => format!("{} ({})", v.version, v.status.as_str()),
        None => "none known".to_owned(),
    }
}

fn known_list(set: &'static catalog::OperationSet) -> String {
    catalog::versions_in(set)
        .map(|v| match v.last_day {
            Some(d) => format!("{} {} until {d}", v.version, v.status.as_str()),
            None => format!("{} {}", v.version, v.status.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Assesses one pin against every catalog operation set it applies to, on `today` (UTC). An
/// operation pin outside every set is *unknown*: noted, with no verdict.
pub fn assess(pin: Pin<'_>, today: Date) -> Assessment {
    let name = pin.service;
    let v = pin.version;
    let key = pin.key();
    let finding = |severity: Severity, kind: &'static str, message: String| Finding {
        service: name.to_owned(),
        operation: pin.op.map(|r| r.text.clone()),
        severity,
        kind,
        message,
        blocks_deploy: severity == Severity::Error && !pin.waived,
    };
    let waiver = if pin.waived {
        " (allowed by services.NAME.allow_unsupported_version = true)".replace("NAME", name)
    } else {
        format!(
            "; move {key} to a supported version, or set services.{name}.allow_unsupported_version = true to deploy anyway"
        )
    };
    let sets = pin.sets();
    if sets.is_empty() {
        let finding = match pin.op {
            None if catalog::sets_of(name).next().is_none() => finding(
                Severity::Warn,
                "unknown_service",
                format!("the version catalog does not know service {name:?}; its pin {v} is not checked against a lifecycle"),
            ),
            _ => finding(
                Severity::Info,
                "unknown_operation",
                format!(
                    "{name} {v} for {}: unknown (the version catalog has no dates for these operations), so no verdict",
                    pin.operations()
                ),
            ),
        };
        return Assessment {
            days_left: None,
            findings: vec![finding],
        };
    }
    let mut days_left: Option<i64> = None;
    let mut findings = Vec::new();
    for set in sets {
        let what = set.name;
        let Some(entry) = catalog::find_in(set, v) else {
            findings.push(finding(
                Severity::Warn,
                "unknown_version",
                format!(
                    "{name} {v} is not in the version catalog for {what} (known: {}); SCP may refuse it with 406",
                    known_list(set)
                ),
            ));
            continue;
        };
        let left = entry.days_left(today);
        days_left = match (days_left, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if entry.status == Status::Planned {
            findings.push(finding(
                Severity::Error,
                "planned",
                format!(
                    "{name} {v} is PLANNED for {what}: documented but not callable yet; the newest callable version is {}{waiver}",
                    newest(set)
                ),
            ));
        }
        match (entry.last_day, left) {
            (Some(last), Some(d)) if d < 0 => findings.push(finding(
                Severity::Error,
                "unsupported",
                format!(
                    "{name} {v} for {what} was supported until {last} and is no longer ({} days ago); SCP answers 406 to it; the newest version is {}{waiver}",
                    -d,
                    newest(set)
                ),
            )),
            (Some(last), Some(d)) if d <= WARN_DAYS => findings.push(finding(
                Severity::Warn,
                "ending_soon",
                format!(
                    "{name} {v} for {what} is {} and supported until {last} ({d} days left); move to {} before then",
                    entry.status.as_str(),
                    newest(set)
                ),
            )),
            _ => {}
        }
    }
    Assessment {
        days_left,
        findings,
    }
}

/// Which pin applies to which operations, with the catalog's word on each (the table
/// `check-config` and `versions` print for a configuration).
pub fn pins_table(pins: &[Pin<'_>], today: Date) -> String {
    use std::fmt::Write as _;
    let mut o =
        format!("# version pins as of {today} (UTC): the first that matches a request applies\n");
    let _ = writeln!(
        o,
        "{:<16} {:<44} {:<8} CATALOG",
        "SERVICE", "OPERATIONS", "VERSION"
    );
    for pin in pins {
        let sets = pin.sets();
        let verdict = if sets.is_empty() {
            "unknown (no dates for these operations)".to_owned()
        } else {
            sets.iter()
                .map(|set| match catalog::find_in(set, pin.version) {
                    None => format!("{}: not in the catalog", set.name),
                    Some(e) => match (e.last_day, e.days_left(today)) {
                        (Some(d), Some(n)) if n < 0 => format!(
                            "{}: {} until {d}, ENDED {} days ago",
                            set.name,
                            e.status.as_str(),
                            -n
                        ),
                        (Some(d), Some(n)) => format!(
                            "{}: {} until {d} ({n} days left)",
                            set.name,
                            e.status.as_str()
                        ),
                        _ => format!("{}: {}", set.name, e.status.as_str()),
                    },
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            o,
            "{:<16} {:<44} {:<8} {verdict}",
            pin.service,
            pin.operations(),
            pin.version
        );
    }
    o
}

/// The catalog as a table, days left counted from `today`; `pins` (service, version) are
/// marked with `*`.
pub fn catalog_table(today: Date, pins: &[(&str, &str)]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "# built-in version catalog, as of {today} (UTC)");
    let _ = writeln!(
        o,
        "{:<16} {:<8} {:<11} {:<10} {:>9}  OPERATIONS",
        "SERVICE", "VERSION", "STATUS", "LAST DAY", "DAYS LEFT"
    );
    for v in catalog::CATALOG {
        let pinned = pins.contains(&(v.service, v.version));
        let version = format!("{}{}", v.version, if pinned { "*" } else { "" });
        let (last, left) = match (v.last_day, v.days_left(today)) {
            (Some(d), Some(n)) if n < 0 => (d.to_string(), format!("{n} (ended)")),
            (Some(d), Some(n)) => (d.to_string(), n.to_string()),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            o,
            "{:<16} {:<8} {:<11} {:<10} {:>9}  {}",
            v.service,
            version,
            v.status.as_str(),
            last,
            left,
            v.operations.name
        );
    }
    if !pins.is_empty() {
        let _ = writeln!(o, "(* pinned by the configuration)");
    }
    let _ = writeln!(
        o,
        "Operations outside these sets have no dates here: their versions are unknown, not judged."
    );
    o
}

/// A live version list as lines.
pub fn live_table(svc: Pin<'_>, live: &[LiveVersion]) -> String {
    use std::fmt::Write as _;
    let mut o = format!("# {} live versions at {}/\n", svc.service, svc.upstream);
    for l in live {
        let line = format!(
            "{:<16} {:<8} {:<11} {}",
            svc.service,
            l.id,
            l.status,
            l.not_before.as_deref().unwrap_or("-")
        );
        let _ = writeln!(o, "{}", line.trim_end());
    }
    o
}

// ---------------------------------------------------------------- the live version list

/// One entry of a service's live version list (`GET /` on the service root).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct LiveVersion {
    /// e.g. `v1.3`
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub not_before: Option<String>,
}

#[derive(serde::Deserialize)]
struct LiveList {
    versions: Vec<LiveVersion>,
}

/// Parses a version list body.
pub fn parse_live(body: &[u8]) -> Result<Vec<LiveVersion>, String> {
    serde_json::from_slice::<LiveList>(body)
        .map(|l| l.versions)
        .map_err(|e| format!("not a version list ({{\"versions\":[...]}}): {e}"))
}

/// Where the live list disagrees with the catalog or the pin. All warnings.
pub fn compare_live(svc: Pin<'_>, live: &[LiveVersion]) -> Vec<Finding> {
    let name = svc.service;
    let warn = |kind: &'static str, message: String| Finding {
        service: name.to_owned(),
        operation: None,
        severity: Severity::Warn,
        kind,
        message,
        blocks_deploy: false,
    };
    let strip = |id: &str| id.strip_prefix('v').unwrap_or(id).to_owned();
    let mut out = Vec::new();
    match live.iter().find(|l| strip(&l.id) == svc.version) {
        None => out.push(warn(
            "live_pin_missing",
            format!(
                "{} does not list {name} {} among its versions ({}); requests may be refused",
                svc.upstream,
                svc.version,
                live.iter()
                    .map(|l| format!("{} {}", l.id, l.status))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Some(l) if l.status.eq_ignore_ascii_case("PLANNED") => out.push(warn(
            "live_pin_planned",
            format!(
                "{} lists the pinned {name} {} as PLANNED (not callable yet)",
                svc.upstream, l.id
            ),
        )),
        Some(_) => {}
    }
    for l in live {
        let version = strip(&l.id);
        match catalog::find(name, &version) {
            None => out.push(warn(
                "live_unknown_version",
                format!(
                    "{} lists {name} {} ({}) which the built-in catalog does not know; a newer proxy may know it",
                    svc.upstream, l.id, l.status
                ),
            )),
            Some(c) => {
                if !l.status.eq_ignore_ascii_case(c.status.as_str()) {
                    out.push(warn(
                        "live_status_differs",
                        format!(
                            "{} says {name} {} is {}, the built-in catalog says {}",
                            svc.upstream,
                            l.id,
                            l.status,
                            c.status.as_str()
                        ),
                    ));
                }
                let live_day = l.not_before.as_deref().and_then(Date::parse);
                if let (Some(live_day), Some(cat_day)) = (live_day, c.last_day) {
                    if live_day != cat_day {
                        out.push(warn(
                            "live_date_differs",
                            format!(
                                "{} says {name} {} is supported until {live_day}, the built-in catalog says {cat_day}",
                                svc.upstream, l.id
                            ),
                        ));
                    }
                }
            }
        }
    }
    for c in catalog::versions_of(name) {
        if !live.iter().any(|l| strip(&l.id) == c.version) {
            out.push(warn(
                "live_version_missing",
                format!(
                    "{} does not list {name} {} ({} in the built-in catalog)",
                    svc.upstream,
                    c.version,
                    c.status.as_str()
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc<'a>(name: &'a str, pin: &'a str, allow: bool) -> Pin<'a> {
        Pin {
            service: name,
            version: pin,
            waived: allow,
            upstream: "https://virtualserver.kr-west1.e.samsungsdscloud.com",
            op: None,
            has_operation_pins: false,
        }
    }

    #[test]
    fn operation_pins_are_judged_against_the_operations_they_cover() {
        let sg = Rule::parse("POST /v1/servers/*/security-groups").unwrap();
        let import = Rule::parse("POST /v1/images/*/import").unwrap();
        let op = |rule, version| Pin {
            op: Some(rule),
            has_operation_pins: true,
            ..svc("virtualserver", version, false)
        };
        let today = Date::new(2026, 6, 1);

        // No catalog dates for security groups: a note, no verdict, no metric value.
        let p = op(&sg, "1.0");
        assert!(p.sets().is_empty());
        let a = assess(p, today);
        assert_eq!(kinds(&a), [("unknown_operation", Severity::Info, false)]);
        assert_eq!(a.days_left, None);
        assert_eq!(a.findings[0].operation.as_deref(), Some(sg.text.as_str()));
        assert_eq!(
            p.key(),
            "services.virtualserver.operation_versions.\"POST /v1/servers/*/security-groups\""
        );

        // Image import 1.0 ended 2025-12-31: an error naming the operation pin's key.
        let a = assess(op(&import, "1.0"), today);
        assert_eq!(kinds(&a), [("unsupported", Severity::Error, true)]);
        assert!(a.days_left.is_some_and(|d| d < 0));
        assert!(
            a.findings[0].message.contains(
                "move services.virtualserver.operation_versions.\"POST /v1/images/*/import\""
            ),
            "{:?}",
            a.findings
        );

        // The service's own pin then covers only the other operations.
        let own = Pin {
            has_operation_pins: true,
            ..svc("virtualserver", "1.3", false)
        };
        assert_eq!(own.operations(), "every other operation");
        assert_eq!(
            svc("virtualserver", "1.3", false).operations(),
            "every operation"
        );
        let t = pins_table(&[op(&sg, "1.0"), op(&import, "1.0"), own], today);
        assert!(t.contains("unknown (no dates for these operations)"), "{t}");
        assert!(
            t.contains("image operations: DEPRECATED until 2025-12-31, ENDED"),
            "{t}"
        );
    }

    fn kinds(a: &Assessment) -> Vec<(&'static str, Severity, bool)> {
        a.findings
            .iter()
            .map(|f| (f.kind, f.severity, f.blocks_deploy))
            .collect()
    }

    #[test]
    fn lifecycle_table() {
        let d = Date::new;
        for (pin, today, allow, days, want) in [
            ("1.3", d(2026, 6, 1), false, None, vec![]),
            ("1.2", d(2026, 1, 1), false, Some(242), vec![]),
            // 90 days before 2026-08-31 is 2026-06-02: warned from then on
            ("1.2", d(2026, 6, 1), false, Some(91), vec![]),
            (
                "1.2",
                d(2026, 6, 2),
                false,
                Some(90),
                vec![("ending_soon", Severity::Warn, false)],
            ),
            (
                "1.1",
                d(2026, 5, 31),
                false,
                Some(0),
                vec![("ending_soon", Severity::Warn, false)],
            ),
            (
                "1.1",
                d(2026, 6, 1),
                false,
                Some(-1),
                vec![("unsupported", Severity::Error, true)],
            ),
            (
                "1.1",
                d(2026, 6, 1),
                true,
                Some(-1),
                vec![("unsupported", Severity::Error, false)],
            ),
            (
                "1.0",
                d(2026, 6, 1),
                false,
                Some(-152),
                vec![("unsupported", Severity::Error, true)],
            ),
            (
                "9.9",
                d(2026, 6, 1),
                false,
                None,
                vec![("unknown_version", Severity::Warn, false)],
            ),
        ] {
            let a = assess(svc("virtualserver", pin, allow), today);
            assert_eq!(a.days_left, days, "{pin} on {today}");
            assert_eq!(kinds(&a), want, "{pin} on {today}");
        }
        let a = assess(svc("dns", "1.0", false), d(2026, 6, 1));
        assert_eq!(kinds(&a), vec![("unknown_service", Severity::Warn, false)]);
    }

    #[test]
    fn past_date_names_the_date_and_the_newest_version() {
        let a = assess(svc("virtualserver", "1.1", false), Date::new(2026, 6, 1));
        let m = &a.findings[0].message;
        assert!(m.contains("2026-05-31") && m.contains("1.3"), "{m}");
        assert!(m.contains("allow_unsupported_version"), "{m}");
        assert!(a.is_unsupported());
    }

    #[test]
    fn table_marks_pins_and_counts_days() {
        let t = catalog_table(Date::new(2026, 6, 1), &[("virtualserver", "1.1")]);
        assert!(t.contains("as of 2026-06-01"), "{t}");
        let line = t.lines().find(|l| l.contains("1.1*")).unwrap();
        assert!(
            line.contains("DEPRECATED")
                && line.contains("2026-05-31")
                && line.contains("-1 (ended)"),
            "{t}"
        );
        let line = t.lines().find(|l| l.contains(" 1.2 ")).unwrap();
        assert!(line.contains(" 91  image operations"), "{t}");
    }

    #[test]
    fn live_list_comparison() {
        let body = br#"{"versions":[
            {"id":"v1.3","status":"CURRENT","not_before":null,"links":[]},
            {"id":"v1.2","status":"SUPPORTED","not_before":"2026-08-31"},
            {"id":"v1.1","status":"DEPRECATED","not_before":"2026-06-30"},
            {"id":"v1.4","status":"PLANNED"}
        ]}"#;
        let live = parse_live(body).unwrap();
        let f = compare_live(svc("virtualserver", "1.3", false), &live);
        let kinds: Vec<_> = f.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![
                "live_date_differs",
                "live_unknown_version",
                "live_version_missing"
            ],
            "{f:#?}"
        );
        assert!(f
            .iter()
            .all(|f| f.severity == Severity::Warn && !f.blocks_deploy));
        let f = compare_live(svc("virtualserver", "1.0", false), &live);
        assert_eq!(f[0].kind, "live_pin_missing");
        assert!(parse_live(b"<html>").is_err());
    }
}

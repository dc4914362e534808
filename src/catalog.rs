//! The built-in catalog of SCP API versions and their lifecycle, shared by the version-pin
//! policy, `check-config`, `versions` and the emulator. Dates come from SCP's documentation
//! (see README); the clock is always passed in, so tests never depend on today.
//!
//! SCP versions each operation, so every entry belongs to an [`OperationSet`]: the operations
//! one documentation page gives these dates for (today: virtualserver's image operations, from
//! the image-import page). A version of an operation outside every set is *unknown*: the
//! catalog has no verdict on it, and nothing may refuse it on the catalog's word.

use std::time::SystemTime;

/// A version's documented status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Current,
    Supported,
    Deprecated,
    Planned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Current => "CURRENT",
            Status::Supported => "SUPPORTED",
            Status::Deprecated => "DEPRECATED",
            Status::Planned => "PLANNED",
        }
    }
}

/// A calendar day (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    pub const fn new(year: i32, month: u32, day: u32) -> Self {
        Self { year, month, day }
    }

    /// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    pub fn days_since_epoch(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub fn from_days_since_epoch(z: i64) -> Self {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
        Self { year, month, day }
    }

    /// The UTC day `now` falls on.
    pub fn of(now: SystemTime) -> Self {
        let secs = match now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64) - 1,
        };
        Self::from_days_since_epoch(secs.div_euclid(86_400))
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.splitn(3, '-');
        let (y, m, d) = (it.next()?, it.next()?, it.next()?);
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return None;
        }
        let date = Self::new(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
        let valid = (1..=12).contains(&date.month)
            && (1..=31).contains(&date.day)
            && Self::from_days_since_epoch(date.days_since_epoch()) == date;
        valid.then_some(date)
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Operations of one service that SCP documents one version lifecycle for.
#[derive(Debug, PartialEq, Eq)]
pub struct OperationSet {
    pub service: &'static str,
    /// What they are, for messages: "image operations".
    pub name: &'static str,
    /// Which requests belong to the set: `METHOD /path` patterns in the allowlist syntax
    /// (`*` one segment, `**` any), matched on the path after the service prefix.
    pub operations: &'static [&'static str],
}

/// virtualserver's image operations (`/v1/images` and below, every method): the versions and
/// dates of SCP's image-import page.
pub const IMAGE_OPERATIONS: OperationSet = OperationSet {
    service: "virtualserver",
    name: "image operations",
    operations: &[
        "GET /v1/images/**",
        "HEAD /v1/images/**",
        "POST /v1/images/**",
        "PUT /v1/images/**",
        "PATCH /v1/images/**",
        "DELETE /v1/images/**",
    ],
};

/// Every operation set the catalog has versions for.
pub const OPERATION_SETS: &[&OperationSet] = &[&IMAGE_OPERATIONS];

/// One known version of the operations in one [`OperationSet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version {
    pub service: &'static str,
    /// The operations these dates are documented for.
    pub operations: &'static OperationSet,
    /// `MAJOR.MINOR`
    pub version: &'static str,
    pub status: Status,
    /// Last supported day, inclusive to the end of that day UTC; `None`: no end announced.
    pub last_day: Option<Date>,
}

impl Version {
    /// Whole days from `today` until the last supported day (0 on that day, negative after).
    pub fn days_left(&self, today: Date) -> Option<i64> {
        self.last_day
            .map(|d| d.days_since_epoch() - today.days_since_epoch())
    }

    /// False once the last supported day has ended (and for PLANNED versions).
    pub fn is_supported_on(&self, today: Date) -> bool {
        self.status != Status::Planned && self.days_left(today).is_none_or(|d| d >= 0)
    }
}

/// Every version the proxy knows about, newest first per service.
pub const CATALOG: &[Version] = &[
    Version {
        service: "virtualserver",
        operations: &IMAGE_OPERATIONS,
        version: "1.3",
        status: Status::Current,
        last_day: None,
    },
    Version {
        service: "virtualserver",
        operations: &IMAGE_OPERATIONS,
        version: "1.2",
        status: Status::Supported,
        last_day: Some(Date::new(2026, 8, 31)),
    },
    Version {
        service: "virtualserver",
        operations: &IMAGE_OPERATIONS,
        version: "1.1",
        status: Status::Deprecated,
        last_day: Some(Date::new(2026, 5, 31)),
    },
    Version {
        service: "virtualserver",
        operations: &IMAGE_OPERATIONS,
        version: "1.0",
        status: Status::Deprecated,
        last_day: Some(Date::new(2025, 12, 31)),
    },
];

/// The operation sets of `service` the catalog has versions for.
pub fn sets_of(service: &str) -> impl Iterator<Item = &'static OperationSet> + '_ {
    OPERATION_SETS
        .iter()
        .copied()
        .filter(move |s| s.service == service)
}

/// Every known version of the operations in `set`, newest first.
pub fn versions_in(set: &'static OperationSet) -> impl Iterator<Item = &'static Version> {
    CATALOG.iter().filter(move |v| v.operations == set)
}

/// The entry for `version` of the operations in `set`.
pub fn find_in(set: &'static OperationSet, version: &str) -> Option<&'static Version> {
    versions_in(set).find(|v| v.version == version)
}

/// The CURRENT version of the operations in `set`.
pub fn current_in(set: &'static OperationSet) -> Option<&'static Version> {
    versions_in(set).find(|v| v.status == Status::Current)
}

/// The catalog entry for `service` at `version`.
pub fn find(service: &str, version: &str) -> Option<&'static Version> {
    CATALOG
        .iter()
        .find(|v| v.service == service && v.version == version)
}

/// Every known version of `service`, newest first.
pub fn versions_of(service: &str) -> impl Iterator<Item = &'static Version> + '_ {
    CATALOG.iter().filter(move |v| v.service == service)
}

/// The CURRENT version of `service`, if the catalog knows the service.
pub fn current(service: &str) -> Option<&'static Version> {
    versions_of(service).find(|v| v.status == Status::Current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_round_trip() {
        for d in [
            Date::new(1970, 1, 1),
            Date::new(2000, 2, 29),
            Date::new(2025, 12, 31),
            Date::new(2026, 5, 31),
            Date::new(2026, 11, 27),
        ] {
            assert_eq!(Date::from_days_since_epoch(d.days_since_epoch()), d);
            assert_eq!(Date::parse(&d.to_string()), Some(d));
        }
        assert_eq!(Date::new(1970, 1, 1).days_since_epoch(), 0);
        assert_eq!(Date::parse("2026-02-30"), None);
        assert_eq!(Date::parse("2026-1-01"), None);
    }

    #[test]
    fn today_from_clock() {
        // 2026-05-31T23:59:59Z is still the 31st.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_271_999);
        assert_eq!(Date::of(t), Date::new(2026, 5, 31));
        assert_eq!(Date::of(t + Duration::from_secs(1)), Date::new(2026, 6, 1));
    }

    #[test]
    fn lifecycle_is_inclusive_of_the_last_day() {
        let v11 = find("virtualserver", "1.1").unwrap();
        assert!(v11.is_supported_on(Date::new(2026, 5, 31)));
        assert_eq!(v11.days_left(Date::new(2026, 5, 31)), Some(0));
        assert!(!v11.is_supported_on(Date::new(2026, 6, 1)));
        assert_eq!(v11.days_left(Date::new(2026, 6, 1)), Some(-1));
        let v13 = current("virtualserver").unwrap();
        assert_eq!(v13.version, "1.3");
        assert!(v13.is_supported_on(Date::new(2099, 1, 1)));
        assert!(find("virtualserver", "9.9").is_none());
    }

    #[test]
    fn every_version_belongs_to_a_set_of_its_service() {
        for v in CATALOG {
            assert_eq!(v.operations.service, v.service, "{v:?}");
            assert!(OPERATION_SETS.contains(&v.operations));
        }
        let image: Vec<_> = versions_in(&IMAGE_OPERATIONS).map(|v| v.version).collect();
        assert_eq!(image, ["1.3", "1.2", "1.1", "1.0"]);
        assert_eq!(
            current_in(&IMAGE_OPERATIONS).map(|v| v.version),
            Some("1.3")
        );
        assert_eq!(
            find_in(&IMAGE_OPERATIONS, "1.0").and_then(|v| v.last_day),
            Some(Date::new(2025, 12, 31))
        );
        assert_eq!(sets_of("virtualserver").count(), 1);
        assert_eq!(sets_of("iam").count(), 0);
    }
}

//! The forms of the configuration's fields, for serde: how a duration, a file mode, an
//! intercepted authority, the operation pins and the services table are written (a version,
//! an upstream and an allowlist rule deserialize themselves: `ApiVersion`, `Upstream`,
//! `Rule`), parsed on deserialization (so errors carry the key and the file) and
//! written back for check-config. Messages say what is wrong, never the value.

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::model::{ApiVersion, Config, OperationVersion};
use crate::policy::allowlist::Rule;

/// Durations written as "30s", "500ms", "2m".
pub(super) mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        // The value is not quoted back: errors never echo file content.
        humantime::parse_duration(&s)
            .map_err(|_| serde::de::Error::custom("is not a duration such as \"30s\" or \"500ms\""))
    }

    pub(in crate::config) fn serialize<S: Serializer>(
        v: &Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*v).to_string())
    }
}

/// Octal file modes written as strings ("0660").
pub(super) mod octal_mode {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
            Ok(m) if m <= 0o777 => Ok(Some(m)),
            // The value is not quoted back: errors never echo file content.
            _ => Err(serde::de::Error::custom(
                "is not an octal file mode such as \"0660\"",
            )),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(m) => s.serialize_str(&format!("{m:04o}")),
            None => s.serialize_none(),
        }
    }
}

/// `MAJOR.MINOR`, e.g. "1.3".
pub fn is_major_minor(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else {
        return false;
    };
    let num = |x: &str| !x.is_empty() && x.len() <= 4 && x.bytes().all(|c| c.is_ascii_digit());
    num(a) && num(b)
}

/// One `[services.NAME.operation_versions]` entry, on its own: a rule a request can match
/// and a `MAJOR.MINOR` version. How entries relate (overlap, order, the allowlist) is
/// `validate`'s.
pub(super) fn operation_version(pattern: &str, version: &str) -> Result<OperationVersion, String> {
    let rule = Rule::parse(pattern)?;
    let version = ApiVersion::try_from(version.to_owned())
        .map_err(|_| "the version is not MAJOR.MINOR (e.g. \"1.0\")".to_owned())?;
    if rule.method() == "CONNECT" {
        return Err("no request can match it: the proxy refuses CONNECT".into());
    }
    Ok(OperationVersion { rule, version })
}

/// `"METHOD /path" = "MAJOR.MINOR"` entries. Each value is read through a seed that knows its
/// pattern, so figment puts the entry into the key of an error
/// (`services.NAME.operation_versions."METHOD /path"`).
pub(super) mod operation_versions {
    use std::fmt;

    use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{operation_version, OperationVersion};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<OperationVersion>, D::Error> {
        d.deserialize_map(Entries)
    }

    pub(in crate::config) fn serialize<S: Serializer>(
        v: &[OperationVersion],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for o in v {
            m.serialize_entry(&o.rule.text, &o.version)?;
        }
        m.end()
    }

    struct Entries;

    impl<'de> Visitor<'de> for Entries {
        type Value = Vec<OperationVersion>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table of \"METHOD /path\" = \"MAJOR.MINOR\"")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(pattern) = map.next_key::<String>()? {
                all.push(map.next_value_seed(Entry(&pattern))?);
            }
            Ok(all)
        }
    }

    struct Entry<'a>(&'a str);

    impl<'de> DeserializeSeed<'de> for Entry<'_> {
        type Value = OperationVersion;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<OperationVersion, D::Error> {
            let version = String::deserialize(d)?;
            operation_version(self.0, &version).map_err(D::Error::custom)
        }
    }
}

/// `host[:port]` (port 443 when absent), lower-cased; no scheme, path or user info.
pub(super) fn parse_intercept(s: &str) -> Result<http::uri::Authority, String> {
    let bad = || {
        "is not host:port (e.g. \"virtualserver.kr-west1.e.samsungsdscloud.com:443\")".to_owned()
    };
    if s.is_empty() || s.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let a: http::uri::Authority = s.to_ascii_lowercase().parse().map_err(|_| bad())?;
    let has_port = s.rsplit_once(':').is_some_and(|(_, t)| !t.contains(']'));
    match (has_port, a.port_u16()) {
        (true, Some(p)) if p != 0 => Ok(a),
        (true, _) => Err(bad()),
        (false, _) => format!("{}:443", a.host()).parse().map_err(|_| bad()),
    }
}

/// `services.NAME.intercept`: `host[:port]` strings.
pub(super) mod authorities {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<http::uri::Authority>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .enumerate()
            .map(|(i, a)| {
                super::parse_intercept(a)
                    .map_err(|m| D::Error::custom(format!("entry {}: {m}", i + 1)))
            })
            .collect()
    }

    pub(in crate::config) fn serialize<S: Serializer>(
        v: &[http::uri::Authority],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| a.as_str()))
    }
}

/// `[services.NAME]` tables as a list, each knowing its name (sorted by it).
pub(super) mod named_services {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::super::model::ServiceConfig;

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ServiceConfig>, D::Error> {
        let by_name = BTreeMap::<String, ServiceConfig>::deserialize(d)?;
        Ok(by_name
            .into_iter()
            .map(|(name, s)| ServiceConfig { name, ..s })
            .collect())
    }

    pub(in crate::config) fn serialize<S: Serializer>(
        v: &[ServiceConfig],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|svc| (&svc.name, svc)))
    }
}

/// The sections (top-level keys) `Config` takes, read from its `Deserialize` derive: what it
/// hands to `deserialize_struct`. Environment variables whose first key is none of these are
/// not configuration (Kubernetes' `SCP_PROXY_PORT`-style service links).
pub(super) fn sections() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<T: fmt::Display>(_: T) -> Self {
            Stop
        }
    }
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = Config::deserialize(Probe(&mut fields));
    fields
}

//! The operations the proxy knows by name, per service: the paths the built-in emulator serves
//! (and SCP documents) as allowlist-style patterns. Used to name an operation without its ids
//! (audit records) and to say when a 404 came for a path the proxy has never heard of.
//!
//! The list is deliberately small: a path missing from it is not wrong, only unknown here.

use std::sync::OnceLock;

use super::allowlist::Rule;

/// `(service, "METHOD /pattern")`, in match order.
const KNOWN: &[(&str, &str)] = &[
    ("virtualserver", "GET /"),
    ("virtualserver", "GET /v1/images"),
    ("virtualserver", "POST /v1/images"),
    ("virtualserver", "GET /v1/images/*"),
    ("virtualserver", "DELETE /v1/images/*"),
    ("virtualserver", "POST /v1/images/*/import"),
    ("iam", "GET /"),
    ("iam", "GET /v1/endpoints"),
];

fn rules() -> &'static [(&'static str, Rule)] {
    static RULES: OnceLock<Vec<(&'static str, Rule)>> = OnceLock::new();
    RULES.get_or_init(|| {
        KNOWN
            .iter()
            .filter_map(|(s, r)| Rule::parse(r).ok().map(|rule| (*s, rule)))
            .collect()
    })
}

/// Whether the catalog lists any operation for `service`.
pub(crate) fn knows_service(service: &str) -> bool {
    KNOWN.iter().any(|(s, _)| *s == service)
}

/// The catalog pattern (`"GET /v1/images/*"`) that `method` and `path` match on `service`.
pub(crate) fn find(service: &str, method: &str, path: &str) -> Option<&'static str> {
    rules()
        .iter()
        .find(|(s, r)| *s == service && r.matches(method, path))
        .map(|(_, r)| r.text.as_str())
}

/// The catalog's patterns for `service`, for messages.
pub(crate) fn list(service: &str) -> Vec<&'static str> {
    KNOWN
        .iter()
        .filter(|(s, _)| *s == service)
        .map(|(_, r)| *r)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_operations_without_their_ids() {
        assert_eq!(
            find("virtualserver", "GET", "/v1/images/img-123"),
            Some("GET /v1/images/*")
        );
        assert_eq!(
            find("virtualserver", "POST", "/v1/images/img-1/import"),
            Some("POST /v1/images/*/import")
        );
        assert_eq!(find("virtualserver", "PUT", "/v1/images/img-1"), None);
        assert_eq!(find("virtualserver", "GET", "/v1/imagez"), None);
        assert_eq!(find("objectstorage", "GET", "/"), None);
        assert!(knows_service("iam") && !knows_service("objectstorage"));
        // Every entry parses (a typo would silently drop it).
        assert_eq!(rules().len(), KNOWN.len());
    }
}

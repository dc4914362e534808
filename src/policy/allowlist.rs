//! Operation allowlist: pure rule parsing and matching.
//!
//! A rule is `METHOD /path/pattern`: the method matches exactly (`GET` does not cover `HEAD`);
//! the pattern is `/`-separated segments where `*` matches exactly one non-empty segment, `**`
//! any number of segments (zero included, so `/v1/images/**` covers `/v1/images` itself), and
//! anything else matches that segment byte for byte. Matching runs on the raw path (no
//! percent-decoding) after the service prefix is stripped; the query is not part of it.
//!
//! Because a raw match could be read differently by the upstream, a service with an allowlist
//! first refuses paths that are not canonical: `.`/`..` segments (also before a `;`
//! parameter) and encoded `/`, `.` or `\` (`%2F`, `%2E`, `%5C`, any case), and a raw `\`.

/// One allowlist entry, parsed; configuration deserializes straight into it and writes it back
/// as its text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Rule {
    /// As written in the config, for messages and metrics.
    pub text: String,
    method: String,
    segments: Vec<Seg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Literal(String),
    One,
    Any,
}

/// Splits a path into segments: `/` -> `[""]`, `/a/b` -> `["a", "b"]`, `/a/` -> `["a", ""]`.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.strip_prefix('/').unwrap_or(path).split('/')
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters a raw path segment may hold (RFC 3986 pchar, `%` for escapes).
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@%".contains(&b)
}

impl Rule {
    /// Parses `"METHOD /pattern"`; the error says what to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let Some((method, pattern)) = t.split_once(' ') else {
            return Err(format!(
                "{text:?} is not \"METHOD /path\"; e.g. \"GET /v1/images/**\""
            ));
        };
        let pattern = pattern.trim_start();
        if method.is_empty() || !method.bytes().all(is_tchar) || method.contains('*') {
            return Err(format!(
                "{text:?}: {method:?} is not an HTTP method; write one method per rule, e.g. GET"
            ));
        }
        if !method.bytes().all(|b| !b.is_ascii_lowercase()) {
            return Err(format!(
                "{text:?}: methods match exactly; write {:?}",
                method.to_ascii_uppercase()
            ));
        }
        if !pattern.starts_with('/') {
            return Err(format!(
                "{text:?}: the path pattern must start with '/', e.g. /v1/images/**"
            ));
        }
        let mut segs = Vec::new();
        for s in segments(pattern) {
            segs.push(match s {
                "*" => Seg::One,
                "**" => Seg::Any,
                s if s.contains('*') => {
                    return Err(format!(
                        "{text:?}: `*` and `**` must be a whole segment (found {s:?})"
                    ))
                }
                "." | ".." => {
                    return Err(format!(
                        "{text:?}: `.` and `..` segments are refused on services with an allowlist, so no rule can match them"
                    ))
                }
                s if !s.bytes().all(is_pchar) => {
                    return Err(format!(
                        "{text:?}: segment {s:?} holds a character that cannot appear raw in a path (no query or fragment in a rule)"
                    ))
                }
                s => Seg::Literal(s.to_owned()),
            });
        }
        Ok(Self {
            text: format!("{method} {pattern}"),
            method: method.to_owned(),
            segments: segs,
        })
    }

    /// The method it matches.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// Whether some request matches both rules.
    pub fn intersects(&self, other: &Rule) -> bool {
        let (p, q) = (&self.segments, &other.segments);
        let mut seen = std::collections::HashSet::new();
        self.method == other.method && intersect(p, q, 0, 0, &mut seen)
    }

    /// Whether every request `other` matches is matched by this rule too. Conservative: a
    /// `true` is always right; a few exotic pairs (`/*/**` inside `/**/*`) answer `false`.
    pub fn covers(&self, other: &Rule) -> bool {
        self.method == other.method && covers(&self.segments, &other.segments)
    }

    /// Whether `method` and the raw `path` match this rule. Allocates nothing for a path of
    /// up to [`INLINE_SEGMENTS`] segments (every rule check of the allowlist, the version pins,
    /// retries and the operation catalog runs through here on each request).
    pub fn matches(&self, method: &str, path: &str) -> bool {
        method == self.method && with_segments(path, |path| matches_segments(&self.segments, path))
    }
}

/// Paths of up to this many segments are split on the stack.
const INLINE_SEGMENTS: usize = 16;

/// `f` of `path`'s [`segments`], held on the stack when there are few.
fn with_segments<R>(path: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    let mut inline = [""; INLINE_SEGMENTS];
    let mut n = 0;
    let mut it = segments(path);
    while let Some(seg) = it.next() {
        if n == INLINE_SEGMENTS {
            let mut all = inline.to_vec();
            all.push(seg);
            all.extend(it);
            return f(&all);
        }
        inline[n] = seg;
        n += 1;
    }
    f(&inline[..n])
}

/// Glob matching over segments, iterative with backtracking on the last `**` (linear-ish, no
/// recursion, so a long path cannot blow the stack).
fn matches_segments(pat: &[Seg], path: &[&str]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < path.len() {
        match pat.get(p) {
            Some(Seg::Any) => {
                star = Some((p, s));
                p += 1;
            }
            Some(Seg::One) if !path[s].is_empty() => {
                p += 1;
                s += 1;
            }
            Some(Seg::Literal(l)) if l == path[s] => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    p = sp + 1;
                    s = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|x| *x == Seg::Any)
}

/// Whether some segment list matches both `p[i..]` and `q[j..]` (memoised on positions; the
/// patterns are a config's, so tiny).
fn intersect(
    p: &[Seg],
    q: &[Seg],
    i: usize,
    j: usize,
    seen: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if !seen.insert((i, j)) {
        return false;
    }
    let (a, b) = (p.get(i), q.get(j));
    match (a, b) {
        (None, None) => true,
        // `**` matching nothing, or one more segment produced by the other side.
        (Some(Seg::Any), _) if intersect(p, q, i + 1, j, seen) => true,
        (_, Some(Seg::Any)) if intersect(p, q, i, j + 1, seen) => true,
        (Some(Seg::Any), Some(_)) if intersect(p, q, i, j + 1, seen) => true,
        (Some(_), Some(Seg::Any)) if intersect(p, q, i + 1, j, seen) => true,
        (Some(x), Some(y)) if *x != Seg::Any && *y != Seg::Any => {
            let compatible = match (x, y) {
                (Seg::Literal(l), Seg::Literal(m)) => l == m,
                (Seg::Literal(l), Seg::One) | (Seg::One, Seg::Literal(l)) => !l.is_empty(),
                _ => true,
            };
            compatible && intersect(p, q, i + 1, j + 1, seen)
        }
        _ => false,
    }
}

/// Whether pattern `b` matches every path pattern `a` matches: `a`'s segments are consumed by
/// `b`'s, and `a`'s `**` only by a `**` of `b`.
fn covers(b: &[Seg], a: &[Seg]) -> bool {
    covers_from(b, a, 0, 0, &mut std::collections::HashSet::new())
}

/// [`covers`] of `b[i..]` over `a[j..]`, remembering the positions already found `false`:
/// each `**` tries two ways on, so without it a rule with many `**` took exponential time
/// (found by fuzzing: a 187-byte rule ran for minutes).
fn covers_from(
    b: &[Seg],
    a: &[Seg],
    i: usize,
    j: usize,
    failed: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if failed.contains(&(i, j)) {
        return false;
    }
    let result = match (b.get(i), a.get(j)) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(Seg::Any), _) => {
            covers_from(b, a, i + 1, j, failed)
                || (j < a.len() && covers_from(b, a, i, j + 1, failed))
        }
        (Some(_), None) => false,
        (Some(x), Some(y)) => {
            let consumed = match (x, y) {
                (Seg::Literal(l), Seg::Literal(m)) => l == m,
                (Seg::One, Seg::One) => true,
                (Seg::One, Seg::Literal(l)) => !l.is_empty(),
                _ => false,
            };
            consumed && covers_from(b, a, i + 1, j + 1, failed)
        }
    };
    if !result {
        failed.insert((i, j));
    }
    result
}

/// Why a path is refused before matching, on services with an allowlist.
pub(crate) fn non_canonical(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Some("has an encoded '/' or '\\' (%2F, %5C)");
    }
    if lower.contains("%2e") {
        return Some("has an encoded '.' (%2E)");
    }
    if path.contains('\\') {
        return Some("has a '\\'");
    }
    if segments(path).any(|s| {
        let s = s.split(';').next().unwrap_or(s);
        s == "." || s == ".."
    }) {
        return Some("has a `.` or `..` segment");
    }
    None
}

impl TryFrom<String> for Rule {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// A service's parsed allowlist. Configuration deserializes straight into it (each rule
/// parsed once, at load) and writes it back as the rules' text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Allowlist {
    pub rules: Vec<Rule>,
}

impl TryFrom<Vec<String>> for Allowlist {
    type Error = String;
    fn try_from(rules: Vec<String>) -> Result<Self, String> {
        Self::parse(&rules)
    }
}

impl serde::Serialize for Allowlist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.rules.iter().map(|r| &r.text))
    }
}

/// The outcome for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The index of the first rule that matched.
    Allowed(usize),
    NotCanonical(&'static str),
    Refused,
}

impl Allowlist {
    pub fn parse(rules: &[String]) -> Result<Self, String> {
        Ok(Self {
            rules: rules
                .iter()
                .map(|r| Rule::parse(r))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn decide(&self, method: &str, path: &str) -> Decision {
        if let Some(why) = non_canonical(path) {
            return Decision::NotCanonical(why);
        }
        match self.rules.iter().position(|r| r.matches(method, path)) {
            Some(r) => Decision::Allowed(r),
            None => Decision::Refused,
        }
    }

    /// The rules, for messages: `["GET /v1/images/**", ...]`.
    pub fn describe(&self) -> String {
        let list: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("\"{}\"", r.text))
            .collect();
        format!("[{}]", list.join(", "))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn overlap_and_coverage_between_rules() {
        let r = |t: &str| Rule::parse(t).unwrap();
        let yes = [
            ("GET /v1/images/**", "GET /v1/images"),
            ("GET /v1/images/**", "GET /v1/images/*/import"),
            ("GET /v1/*/x", "GET /v1/images/*"),
            ("GET /**/x", "GET /a/**"),
            ("GET /**", "GET /a/b/c"),
        ];
        for (a, b) in yes {
            assert!(r(a).intersects(&r(b)), "{a} / {b}");
            assert!(r(b).intersects(&r(a)), "{b} / {a}");
        }
        let no = [
            ("GET /v1/images/**", "POST /v1/images"),
            ("GET /v1/images/*", "GET /v1/images"),
            ("GET /v1/a", "GET /v1/b"),
            ("GET /v1/*/x", "GET /v1/images/*/y"),
            ("GET /v1/images/*", "GET /v1/images/*/import"),
        ];
        for (a, b) in no {
            assert!(!r(a).intersects(&r(b)), "{a} / {b}");
            assert!(!r(b).intersects(&r(a)), "{b} / {a}");
        }
        assert!(r("GET /v1/images/**").covers(&r("GET /v1/images/*/import")));
        assert!(r("GET /v1/*/import").covers(&r("GET /v1/x/import")));
        assert!(r("GET /**").covers(&r("GET /v1/**")));
        assert!(r("GET /v1/a").covers(&r("GET /v1/a")));
        assert!(!r("GET /v1/x/import").covers(&r("GET /v1/*/import")));
        assert!(!r("GET /v1/*").covers(&r("GET /v1/**")));
        assert!(!r("POST /v1/**").covers(&r("GET /v1/a")));
        // Overlapping, neither inside the other.
        let (a, b) = (r("GET /v1/*/x"), r("GET /v1/a/*"));
        assert!(a.intersects(&b) && !a.covers(&b) && !b.covers(&a));
    }

    use super::*;
    use proptest::prelude::*;

    /// Fuzzing found `covers` exponential in the number of `**` (a 187-byte rule pair ran for
    /// minutes); memoised it is quadratic. 2^40 ways on without the memo: this would not end.
    #[test]
    fn coverage_with_many_double_stars_is_decided() {
        let many = |tail: &str| Rule::parse(&format!("GET {}{tail}", "/**/*".repeat(40))).unwrap();
        let (a, b) = (many("/a"), many("/b"));
        assert!(!a.covers(&b) && !b.covers(&a));
        assert!(a.covers(&a));
        assert!(Rule::parse("GET /**").unwrap().covers(&a));
        let fuzzed = Rule::parse(
            "GET /**/**/*/**/*/a/**/*/**/*/*//*/**/**/*/*///**/**/*/*/a/**/*//*/*/**/*/a/**/*/**/*/*///**/**/*/*/a/**/*/*/**/*/*//*/*/**/*/a/**/*/**/*/*///**/**/*/*/a/**/*//*/*/**/*/a/**/**/**/GGEGMT5",
        )
        .unwrap();
        assert!(fuzzed.covers(&fuzzed) && !fuzzed.covers(&a) && !a.covers(&fuzzed));
        assert!(fuzzed.intersects(&fuzzed));
    }

    fn m(rule: &str, method: &str, path: &str) -> bool {
        Rule::parse(rule).unwrap().matches(method, path)
    }

    #[test]
    fn matching_table() {
        for (rule, method, path, want) in [
            ("GET /v1/images/**", "GET", "/v1/images", true),
            ("GET /v1/images/**", "GET", "/v1/images/", true),
            ("GET /v1/images/**", "GET", "/v1/images/abc", true),
            ("GET /v1/images/**", "GET", "/v1/images/abc/def/ghi", true),
            ("GET /v1/images/**", "HEAD", "/v1/images/abc", false),
            ("GET /v1/images/**", "get", "/v1/images/abc", false),
            ("GET /v1/images/**", "POST", "/v1/images/abc", false),
            ("GET /v1/images/**", "GET", "/v1/imagesx", false),
            ("GET /v1/images/**", "GET", "/v1", false),
            ("GET /v1/images/**", "GET", "/v2/images/a", false),
            (
                "POST /v1/images/*/import",
                "POST",
                "/v1/images/abc/import",
                true,
            ),
            (
                "POST /v1/images/*/import",
                "POST",
                "/v1/images//import",
                false,
            ),
            (
                "POST /v1/images/*/import",
                "POST",
                "/v1/images/a/b/import",
                false,
            ),
            (
                "POST /v1/images/*/import",
                "POST",
                "/v1/images/abc/import/",
                false,
            ),
            (
                "POST /v1/images/*/import",
                "POST",
                "/v1/images/abc/Import",
                false,
            ),
            ("POST /v1/images/*/import", "POST", "/v1/images/abc", false),
            ("POST /v1/images", "POST", "/v1/images", true),
            ("POST /v1/images", "POST", "/v1/images/", false),
            ("GET /", "GET", "/", true),
            ("GET /", "GET", "/x", false),
            ("GET /**", "GET", "/", true),
            ("GET /**", "GET", "/anything/at/all", true),
            ("GET /**/import", "GET", "/import", true),
            ("GET /**/import", "GET", "/a/b/import", true),
            ("GET /**/import", "GET", "/a/b/import/x", false),
            ("GET /v1/**/servers/*", "GET", "/v1/a/b/servers/s1", true),
            ("GET /v1/**/servers/*", "GET", "/v1/servers/s1", true),
            ("GET /v1/**/servers/*", "GET", "/v1/servers/", false),
            ("GET /v1/*/x/**/y", "GET", "/v1/a/x/y", true),
            ("GET /v1/*/x/**/y", "GET", "/v1/a/x/p/q/y", true),
            ("GET /v1/*/x/**/y", "GET", "/v1/a/b/x/y", false),
            // raw, not decoded
            ("GET /v1/images/*", "GET", "/v1/images/a%20b", true),
            ("GET /v1/images", "GET", "/v1/%69mages", false),
        ] {
            assert_eq!(m(rule, method, path), want, "{rule} vs {method} {path}");
        }
    }

    #[test]
    fn parse_table() {
        for ok in [
            "GET /v1/images/**",
            "POST /v1/images/*/import",
            "  DELETE   /v1/images/*  ",
            "GET /",
            "PATCH /v1/a:b/c@d",
        ] {
            assert!(Rule::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            Rule::parse("  DELETE   /v1/images/*  ").unwrap().text,
            "DELETE /v1/images/*"
        );
        for (bad, says) in [
            ("GET", "METHOD /path"),
            ("/v1/images", "METHOD /path"),
            ("get /v1", "\"GET\""),
            ("* /v1", "not an HTTP method"),
            ("GET v1/images", "start with '/'"),
            ("GET /v1/ima*", "whole segment"),
            ("GET /v1/***", "whole segment"),
            ("GET /v1/../x", "`.` and `..`"),
            ("GET /v1/images?x=1", "cannot appear raw"),
            ("GET /v1/images#x", "cannot appear raw"),
            ("GET /v1/a b", "cannot appear raw"),
            ("GET,POST /v1", "not an HTTP method"),
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn canonical_table() {
        for (path, refused) in [
            ("/v1/images/abc", false),
            ("/v1/images/a.b/c..d/.e", false),
            ("/v1/images/a%20b", false),
            ("/v1/images/../servers", true),
            ("/v1/images/./x", true),
            ("/v1/images/..", true),
            ("/v1/images/..;x/servers", true),
            ("/v1/images/.;/servers", true),
            ("/v1/images%2Fx", true),
            ("/v1/images%2fx", true),
            ("/v1/images/%2E%2E/x", true),
            ("/v1/images/%2e", true),
            ("/v1/images%5cx", true),
            ("/v1/images\\x", true),
        ] {
            assert_eq!(non_canonical(path).is_some(), refused, "{path}");
        }
    }

    #[test]
    fn decide_names_the_rule() {
        let list = Allowlist::parse(&[
            "GET /v1/images/**".to_owned(),
            "POST /v1/images/*/import".to_owned(),
        ])
        .unwrap();
        assert_eq!(
            list.decide("POST", "/v1/images/x/import"),
            Decision::Allowed(1)
        );
        assert_eq!(list.decide("DELETE", "/v1/images/x"), Decision::Refused);
        assert!(matches!(
            list.decide("GET", "/v1/images/%2e%2e/servers"),
            Decision::NotCanonical(_)
        ));
        assert_eq!(
            list.describe(),
            r#"["GET /v1/images/**", "POST /v1/images/*/import"]"#
        );
    }

    /// A reference matcher: plain recursion, obviously right, exponential in the worst case.
    fn reference(pat: &[Seg], path: &[&str]) -> bool {
        match (pat.first(), path.first()) {
            (None, None) => true,
            (Some(Seg::Any), _) => {
                reference(&pat[1..], path) || (!path.is_empty() && reference(pat, &path[1..]))
            }
            (Some(Seg::One), Some(s)) => !s.is_empty() && reference(&pat[1..], &path[1..]),
            (Some(Seg::Literal(l)), Some(s)) => l == s && reference(&pat[1..], &path[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(
            pat in proptest::collection::vec(prop_oneof!["a", "b", "", "\\*", "\\*\\*"], 0..6),
            // Past INLINE_SEGMENTS too, so the split that spills to the heap is checked.
            path in proptest::collection::vec(prop_oneof!["a", "b", ""], 0..24),
        ) {
            let rule = format!("GET /{}", pat.join("/"));
            let path = format!("/{}", path.join("/"));
            let r = Rule::parse(&rule).unwrap();
            let segs: Vec<&str> = segments(&path).collect();
            prop_assert_eq!(r.matches("GET", &path), reference(&r.segments, &segs), "{} vs {}", rule, path);
        }
    }
}

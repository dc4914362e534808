//! The operation allowlist (src/policy/allowlist.rs): rule parsing, matching, and the overlap
//! and coverage checks config validation relies on.
//!
//! Input: lines `rule A`, `rule B`, `method`, `path`, then bytes that choose how a path is made
//! from a rule. Asserts: no panic; a parsed rule's text parses to the same rule; a path built
//! from a rule (`*` -> one non-empty segment, `**` -> zero or more) matches it; a request both
//! rules match means both report they intersect (and `intersects` is symmetric); when A
//! `covers` B, every request B matches A matches too; `decide` names the first matching rule,
//! refuses only when none matches, and reports non-canonical paths exactly when
//! `non_canonical` does.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/policy/allowlist.rs"]
mod allowlist;

use allowlist::{Allowlist, Decision, Rule};

/// A path `rule` matches: each `*` one non-empty segment, each `**` 0 to 3 segments, chosen by
/// `choice`.
fn path_for(rule: &Rule, choice: &mut impl Iterator<Item = u8>) -> String {
    let (_, pattern) = rule
        .text
        .split_once(' ')
        .expect("parsed rule text has a space");
    let mut out = String::new();
    let segs: Vec<&str> = pattern
        .strip_prefix('/')
        .unwrap_or(pattern)
        .split('/')
        .collect();
    for seg in segs {
        match seg {
            "*" => {
                out.push('/');
                out.push_str(
                    ["a", "images", "x-1", ";p"][usize::from(choice.next().unwrap_or(0) % 4)],
                );
            }
            "**" => {
                for _ in 0..choice.next().unwrap_or(0) % 4 {
                    out.push_str("/s");
                }
            }
            lit => {
                out.push('/');
                out.push_str(lit);
            }
        }
    }
    if out.is_empty() {
        // `/**` with zero segments: the root path, which `**` also covers.
        out.push('/');
    }
    out
}

fn check_request(a: &Rule, b: &Rule, method: &str, path: &str) {
    let (ma, mb) = (a.matches(method, path), b.matches(method, path));
    if ma && mb {
        assert!(
            a.intersects(b),
            "{a:?} and {b:?} both match {method} {path}"
        );
    }
    if mb && a.covers(b) {
        assert!(
            ma,
            "{:?} covers {:?} but not {method} {path}",
            a.text, b.text
        );
    }
    let list = Allowlist {
        rules: vec![a.clone(), b.clone()],
    };
    match list.decide(method, path) {
        Decision::NotCanonical(why) => {
            assert_eq!(allowlist::non_canonical(path), Some(why))
        }
        Decision::Allowed(i) => {
            assert!(allowlist::non_canonical(path).is_none());
            assert!(list.rules[i].matches(method, path));
            assert!(list.rules[..i].iter().all(|r| !r.matches(method, path)));
        }
        Decision::Refused => {
            assert!(allowlist::non_canonical(path).is_none());
            assert!(!ma && !mb, "{path}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(5, '\n');
    let mut next = || lines.next().unwrap_or("");
    let (ra, rb, method, path) = (next(), next(), next(), next());
    let choice = next().bytes().collect::<Vec<_>>();
    let mut choice = choice.into_iter().cycle().take(64);
    let parsed = [Rule::parse(ra), Rule::parse(rb)];
    for r in parsed.iter().flatten() {
        assert_eq!(
            Rule::parse(&r.text).as_ref(),
            Ok(r),
            "{:?} does not parse back",
            r.text
        );
        assert!(r.covers(r) && r.intersects(r), "{:?}", r.text);
    }
    let [Ok(a), Ok(b)] = parsed else {
        // A rule alone still matches the paths built from it.
        if let Ok(r) = Rule::parse(ra) {
            let p = path_for(&r, &mut choice);
            assert!(r.matches(r.method(), &p), "{:?} does not match {p}", r.text);
        }
        return;
    };
    assert_eq!(
        a.intersects(&b),
        b.intersects(&a),
        "{:?} / {:?}",
        a.text,
        b.text
    );
    for (x, y) in [(&a, &b), (&b, &a)] {
        let p = path_for(y, &mut choice);
        assert!(y.matches(y.method(), &p), "{:?} does not match {p}", y.text);
        check_request(x, y, y.method(), &p);
    }
    check_request(&a, &b, method, path);
    check_request(&b, &a, method, path);
});

//! The error codes documented: README's "Errors the proxy makes itself" table lists exactly
//! the codes the proxy answers with (`error::codes`), and every code literal the listeners
//! answer with by hand is among them.

use std::collections::BTreeSet;
use std::path::Path;

use scp_auth_proxy::error::{codes, LISTENER_CODES};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The backquoted codes in the `code` column of the README's errors table.
fn readme_codes() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("\n## Errors the proxy makes itself\n")
        .expect("README has the errors section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut found = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let Some(cell) = row.split('|').nth(2) else {
            continue;
        };
        found.extend(cell.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    found
}

#[test]
fn the_readme_errors_table_lists_every_code_and_no_other() {
    let table = readme_codes();
    let known: BTreeSet<String> = codes().map(str::to_owned).collect();
    let missing: Vec<_> = known.difference(&table).collect();
    let unknown: Vec<_> = table.difference(&known).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README's errors table lacks {missing:?}; it lists {unknown:?}, which the proxy does not answer"
    );
}

/// The non-test Rust source of `src/` but the emulator's (its codes are SCP's, not the proxy's).
fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "emulator") {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            out.push((path.display().to_string(), code));
        }
    }
}

/// The code literals a source answers with by hand: the string after a `StatusCode::NAME,`
/// argument (`json_error(status, code, ..)` and the helpers that take the same order), and
/// the value of a `"code":` JSON key.
fn hand_made_codes(code: &str) -> Vec<String> {
    let flat = code.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut found = Vec::new();
    let mut take = |rest: &str| {
        if let Some(lit) = rest.strip_prefix('"').and_then(|r| r.split_once('"')) {
            let lit = lit.0;
            if !lit.is_empty() && lit.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                found.push(lit.to_owned());
            }
        }
    };
    for (i, _) in flat.match_indices("StatusCode::") {
        let rest = &flat[i + "StatusCode::".len()..];
        let name_end = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        if let Some(rest) = rest[name_end..].strip_prefix(", ") {
            take(rest);
        }
    }
    for (i, _) in flat.match_indices("\"code\": ") {
        take(&flat[i + "\"code\": ".len()..]);
    }
    found
}

#[test]
fn every_code_a_listener_answers_by_hand_is_listed() {
    let mut files = Vec::new();
    sources(&Path::new(ROOT).join("src"), &mut files);
    let known: BTreeSet<&str> = codes().collect();
    let mut seen = BTreeSet::new();
    for (path, code) in &files {
        for c in hand_made_codes(code) {
            assert!(
                known.contains(c.as_str()),
                "{path} answers with code {c:?}, which error::LISTENER_CODES (and the README) lack"
            );
            seen.insert(c);
        }
    }
    // Each listener code is found where it is made, so the scan above sees them all.
    let unseen: Vec<_> = LISTENER_CODES
        .iter()
        .filter(|c| !seen.contains(**c))
        .collect();
    assert!(
        unseen.is_empty(),
        "no source answers with {unseen:?}: drop them from error::LISTENER_CODES, or the scan misses them"
    );
}

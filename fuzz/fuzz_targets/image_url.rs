//! The image-import URL rules (src/policy/image_url.rs), with the `url` crate (WHATWG, as
//! browsers and most HTTP stacks read URLs) as a second reader.
//!
//! Asserts: no panic on any raw string and expectation; an accepted URL is at most 255
//! characters, https, ends in `.qcow2`, and reads back unchanged: `url` finds the same host,
//! no user info, port, query or fragment, and the very same path (no dot segment, encoded
//! separator or other normalisation could make the object store resolve another object than
//! the one judged); its host is in the expected region and env and its path's account, when
//! it names one, is the expected account.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/policy/image_url.rs"]
mod image_url;

const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(tail) = std::str::from_utf8(rest) else {
        return;
    };
    // Most inputs start from a plausible prefix so the later rules are reached.
    let raw = match mode % 4 {
        0 => tail.to_owned(),
        1 => format!("https://object-store.kr-west1.e.samsungsdscloud.com/{tail}"),
        2 => format!("https://object-store.{tail}"),
        _ => format!("https://object-store.kr-west1.e.samsungsdscloud.com/{ACCOUNT}:{tail}"),
    };
    let expect = image_url::Expect {
        region: (mode & 0x10 != 0).then_some("kr-west1"),
        env: (mode & 0x20 != 0).then_some("e"),
        account_id: (mode & 0x40 != 0).then_some(ACCOUNT),
    };
    let verdict = image_url::check(&raw, &expect);
    if let Err(e) = &verdict {
        // Every error has a code and a message.
        assert!(e.code().starts_with("url_"));
        assert!(!e.to_string().is_empty());
        return;
    }
    assert!(raw.chars().count() <= image_url::MAX_LEN, "{raw:?}");
    assert!(
        raw.starts_with("https://") && raw.ends_with(".qcow2"),
        "{raw:?}"
    );
    let rest = &raw["https://".len()..];
    let (authority, path) = rest.split_at(rest.find('/').expect("accepted URL has a path"));
    let u = url::Url::parse(&raw).unwrap_or_else(|e| panic!("accepted {raw:?}, url: {e}"));
    assert_eq!(u.scheme(), "https");
    assert_eq!(u.host_str(), Some(authority), "{raw:?}");
    assert_eq!(
        (u.username(), u.password(), u.port()),
        ("", None, None),
        "{raw:?}"
    );
    assert_eq!((u.query(), u.fragment()), (None, None), "{raw:?}");
    assert_eq!(u.path(), path, "{raw:?} is read as another path");
    let labels: Vec<&str> = authority.split('.').collect();
    let region = labels[labels.len() - 4];
    let env = labels[labels.len() - 3];
    if let Some(want) = expect.region {
        assert_eq!(region, want, "{raw:?}");
    }
    if let Some(want) = expect.env {
        assert_eq!(env, want, "{raw:?}");
    }
    if let (Some(want), Some(got)) = (expect.account_id, image_url::path_account(path)) {
        assert!(got.eq_ignore_ascii_case(want), "{raw:?}");
    }
});

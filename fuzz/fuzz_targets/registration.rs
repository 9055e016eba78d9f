//! Arbitrary text as a closureInfo `registration`: parsing may refuse it but
//! never panic, and what it accepts holds together:
//! - every path, deriver and reference is a strict store path, every hash
//!   `sha256:<64 lowercase hex digits>`;
//! - the records written back as registration text read back the same;
//! - a closed set (`Closure::new` accepts it) writes the same text again
//!   after a second reading, and lists every path once in `store-paths`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nixdisk::closure::{Closure, is_store_path, parse_registration, render_registration};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let file = Path::new("registration");
    let infos = match parse_registration(text, file) {
        Ok(infos) => infos,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    for info in &infos {
        let paths = std::iter::once(&info.path)
            .chain(&info.references)
            .chain(&info.deriver);
        for path in paths {
            let text = path.to_str().expect("parsed from text");
            assert!(is_store_path(text), "accepted {text:?}");
        }
        let digest = info.nar_hash.strip_prefix("sha256:").expect("prefix");
        assert!(
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "hash {:?}",
            info.nar_hash
        );
    }
    let written = render_registration(&infos);
    let read = parse_registration(&written, file).expect("written registration parses");
    assert_eq!(read, infos);

    let Ok(closure) = Closure::new(infos) else {
        return;
    };
    let text = closure.registration_text();
    let again = Closure::new(parse_registration(&text, file).expect("parses")).expect("closed");
    assert_eq!(again, closure);
    assert_eq!(again.registration_text(), text);
    assert_eq!(
        closure.store_paths_text().lines().count(),
        closure.paths.len()
    );
});

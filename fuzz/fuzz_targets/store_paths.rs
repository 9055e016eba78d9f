//! Arbitrary text as a closureInfo `store-paths` file: parsing may refuse it
//! but never panic; every path it accepts is a strict store path (so it is
//! safe as a file name under the image's store and as a line of the guest's
//! copy list), and the paths written one a line read back the same.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nixdisk::closure::{is_store_path, parse_store_paths};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let file = Path::new("store-paths");
    let paths = match parse_store_paths(text, file) {
        Ok(paths) => paths,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let mut written = String::new();
    for path in &paths {
        let text = path.to_str().expect("parsed from text");
        assert!(is_store_path(text), "accepted {text:?}");
        assert!(
            !text.contains(['\n', '\'', '"', '\\', ' ', '\t', '$', '`', '*']),
            "a list-breaking character in {text:?}"
        );
        written.push_str(text);
        written.push('\n');
    }
    assert_eq!(parse_store_paths(&written, file).expect("parses"), paths);
});

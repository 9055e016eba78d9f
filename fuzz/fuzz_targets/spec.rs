//! Arbitrary text as a spec file: parsing and validation may refuse it but
//! never panic, and what they accept holds together:
//! - a spec that parses writes back to JSON that parses to the same spec;
//! - a spec that validates has contents targets the contents step accepts
//!   (validation and resolution agree), an image file name that is one plain
//!   path component, and a fixed disk size the layout planner handles;
//! - every refusal renders as a non-empty message.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use nixdisk::install::contents::normalise_target;
use nixdisk::output::image_file_name;
use nixdisk::spec::{DiskSize, parse_spec, validate};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let spec = match parse_spec(text, "fuzz.json") {
        Ok(spec) => spec,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let json = serde_json::to_string(&spec).expect("a parsed spec serializes");
    let again = parse_spec(&json, "round trip").expect("written spec parses");
    assert_eq!(again, spec, "spec changed through JSON: {json}");

    if let Err(error) = validate(&spec) {
        assert!(!error.to_string().is_empty());
        return;
    }
    for (index, entry) in spec.contents.iter().enumerate() {
        if let Err(error) = normalise_target(index, &entry.target) {
            panic!("validation accepted a target the contents step refuses: {error}");
        }
    }
    let file = image_file_name(&spec.base_name, spec.format);
    let components: Vec<_> = Path::new(&file).components().collect();
    assert!(
        matches!(components.as_slice(), [Component::Normal(_)]),
        "baseName {:?} gives the image file name {file:?}",
        spec.base_name
    );
    if let DiskSize::Fixed(size) = spec.disk_size {
        let _ = nixdisk::layout::plan(&spec, size.bytes());
    }
});

//! Reading a spec: JSON text -> [`ImageSpec`], with command-line overrides.
//!
//! The text is first read as a plain JSON value so that unknown field names
//! can be reported with a did-you-mean hint and overrides can be merged key by
//! key; only then is it deserialized, through `serde_path_to_error`, so a
//! wrong type names the field it is in (`contents[1].mode`).

use serde_json::{Map, Value};

use super::{ContentEntry, ImageSpec, SpecError};

/// JSON key of `installBootLoader`, whose default depends on `onlyNixStore`.
const INSTALL_BOOT_LOADER: &str = "installBootLoader";
/// JSON key of `onlyNixStore`.
const ONLY_NIX_STORE: &str = "onlyNixStore";

/// Parses spec text. `origin` names the text in messages (a path, or
/// "standard input"). The result is not validated yet: see [`super::validate`].
pub fn parse_spec(text: &str, origin: &str) -> Result<ImageSpec, SpecError> {
    let object = parse_object(text, origin)?;
    spec_from_object(object)
}

/// Parses spec text into its JSON object, refusing anything but an object.
pub fn parse_object(text: &str, origin: &str) -> Result<Map<String, Value>, SpecError> {
    let value: Value = serde_json::from_str(text).map_err(|error| SpecError::Json {
        origin: origin.to_owned(),
        message: json_message(&error),
        line: error.line(),
        column: error.column(),
    })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(SpecError::NotAnObject {
            origin: origin.to_owned(),
            found: json_kind(&other),
        }),
    }
}

/// Lays `overrides` over `base`, key by key: an override replaces the whole
/// value of its field.
pub fn merge(mut base: Map<String, Value>, overrides: Map<String, Value>) -> Map<String, Value> {
    base.extend(overrides);
    base
}

/// Turns a JSON object (a spec file, possibly merged with overrides) into an
/// [`ImageSpec`]: unknown names are refused with a hint, wrong types name
/// their field, and defaults that depend on other fields are filled in.
///
/// `installBootLoader` defaults to true, but make-disk-image forbids it with
/// `onlyNixStore`; so when `onlyNixStore` is true and `installBootLoader` is
/// not written, it is taken as false. Written as true, validation refuses it.
pub fn spec_from_object(mut object: Map<String, Value>) -> Result<ImageSpec, SpecError> {
    check_names(&object, "", &known_spec_fields())?;
    if let Some(Value::Array(entries)) = object.get("contents") {
        let known = known_content_fields();
        for (index, entry) in entries.iter().enumerate() {
            if let Value::Object(entry) = entry {
                check_names(entry, &format!("contents[{index}]"), &known)?;
            }
        }
    }
    if object.get(ONLY_NIX_STORE) == Some(&Value::Bool(true))
        && !object.contains_key(INSTALL_BOOT_LOADER)
    {
        object.insert(INSTALL_BOOT_LOADER.to_owned(), Value::Bool(false));
    }
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|error| {
        let field = error.path().to_string();
        let message = in_json_words(&error.into_inner().to_string());
        let hint = (field.ends_with(".mode") && message.contains("integer"))
            .then(|| "write modes as strings, such as \"0644\"".to_owned());
        SpecError::WrongType {
            field,
            message,
            hint,
        }
    })
}

/// serde's message in JSON's words: `u64` is "a whole number", a map is an
/// object, a sequence is an array.
fn in_json_words(message: &str) -> String {
    const WORDS: [(&str, &str); 6] = [
        ("expected u64", "expected a whole number"),
        (
            "expected struct ContentEntry",
            "expected an object with \"source\" and \"target\"",
        ),
        ("expected path string", "expected a path string"),
        ("map", "object"),
        ("a sequence", "an array"),
        ("sequence", "array"),
    ];
    WORDS.iter().fold(message.to_owned(), |text, (from, to)| {
        text.replace(from, to)
    })
}

/// The JSON names of every spec field, in declaration order.
pub fn known_spec_fields() -> Vec<String> {
    object_keys(serde_json::to_value(ImageSpec::default()))
}

/// The JSON names of a `contents` entry's fields.
pub fn known_content_fields() -> Vec<String> {
    let sample = ContentEntry {
        source: String::new(),
        target: String::new(),
        mode: Some(String::new()),
        user: Some(String::new()),
        group: Some(String::new()),
    };
    object_keys(serde_json::to_value(sample))
}

/// The known name closest to `name`, if one is close enough to be a typo.
///
/// Case, `_` and `-` are ignored first, so `disk_size` and `DISKSIZE` both
/// find `diskSize`; then small edit distances count as typos.
pub fn closest_name<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let folded = fold(name);
    known
        .iter()
        .map(|candidate| {
            let score = strsim::normalized_damerau_levenshtein(&folded, &fold(candidate));
            (score, candidate)
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate.as_str())
}

fn check_names(
    object: &Map<String, Value>,
    parent: &str,
    known: &[String],
) -> Result<(), SpecError> {
    for name in object.keys() {
        if !known.iter().any(|k| k == name) {
            return Err(SpecError::UnknownField {
                field: name.clone(),
                parent: parent.to_owned(),
                suggestion: closest_name(name, known).map(str::to_owned),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn object_keys(value: Result<Value, serde_json::Error>) -> Vec<String> {
    match value {
        Ok(Value::Object(object)) => object.keys().cloned().collect(),
        // The spec types always serialize to objects; nothing to list otherwise.
        _ => Vec::new(),
    }
}

/// serde_json's message without its trailing " at line L column C".
fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ByteSize, DiskSize, PartitionTableType};

    fn parse(text: &str) -> Result<ImageSpec, SpecError> {
        parse_spec(text, "test.json")
    }

    #[test]
    fn empty_object_is_the_default() {
        assert_eq!(parse("{}").unwrap(), ImageSpec::default());
    }

    #[test]
    fn reads_make_disk_image_names() {
        let spec = parse(
            r#"{"diskSize": 2048, "bootSize": "512M", "partitionTableType": "efi",
                "touchEFIVars": true, "rootGPUID": "00000000-0000-0000-0000-000000000001",
                "postVM": "true", "contents": [{"source": "/a", "target": "/b", "mode": "0600"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.disk_size, DiskSize::Fixed(ByteSize::mib(2048)));
        assert_eq!(spec.boot_size, ByteSize::mib(512));
        assert_eq!(spec.partition_table_type, PartitionTableType::Efi);
        assert!(spec.touch_efi_vars);
        assert_eq!(spec.root_gpuid, "00000000-0000-0000-0000-000000000001");
        assert_eq!(spec.post_vm, "true");
        assert_eq!(spec.contents[0].mode.as_deref(), Some("0600"));
    }

    #[test]
    fn unknown_field_suggests_the_close_name() {
        match parse(r#"{"diskSzie": 10}"#) {
            Err(SpecError::UnknownField {
                field, suggestion, ..
            }) => {
                assert_eq!(field, "diskSzie");
                assert_eq!(suggestion.as_deref(), Some("diskSize"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let known = known_spec_fields();
        assert_eq!(closest_name("disk_size", &known), Some("diskSize"));
        assert_eq!(closest_name("touchEfiVars", &known), Some("touchEFIVars"));
        assert_eq!(closest_name("postvm", &known), Some("postVM"));
        assert_eq!(closest_name("fruitBasket", &known), None);
    }

    #[test]
    fn unknown_field_without_a_close_name_lists_the_known_ones() {
        let error = parse(r#"{"fruitBasket": 1}"#).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("`fruitBasket`"), "{text}");
        assert!(
            text.contains("additionalPaths, additionalSpace, baseName"),
            "{text}"
        );
    }

    #[test]
    fn unknown_content_field_names_the_entry() {
        let error = parse(r#"{"contents": [{"source": "/a", "target": "/b"}, {"source": "/a", "target": "/b", "owner": "x"}]}"#)
            .unwrap_err();
        match error {
            SpecError::UnknownField { field, parent, .. } => {
                assert_eq!(field, "owner");
                assert_eq!(parent, "contents[1]");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_their_field() {
        let cases = [
            (r#"{"memSize": "lots"}"#, "memSize"),
            (r#"{"onlyNixStore": "yes"}"#, "onlyNixStore"),
            (r#"{"diskSize": -5}"#, "diskSize"),
            (r#"{"additionalSpace": "1.5G"}"#, "additionalSpace"),
            (r#"{"partitionTableType": "gpt"}"#, "partitionTableType"),
            (r#"{"contents": [{"source": "/a"}]}"#, "contents[0]"),
            (
                r#"{"contents": [{"source": "/a", "target": 7}]}"#,
                "contents[0].target",
            ),
            (r#"{"contents": {"source": "/a"}}"#, "contents"),
        ];
        for (text, expected) in cases {
            match parse(text) {
                Err(SpecError::WrongType { field, .. }) => assert_eq!(field, expected, "{text}"),
                other => panic!("{text}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn type_messages_speak_json() {
        let text = parse(r#"{"memSize": "lots"}"#).unwrap_err().to_string();
        assert_eq!(
            text,
            "field `memSize`: invalid type: string \"lots\", expected a whole number"
        );
        let text = parse(r#"{"contents": {"a": 1}}"#).unwrap_err().to_string();
        assert_eq!(
            text,
            "field `contents`: invalid type: object, expected an array"
        );
        let text = parse(r#"{"contents": [{"source": "/a", "target": "/b", "mode": 644}]}"#)
            .unwrap_err()
            .to_string();
        assert!(text.contains("hint: write modes as strings"), "{text}");
    }

    #[test]
    fn negative_size_says_negative() {
        let text = parse(r#"{"bootSize": "-1G"}"#).unwrap_err().to_string();
        assert!(
            text.contains("bootSize") && text.contains("negative"),
            "{text}"
        );
    }

    #[test]
    fn malformed_json_gives_its_position() {
        match parse("{\n  \"memSize\": 1024,\n}") {
            Err(SpecError::Json { line, message, .. }) => {
                assert_eq!(line, 3);
                assert!(!message.contains(" at line "), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            parse("[1, 2]"),
            Err(SpecError::NotAnObject {
                found: "an array",
                ..
            })
        ));
    }

    #[test]
    fn only_nix_store_turns_the_default_bootloader_off() {
        let spec = parse(r#"{"onlyNixStore": true}"#).unwrap();
        assert!(!spec.install_boot_loader);
        let spec = parse(r#"{"onlyNixStore": true, "installBootLoader": true}"#).unwrap();
        assert!(
            spec.install_boot_loader,
            "an explicit value is kept for validation to refuse"
        );
    }

    #[test]
    fn overrides_replace_whole_fields() {
        let base = parse_object(r#"{"memSize": 2048, "systems": ["/a", "/b"]}"#, "t").unwrap();
        let mut overrides = Map::new();
        overrides.insert("memSize".into(), Value::from(4096));
        let spec = spec_from_object(merge(base, overrides)).unwrap();
        assert_eq!(spec.mem_size, 4096);
        assert_eq!(spec.systems.len(), 2);
    }

    proptest::proptest! {
        /// Whatever a spec holds, writing it as JSON and reading it back
        /// gives the same spec: `spec --check` output is a valid input.
        #[test]
        fn specs_round_trip_through_json(
            mem_size in 0u64..1 << 40,
            disk_mib in proptest::option::of(0u64..1 << 30),
            boot_bytes in 0u64..1 << 40,
            layout in proptest::sample::select(PartitionTableType::ALL.to_vec()),
            label in proptest::option::of("[ -~]{0,20}"),
            only_nix_store: bool,
            install_boot_loader: bool,
            systems in proptest::collection::vec("/[a-z0-9./-]{1,30}", 0..3),
        ) {
            let spec = ImageSpec {
                mem_size,
                disk_size: disk_mib.map_or(DiskSize::Auto, |mib| DiskSize::Fixed(ByteSize::mib(mib))),
                boot_size: ByteSize(boot_bytes),
                partition_table_type: layout,
                label,
                only_nix_store,
                install_boot_loader,
                systems: systems.into_iter().map(Into::into).collect(),
                ..ImageSpec::default()
            };
            let text = serde_json::to_string(&spec).unwrap();
            proptest::prop_assert_eq!(parse(&text).unwrap(), spec);
        }
    }

    #[test]
    fn defaults_round_trip() {
        let text = serde_json::to_string_pretty(&ImageSpec::default()).unwrap();
        assert_eq!(parse(&text).unwrap(), ImageSpec::default());
    }
}

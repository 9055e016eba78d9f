//! Path safety of the spec: every value that becomes a path inside the
//! image, a file name on the host, or a word of a guest script is refused
//! up front when it could climb out of where it belongs or be read as
//! something else. Each case names the field and says what is allowed.

use std::path::PathBuf;

use super::tests::{accepted, entry, refused, valid};
use super::*;
use crate::spec::{ContentEntry, ImageFormat};

fn with_contents(entries: Vec<ContentEntry>) -> ImageSpec {
    ImageSpec {
        contents: entries,
        ..valid()
    }
}

#[test]
fn contents_targets_that_climb_out_or_hide_a_second_name_are_refused() {
    for (target, allowed) in [
        ("../../x", "an absolute path inside the image"),
        ("/../../x", "without `.` or `..` components"),
        ("/etc/../../../tmp/x", "without `.` or `..` components"),
        ("/etc/./passwd", "without `.` or `..` components"),
        ("/etc/.", "without `.` or `..` components"),
        ("/etc/pass\nwd", "without control characters"),
        ("/etc/pass\0wd", "without control characters"),
        ("/etc/\u{1b}[2Jx", "without control characters"),
        ("/", "only a glob source may place into the image root"),
        ("//", "only a glob source may place into the image root"),
    ] {
        let text = refused(&with_contents(vec![entry(target)]), "contents[0].target");
        assert!(text.contains(allowed), "{target:?}: {text}");
        // The message quotes the value as JSON, so a newline shows as `\n`.
        assert!(!text.lines().next().unwrap_or("").is_empty(), "{text}");
    }
    // A glob may place into the root; shell metacharacters are plain
    // characters of a file name (every script quotes them).
    let mut glob = entry("/");
    glob.source = "/srv/*".into();
    accepted(&with_contents(vec![glob]));
    accepted(&with_contents(vec![entry(
        "/srv/it's $(touch x); `y` \"z\" *",
    )]));
    accepted(&with_contents(vec![
        entry("/etc/..hidden"),
        entry("/etc/.ok"),
    ]));
}

#[test]
fn the_contents_step_refuses_exactly_what_validation_refuses() {
    use crate::install::contents::normalise_target;
    for target in [
        "/a", "a", "/", "/a/../b", "/a/./b", "/a/.", "/..", "/a\n", "/a\tb", "/a//b/", "/.a",
        "/a..", "/$(x)",
    ] {
        let by_validation = target_problem(target);
        let by_contents = normalise_target(0, target);
        assert_eq!(
            by_validation.is_none(),
            by_contents.is_ok(),
            "{target:?}: {by_validation:?} vs {by_contents:?}"
        );
    }
    assert_eq!(normalise_target(0, "/a//b/").unwrap(), PathBuf::from("a/b"));
}

#[test]
fn labels_with_a_slash_or_control_characters_are_refused_and_metacharacters_kept() {
    for label in ["a/b", "a\nb", "a\0b", "\u{7f}"] {
        let text = refused(
            &ImageSpec {
                label: Some(label.into()),
                ..valid()
            },
            "label",
        );
        assert!(
            text.contains("printable characters other than `/`"),
            "{text}"
        );
    }
    // The guest's mkfs line quotes the label: `$` and quotes are fine.
    accepted(&ImageSpec {
        label: Some("x'$(id)`;".into()),
        ..valid()
    });
}

#[test]
fn base_names_stay_one_file_name_in_the_output() {
    for base in [
        "../x", "a/b", "/abs", ".hidden", "..", "a\nb", "a\rb", "a\0b", "",
    ] {
        let text = refused(
            &ImageSpec {
                base_name: base.into(),
                ..valid()
            },
            "baseName",
        );
        assert!(text.contains("a plain file name"), "{base:?}: {text}");
    }
    let long = ImageSpec {
        base_name: "x".repeat(251),
        format: ImageFormat::Qcow2,
        ..valid()
    };
    let text = refused(&long, "baseName");
    assert!(text.contains("at most 249 bytes"), "{text}");
    accepted(&ImageSpec {
        base_name: "x".repeat(249),
        format: ImageFormat::Qcow2,
        ..valid()
    });
    accepted(&ImageSpec {
        base_name: "nixos image $(v1)".into(),
        ..valid()
    });
}

#[test]
fn host_paths_with_control_characters_are_refused_naming_the_field() {
    let bad = PathBuf::from("/nix/store/x\n/etc");
    let cases: Vec<(ImageSpec, &str)> = vec![
        (
            ImageSpec {
                system: Some(bad.clone()),
                ..valid()
            },
            "system",
        ),
        (
            ImageSpec {
                system: None,
                systems: vec!["/ok".into(), bad.clone()],
                ..valid()
            },
            "systems[1]",
        ),
        (
            ImageSpec {
                additional_paths: vec![bad.clone()],
                ..valid()
            },
            "additionalPaths[0]",
        ),
        (
            ImageSpec {
                config_file: Some("/etc/x\0y".into()),
                ..valid()
            },
            "configFile",
        ),
        (
            with_contents(vec![ContentEntry {
                source: "/etc/\nhosts".into(),
                ..entry("/x")
            }]),
            "contents[0].source",
        ),
    ];
    for (spec, field) in cases {
        let text = refused(&spec, field);
        assert!(text.contains("without control characters"), "{text}");
    }
}

use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

fn entry(source: &Path, target: &str) -> ContentEntry {
    ContentEntry {
        source: source.display().to_string(),
        target: target.to_owned(),
        mode: None,
        user: None,
        group: None,
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A host tree: a/x (0640), a/sub/y (0755), a/link -> x, f.txt (0600), g.txt, .hidden.txt.
fn host_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/sub")).unwrap();
    std::fs::write(root.join("a/x"), "x").unwrap();
    chmod(&root.join("a/x"), 0o640);
    std::fs::write(root.join("a/sub/y"), "y").unwrap();
    chmod(&root.join("a/sub/y"), 0o755);
    chmod(&root.join("a/sub"), 0o750);
    chmod(&root.join("a"), 0o755);
    symlink("x", root.join("a/link")).unwrap();
    std::fs::write(root.join("f.txt"), "f").unwrap();
    chmod(&root.join("f.txt"), 0o600);
    std::fs::write(root.join("g.txt"), "g").unwrap();
    chmod(&root.join("g.txt"), 0o644);
    std::fs::write(root.join(".hidden.txt"), "h").unwrap();
    dir
}

fn summary(resolved: &ResolvedContents) -> Vec<String> {
    resolved
        .placements
        .iter()
        .map(|p| {
            let kind = match &p.kind {
                PlacementKind::Dir => "d".to_owned(),
                PlacementKind::File => "f".to_owned(),
                PlacementKind::Symlink(t) => format!("l->{}", t.display()),
            };
            format!("{} {:04o} {kind} /{}", p.index, p.mode, p.target.display())
        })
        .collect()
}

#[test]
fn a_directory_source_becomes_the_target_with_its_modes_and_links() {
    let host = host_tree();
    let entries = [entry(&host.path().join("a"), "/srv/a")];
    let resolved = resolve_contents(&entries, &Accounts::builtin()).unwrap();
    assert_eq!(
        summary(&resolved),
        [
            "0 0755 d /srv/a",
            "0 0000 l->x /srv/a/link",
            "0 0750 d /srv/a/sub",
            "0 0755 f /srv/a/sub/y",
            "0 0640 f /srv/a/x",
        ]
    );
    assert!(resolved.chowns.is_empty());
}

#[test]
fn a_glob_places_each_match_inside_the_target_and_mode_applies_to_all() {
    let host = host_tree();
    let mut glob = entry(&host.path().join("*"), "/drop");
    glob.mode = Some("0644".into());
    let resolved = resolve_contents(&[glob], &Accounts::builtin()).unwrap();
    // `*` skips the dot file, as bash does; the directory goes in whole.
    assert_eq!(
        summary(&resolved),
        [
            "0 0755 d /drop",
            "0 0644 d /drop/a",
            "0 0000 l->x /drop/a/link",
            "0 0644 d /drop/a/sub",
            "0 0644 f /drop/a/sub/y",
            "0 0644 f /drop/a/x",
            "0 0644 f /drop/f.txt",
            "0 0644 f /drop/g.txt",
        ]
    );
}

#[test]
fn owners_resolve_to_numeric_chowns_and_unknown_names_are_errors() {
    let host = host_tree();
    let mut accounts = Accounts::builtin();
    accounts.add_colon_file("alice:x:1000:100::/:/bin/sh\n", true);
    accounts.add_colon_file("users:x:100:\n", false);
    let mut owned = entry(&host.path().join("f.txt"), "/home/alice/f.txt");
    owned.user = Some("alice".into());
    owned.group = Some("users".into());
    let resolved = resolve_contents(std::slice::from_ref(&owned), &accounts).unwrap();
    assert_eq!(
        resolved.chowns,
        [ChownOp {
            index: 0,
            target: "/home/alice/f.txt".into(),
            uid: 1000,
            gid: 100
        }]
    );
    let mut unknown = owned.clone();
    unknown.target = "/other".into();
    unknown.user = Some("bob".into());
    let error = resolve_contents(&[owned, unknown], &accounts).unwrap_err();
    assert!(
        matches!(
            &error,
            ContentsError::UnknownAccount {
                index: 1,
                field: "user",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("`bob`"), "{error}");
}

#[test]
fn a_symlink_to_a_file_stays_a_link_and_one_to_a_directory_is_copied() {
    let host = host_tree();
    symlink(host.path().join("f.txt"), host.path().join("to-file")).unwrap();
    symlink(host.path().join("a/sub"), host.path().join("to-dir")).unwrap();
    let entries = [
        entry(&host.path().join("to-file"), "/etc/f"),
        entry(&host.path().join("to-dir"), "/etc/sub"),
    ];
    let resolved = resolve_contents(&entries, &Accounts::builtin()).unwrap();
    assert_eq!(
        summary(&resolved),
        [
            format!("0 0000 l->{} /etc/f", host.path().join("f.txt").display()),
            "1 0750 d /etc/sub".to_owned(),
            "1 0755 f /etc/sub/y".to_owned(),
        ]
    );
}

#[test]
fn duplicates_are_refused_naming_both_entries() {
    let host = host_tree();
    let f = host.path().join("f.txt");
    let same = [entry(&f, "/etc/f"), entry(&f, "//etc/f/")];
    assert!(matches!(
        resolve_contents(&same, &Accounts::builtin()),
        Err(ContentsError::DuplicateTarget {
            index: 1,
            first: 0,
            ..
        })
    ));
    // A target that an earlier entry made as a parent exists already.
    let parent = [entry(&f, "/etc/d/f"), entry(&f, "/etc/d")];
    assert!(matches!(
        resolve_contents(&parent, &Accounts::builtin()),
        Err(ContentsError::DuplicateTarget {
            index: 1,
            first: 0,
            ..
        })
    ));
    // A glob over a file placed earlier.
    let glob = [
        entry(&f, "/drop/g.txt"),
        entry(&host.path().join("*.txt"), "/drop"),
    ];
    assert!(matches!(
        resolve_contents(&glob, &Accounts::builtin()),
        Err(ContentsError::DuplicateTarget {
            index: 1,
            first: 0,
            ..
        })
    ));
    // Two globs into one directory merge.
    let merge = [
        entry(&host.path().join("f*"), "/drop"),
        entry(&host.path().join("g*"), "/drop"),
    ];
    assert_eq!(
        resolve_contents(&merge, &Accounts::builtin())
            .unwrap()
            .placements
            .len(),
        4
    );
}

#[test]
fn missing_sources_bad_targets_and_modes_name_their_entry() {
    let host = host_tree();
    let missing = [
        entry(&host.path().join("f.txt"), "/f"),
        entry(&host.path().join("nope"), "/n"),
    ];
    let error = resolve_contents(&missing, &Accounts::builtin()).unwrap_err();
    assert!(
        matches!(error, ContentsError::MissingSource { index: 1, .. }),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("contents[1].source"),
        "{error}"
    );
    let nothing = [entry(&host.path().join("*.none"), "/n")];
    assert!(matches!(
        resolve_contents(&nothing, &Accounts::builtin()),
        Err(ContentsError::GlobMatchedNothing { index: 0, .. })
    ));
    for target in ["relative", "/a/../b", "/a/./b", "/"] {
        let bad = [entry(&host.path().join("f.txt"), target)];
        assert!(
            matches!(
                resolve_contents(&bad, &Accounts::builtin()),
                Err(ContentsError::BadTarget { .. })
            ),
            "{target}"
        );
    }
    let mut mode = entry(&host.path().join("f.txt"), "/f");
    mode.mode = Some("0o644".into());
    assert!(matches!(
        resolve_contents(&[mode], &Accounts::builtin()),
        Err(ContentsError::BadMode { .. })
    ));
}

#[test]
fn fifos_are_refused() {
    let host = host_tree();
    let fifo = host.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let error = resolve_contents(&[entry(&fifo, "/p")], &Accounts::builtin()).unwrap_err();
    assert!(
        matches!(error, ContentsError::Unsupported { kind: "FIFO", .. }),
        "{error}"
    );
}

#[test]
fn placements_join_the_image_root_plan() {
    let host = host_tree();
    let resolved = resolve_contents(
        &[entry(&host.path().join("a"), "/srv/a")],
        &Accounts::builtin(),
    )
    .unwrap();
    let mut plan = ImageRootPlan::default();
    resolved.add_to(&mut plan).unwrap();
    assert_eq!(
        plan.get(Path::new("srv/a/x")).unwrap().kind,
        EntryKind::HostFile(host.path().join("a/x"))
    );
    assert_eq!(plan.get(Path::new("srv")).unwrap().mode, 0o755);
}

#[test]
fn links_out_of_the_image_are_placed_as_links_and_nothing_goes_through_them() {
    let host = host_tree();
    // Stands for the host's /etc: it must stay untouched.
    let outside = tempfile::tempdir().unwrap();
    let links = host.path().join("links");
    std::fs::create_dir(&links).unwrap();
    symlink(outside.path(), links.join("etc")).unwrap();
    symlink("/etc/passwd", links.join("passwd")).unwrap();
    let glob = entry(&links.join("*"), "/srv");
    let resolved = resolve_contents(std::slice::from_ref(&glob), &Accounts::builtin()).unwrap();
    assert_eq!(
        summary(&resolved),
        [
            "0 0755 d /srv".to_owned(),
            format!("0 0000 l->{} /srv/etc", outside.path().display()),
            "0 0000 l->/etc/passwd /srv/passwd".to_owned(),
        ]
    );

    // A later entry placing a file through the link is refused when planned.
    let through = [
        glob.clone(),
        entry(&host.path().join("f.txt"), "/srv/etc/f.txt"),
    ];
    let resolved_through = resolve_contents(&through, &Accounts::builtin()).unwrap();
    match resolved_through.add_to(&mut ImageRootPlan::default()) {
        Err(ImageRootError::Collision { path, .. }) => assert_eq!(path, Path::new("srv/etc")),
        other => panic!("expected a collision at /srv/etc, got {other:?}"),
    }

    // Staged, the links stay links and nothing lands where they point.
    let mut plan = ImageRootPlan::default();
    resolved.add_to(&mut plan).unwrap();
    let parent = tempfile::tempdir().unwrap();
    let staging = parent.path().join("image-root");
    crate::install::materialise(&plan, &staging).unwrap();
    assert_eq!(
        std::fs::read_link(staging.join("srv/etc")).unwrap(),
        outside.path()
    );
    assert_eq!(
        std::fs::read_link(staging.join("srv/passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

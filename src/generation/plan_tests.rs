use super::*;

const A: &str = "/nix/store/aaaa-nixos-system-a";
const B: &str = "/nix/store/bbbb-nixos-system-b";
const C: &str = "/nix/store/cccc-nixos-system-c";

fn image_links() -> Links {
    parse_links(&format!(
        "L\t/nix/var/nix/profiles/system\tsystem-2-link\n\
         L\t/nix/var/nix/profiles/system-1-link\t{A}\n\
         L\t/nix/var/nix/profiles/system-2-link\t{B}\n\
         L\t/nix/var/nix/gcroots/profiles\t/nix/var/nix/profiles\n\
         noise from the shell\n"
    ))
}

#[test]
fn generations_and_default_are_read_from_the_links() {
    let links = image_links();
    assert_eq!(
        generations(&links),
        BTreeMap::from([(1, PathBuf::from(A)), (2, PathBuf::from(B))])
    );
    assert_eq!(default_generation(&links), Some(2));
}

#[test]
fn adding_makes_the_next_generation_the_default() {
    let request = Request {
        add: Some(PathBuf::from(C)),
        ..Request::default()
    };
    let change = plan_change(&image_links(), &request).expect("a valid change");
    assert_eq!(change.added, Some((3, PathBuf::from(C))));
    assert_eq!(change.default, 3);
    assert_eq!(
        change.links.get(Path::new("/nix/var/nix/profiles/system")),
        Some(&PathBuf::from("system-3-link"))
    );
    assert_eq!(
        change
            .links
            .get(Path::new("/nix/var/nix/profiles/system-3-link")),
        Some(&PathBuf::from(C))
    );
}

#[test]
fn set_default_and_remove_are_checked() {
    let links = image_links();
    let change = plan_change(
        &links,
        &Request {
            set_default: Some(1),
            remove: vec![2],
            ..Request::default()
        },
    )
    .expect("a valid change");
    assert_eq!(change.default, 1);
    assert_eq!(change.removed, [2]);
    assert!(
        !change
            .links
            .contains_key(Path::new("/nix/var/nix/profiles/system-2-link"))
    );
    assert!(matches!(
        plan_change(
            &links,
            &Request {
                remove: vec![2],
                ..Request::default()
            }
        ),
        Err(GenerationError::RemovingDefault { generation: 2 })
    ));
    match plan_change(
        &links,
        &Request {
            set_default: Some(7),
            ..Request::default()
        },
    ) {
        Err(GenerationError::NoSuchGeneration {
            generation: 7,
            existing,
        }) => assert_eq!(existing, "1, 2"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        plan_change(&Links::new(), &Request::default()),
        Err(GenerationError::NoGenerations)
    ));
}

#[test]
fn roots_follow_links_inside_the_image() {
    let mut links = image_links();
    // An indirect root: gcroots/auto -> a result link elsewhere -> the store.
    links.insert("/nix/var/nix/gcroots/auto/x".into(), "/root/result".into());
    links.insert("/root/result".into(), format!("{C}/bin").into());
    // Relative targets, and one that leaves the store alone.
    links.insert(
        "/nix/var/nix/profiles/per-user/root/channels".into(),
        "channels-1-link".into(),
    );
    links.insert(
        "/nix/var/nix/profiles/per-user/root/channels-1-link".into(),
        "../../../../../../nix/store/dddd-channel".into(),
    );
    links.insert("/nix/var/nix/gcroots/loop".into(), "loop".into());
    assert_eq!(
        roots(&links),
        BTreeSet::from([
            PathBuf::from(A),
            PathBuf::from(B),
            PathBuf::from(C),
            PathBuf::from("/nix/store/dddd-channel"),
        ])
    );
}

#[test]
fn dead_paths_are_what_no_root_reaches() {
    let p = |s: &str| PathBuf::from(format!("/nix/store/{s}"));
    let graph = BTreeMap::from([
        (p("a"), vec![p("a"), p("lib")]),
        (p("b"), vec![p("lib"), p("only-b")]),
        (p("lib"), vec![]),
        (p("only-b"), vec![p("only-b-dep")]),
        (p("only-b-dep"), vec![]),
        // a's deriver is kept with it; an invalid reference is ignored.
        (p("stray"), vec![p("gone")]),
    ]);
    let roots = BTreeSet::from([p("a"), p("not-valid")]);
    assert_eq!(
        dead_paths(&graph, &roots),
        BTreeSet::from([p("b"), p("only-b"), p("only-b-dep"), p("stray")])
    );
}

#[test]
fn only_plain_store_paths_may_be_deleted() {
    assert!(is_plain_store_path(Path::new("/nix/store/abc-x")));
    for bad in [
        "/nix/store",
        "/nix/store/",
        "/nix/store/..",
        "/nix/store/a/b",
        "/nix/store/../etc",
        "/etc/passwd",
        "nix/store/abc",
        "/nix/store/a\nb",
    ] {
        assert!(!is_plain_store_path(Path::new(bad)), "{bad:?}");
    }
}

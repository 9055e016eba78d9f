//! Unit tests of registration parsing, rendering, checks and merging.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

const A: &str = "/nix/store/0ysj00x31q08vxsznqd9pmvwa0rrzza8-a";
const B: &str = "/nix/store/11vwvgcxqjz2lk56j9j0643dmxwp8ips-b";
const DRV: &str = "/nix/store/000y5y39fnxp2ijj8cmdgvmia6wwcrws-b.drv";
const HEX: &str = "ab335240fd942ab8191c5e628cd4ff3903c577bda961fb75df08e0303a00527b";
const BASE32: &str = "0ysj00x31q08vxsznqd9pmvwa0rrzza8qqjy3hcvhallzm054cxb";

fn file() -> &'static Path {
    Path::new("registration")
}

#[test]
fn hashes_are_normalised_from_every_form() {
    let want = format!("sha256:{HEX}");
    assert_eq!(normalise_nar_hash(HEX), Some(want.clone()));
    assert_eq!(
        normalise_nar_hash(&format!("sha256:{HEX}")),
        Some(want.clone())
    );
    assert_eq!(normalise_nar_hash(&format!("sha256:{BASE32}")), Some(want));
    assert_eq!(normalise_nar_hash(BASE32), None);
    assert_eq!(normalise_nar_hash("sha256:xyz"), None);
    assert_eq!(normalise_nar_hash(&format!("sha256:{}", &HEX[..62])), None);
    assert_eq!(
        normalise_nar_hash("sha256:0ysj00x31q08vxsznqd9pmvwa0rrzza8qqjy3hcvhallzm054cxe"),
        None
    );
}

#[test]
fn closure_info_registration_is_read() {
    // As closureInfo writes it: base32 hashes, empty derivers.
    let text =
        format!("{B}\nsha256:{BASE32}\n4096\n\n2\n{A}\n{B}\n{A}\nsha256:{BASE32}\n120\n\n0\n");
    let infos = parse_registration(&text, file()).unwrap();
    let closure = Closure::new(infos).unwrap();
    assert_eq!(
        closure.paths,
        vec![
            StorePathInfo {
                path: A.into(),
                nar_hash: format!("sha256:{HEX}"),
                nar_size: 120,
                references: vec![],
                deriver: None,
            },
            StorePathInfo {
                path: B.into(),
                nar_hash: format!("sha256:{HEX}"),
                nar_size: 4096,
                references: vec![A.into(), B.into()],
                deriver: None,
            },
        ]
    );
    assert_eq!(closure.total_nar_size(), 4216);
}

#[test]
fn dump_db_output_is_read_and_written_back() {
    let text = format!("{A}\n{HEX}\n120\n{DRV}\n0\n");
    let closure = Closure::new(parse_registration(&text, file()).unwrap()).unwrap();
    assert_eq!(closure.paths[0].deriver.as_deref(), Some(Path::new(DRV)));
    assert_eq!(
        closure.registration_text(),
        format!("{A}\nsha256:{HEX}\n120\n{DRV}\n0\n")
    );
    assert_eq!(closure.store_paths_text(), format!("{A}\n"));
}

fn malformed_line(text: &str) -> (usize, String) {
    match parse_registration(text, file()) {
        Err(ClosureError::Malformed { line, problem, .. }) => (line, problem),
        other => panic!("expected a malformed error, got {other:?}"),
    }
}

#[test]
fn malformed_input_names_its_line() {
    let (line, problem) = malformed_line(&format!("{A}\nsha256:nothash\n120\n\n0\n"));
    assert_eq!(line, 2);
    assert!(problem.contains("not a NAR hash"), "{problem}");

    let (line, problem) = malformed_line(&format!("{A}\n{HEX}\ntwelve\n\n0\n"));
    assert_eq!(line, 3);
    assert!(problem.contains("NAR size"), "{problem}");

    let (line, _) = malformed_line(&format!("{A}\n{HEX}\n120\n\nx\n"));
    assert_eq!(line, 5);

    let (line, problem) = malformed_line(&format!("{A}\n{HEX}\n120\n\n2\n{B}\n"));
    assert_eq!(line, 7);
    assert!(problem.contains("ends where a reference"), "{problem}");

    let (line, problem) = malformed_line(&format!("{A}\n{HEX}\n120\n\n1\nrelative/path\n"));
    assert_eq!(line, 6);
    assert!(problem.contains("not a reference"), "{problem}");

    let (line, _) = malformed_line("/nix/store/short-name\n");
    assert_eq!(line, 1);

    let (line, problem) = malformed_line(&format!("{A}\n{HEX}\n120\nnot-a-drv\n0\n"));
    assert_eq!(line, 4);
    assert!(problem.contains("deriver"), "{problem}");
}

#[test]
fn a_hashless_registration_is_named_as_such() {
    // The `--register-validity` format: path, deriver, count, references.
    match parse_registration(&format!("{A}\n\n0\n"), file()) {
        Err(ClosureError::MissingHashes { line: 2, .. }) => {}
        other => panic!("expected MissingHashes, got {other:?}"),
    }
}

#[test]
fn duplicates_and_dangling_references_are_refused() {
    let twice = format!("{A}\n{HEX}\n1\n\n0\n{A}\n{HEX}\n1\n\n0\n");
    assert!(matches!(
        parse_registration(&twice, file()),
        Err(ClosureError::Duplicate { line: 6, .. })
    ));
    let dangling = format!("{A}\n{HEX}\n1\n\n1\n{B}\n");
    let infos = parse_registration(&dangling, file()).unwrap();
    match Closure::new(infos) {
        Err(ClosureError::DanglingReference { path, reference }) => {
            assert_eq!(path, PathBuf::from(A));
            assert_eq!(reference, PathBuf::from(B));
        }
        other => panic!("expected a dangling reference, got {other:?}"),
    }
}

fn info(path: &str, hash: &str, references: &[&str]) -> StorePathInfo {
    StorePathInfo {
        path: path.into(),
        nar_hash: format!("sha256:{hash}"),
        nar_size: 8,
        references: references.iter().map(PathBuf::from).collect(),
        deriver: None,
    }
}

#[test]
fn merging_keeps_each_path_once_and_refuses_conflicts() {
    let one = Closure::new(vec![info(A, HEX, &[])]).unwrap();
    let two = Closure::new(vec![info(A, HEX, &[]), info(B, HEX, &[A])]).unwrap();
    let merged = Closure::merge([one.clone(), two.clone()]).unwrap();
    assert_eq!(merged, two);

    let other_hash = "0".repeat(64);
    let clash = Closure::new(vec![info(A, &other_hash, &[])]).unwrap();
    assert!(matches!(
        Closure::merge([one, clash]),
        Err(ClosureError::Conflict { .. })
    ));
}

#[test]
fn closure_info_directories_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let registration = format!("{B}\nsha256:{BASE32}\n8\n\n1\n{A}\n{A}\n{HEX}\n8\n\n0\n");
    std::fs::write(dir.path().join("registration"), &registration).unwrap();
    assert!(matches!(
        Closure::from_closure_info(dir.path()),
        Err(ClosureError::NotClosureInfo {
            missing: "store-paths",
            ..
        })
    ));
    std::fs::write(dir.path().join("store-paths"), format!("{B}\n")).unwrap();
    match Closure::from_closure_info(dir.path()) {
        Err(ClosureError::StorePathsMismatch {
            only_in_store_paths,
            only_in_registration,
            ..
        }) => {
            assert!(only_in_store_paths.is_empty());
            assert_eq!(only_in_registration, vec![PathBuf::from(A)]);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    std::fs::write(dir.path().join("store-paths"), format!("{B}\n{A}\n")).unwrap();
    let closure = Closure::from_closure_info(dir.path()).unwrap();
    assert_eq!(Closure::from_system(dir.path()).unwrap(), closure);
    assert_eq!(
        closure.store_paths().collect::<Vec<_>>(),
        vec![Path::new(A), Path::new(B)]
    );
}

fn store_path_strategy() -> impl Strategy<Value = String> {
    ("[0-9a-dfgh-np-sv-z]{32}", "[a-z][a-z0-9.+_-]{0,20}")
        .prop_map(|(hash, name)| format!("/nix/store/{hash}-{name}"))
}

fn closure_strategy() -> impl Strategy<Value = Closure> {
    proptest::collection::btree_set(store_path_strategy(), 1..12)
        .prop_flat_map(|paths| {
            let paths: Vec<String> = paths.into_iter().collect();
            let n = paths.len();
            let per_path = (
                proptest::array::uniform32(any::<u8>()),
                any::<u64>(),
                proptest::collection::vec(0..n, 0..4),
                proptest::option::of(store_path_strategy()),
            );
            (Just(paths), proptest::collection::vec(per_path, n))
        })
        .prop_map(|(paths, details)| {
            let infos = paths
                .iter()
                .zip(details)
                .map(|(path, (hash, size, refs, deriver))| StorePathInfo {
                    path: path.into(),
                    nar_hash: format!(
                        "sha256:{}",
                        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    ),
                    nar_size: size,
                    references: refs.into_iter().map(|i| PathBuf::from(&paths[i])).collect(),
                    deriver: deriver.map(|d| PathBuf::from(format!("{d}.drv"))),
                })
                .collect();
            Closure::new(infos).expect("references point inside")
        })
}

proptest! {
    #[test]
    fn registration_text_round_trips(closure in closure_strategy()) {
        let text = closure.registration_text();
        let read = Closure::new(parse_registration(&text, file()).unwrap()).unwrap();
        prop_assert_eq!(&read, &closure);
        prop_assert_eq!(read.registration_text(), text);
    }
}

#[test]
fn a_missing_system_path_says_what_system_is() {
    let err = Closure::from_system(Path::new("/nonexistent/nixdisk-system")).unwrap_err();
    assert!(matches!(err, ClosureError::SystemMissing { .. }));
    assert!(err.to_string().contains("toplevel store path"), "{err}");
}

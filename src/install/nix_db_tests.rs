use std::path::PathBuf;

use super::*;
use crate::closure::StorePathInfo;

fn store(hash: char, name: &str) -> PathBuf {
    PathBuf::from(format!("/nix/store/{}-{name}", hash.to_string().repeat(32)))
}

fn example() -> Closure {
    let lib = store('1', "lib");
    let app = store('0', "app");
    Closure::new(vec![
        StorePathInfo {
            path: app.clone(),
            nar_hash: format!("sha256:{}", "ab".repeat(32)),
            nar_size: 1000,
            references: vec![lib.clone(), app.clone()],
            deriver: Some(PathBuf::from(format!(
                "{}.drv",
                store('2', "app").display()
            ))),
        },
        StorePathInfo {
            path: lib.clone(),
            nar_hash: format!("sha256:{}", "cd".repeat(32)),
            nar_size: 200,
            references: vec![],
            deriver: None,
        },
    ])
    .unwrap()
}

/// id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca.
type ValidPathRow = (
    i64,
    String,
    String,
    i64,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn open(files: &NixDbFiles) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    std::fs::write(&db, &files.db_sqlite).unwrap();
    let conn = Connection::open(&db).unwrap();
    (dir, conn)
}

#[test]
fn equal_closures_give_equal_bytes() {
    let first = render_nix_db(&example(), &[], 1).unwrap();
    let second = render_nix_db(&example(), &[], 1).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.schema, b"10");
    let other_time = render_nix_db(&example(), &[], 2).unwrap();
    assert_ne!(first.db_sqlite, other_time.db_sqlite);
}

#[test]
fn rows_follow_the_closure_order_with_null_optional_columns() {
    let closure = example();
    let files = render_nix_db(&closure, &[], 1).unwrap();
    let (_dir, conn) = open(&files);
    let mut rows = conn
        .prepare("select id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths order by id")
        .unwrap();
    let rows: Vec<ValidPathRow> = rows
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2);
    for (index, (row, info)) in rows.iter().zip(&closure.paths).enumerate() {
        assert_eq!(row.0, index as i64 + 1);
        assert_eq!(PathBuf::from(&row.1), info.path);
        assert_eq!(row.2, info.nar_hash);
        assert_eq!(row.3, 1);
        assert_eq!(row.4.as_ref().map(PathBuf::from), info.deriver);
        assert_eq!(row.5 as u64, info.nar_size);
        assert_eq!((&row.6, &row.7, &row.8), (&None, &None, &None));
    }
    let refs: Vec<(i64, i64)> = conn
        .prepare("select referrer, reference from Refs order by referrer, reference")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // app sorts before lib: app = 1 refers to itself and to lib = 2.
    assert_eq!(refs, vec![(1, 1), (1, 2)]);
    let mode: String = conn
        .query_row("pragma journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn derivation_outputs_are_parsed_and_registered() {
    let drv = PathBuf::from("/nix/store/00000000000000000000000000000000-x.drv");
    let text = r#"Derive([("dev","/nix/store/11111111111111111111111111111111-x-dev","",""),("out","/nix/store/22222222222222222222222222222222-x","",""),("ca","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",[],[])"#;
    let outputs = parse_derivation_outputs(&drv, text).unwrap();
    assert_eq!(
        outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
        ["dev", "out"]
    );
    let closure = Closure::new(vec![StorePathInfo {
        path: drv.clone(),
        nar_hash: format!("sha256:{}", "00".repeat(32)),
        nar_size: 1,
        references: vec![],
        deriver: None,
    }])
    .unwrap();
    let files = render_nix_db(&closure, &outputs, 1).unwrap();
    let (_dir, conn) = open(&files);
    let rows: Vec<(i64, String, String)> = conn
        .prepare("select drv, id, path from DerivationOutputs order by id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows[1],
        (
            1,
            "out".into(),
            "/nix/store/22222222222222222222222222222222-x".into()
        )
    );
    let stray = DerivationOutput {
        drv: "/nix/store/33333333333333333333333333333333-y.drv".into(),
        name: "out".into(),
        path: "/nix/store/44444444444444444444444444444444-y".into(),
    };
    assert!(matches!(
        render_nix_db(&closure, &[stray], 1),
        Err(NixDbError::UnknownDerivation { .. })
    ));
}

#[test]
fn a_derivation_that_is_not_aterm_is_refused_with_its_path() {
    let drv = PathBuf::from("/nix/store/00000000000000000000000000000000-x.drv");
    let error = parse_derivation_outputs(&drv, "{}").unwrap_err();
    assert!(error.to_string().contains("-x.drv"), "{error}");
}

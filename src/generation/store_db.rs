//! The image's own Nix database, edited on the host: a copy read out of the
//! builder VM gains the rows of the store paths being added (with their
//! references and the hashes Nix registered them with) and loses the rows of
//! the paths collected, then goes back into the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::GenerationError;
use crate::closure::StorePathInfo;
use crate::install::DerivationOutput;

/// An open copy of the image's `db.sqlite`.
pub struct ImageDb {
    conn: Connection,
    path: PathBuf,
}

impl ImageDb {
    /// Opens the copy at `path` (a `-wal` beside it is replayed).
    pub fn open(path: &Path) -> Result<ImageDb, GenerationError> {
        let conn = Connection::open(path).map_err(sql(path, "open"))?;
        conn.execute_batch("pragma foreign_keys = on;")
            .map_err(sql(path, "set pragmas"))?;
        // A database nixdisk did not write may be anything: check it is Nix's.
        conn.query_row("select count(*) from ValidPaths", [], |_| Ok(()))
            .map_err(sql(path, "read ValidPaths"))?;
        Ok(ImageDb {
            conn,
            path: path.to_owned(),
        })
    }

    /// Every valid path with what keeps it alive: its references, and its
    /// deriver when that is valid too.
    pub fn graph(&self) -> Result<BTreeMap<PathBuf, Vec<PathBuf>>, GenerationError> {
        let mut graph: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
        let mut paths = self
            .conn
            .prepare("select path, deriver from ValidPaths")
            .map_err(sql(&self.path, "read ValidPaths"))?;
        let rows = paths
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
            })
            .map_err(sql(&self.path, "read ValidPaths"))?;
        for row in rows {
            let (path, deriver) = row.map_err(sql(&self.path, "read ValidPaths"))?;
            graph
                .entry(PathBuf::from(path))
                .or_default()
                .extend(deriver.map(PathBuf::from));
        }
        let mut refs = self
            .conn
            .prepare(
                "select a.path, b.path from Refs join ValidPaths a on a.id = referrer \
                 join ValidPaths b on b.id = reference",
            )
            .map_err(sql(&self.path, "read Refs"))?;
        let rows = refs
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(sql(&self.path, "read Refs"))?;
        for row in rows {
            let (referrer, reference) = row.map_err(sql(&self.path, "read Refs"))?;
            graph
                .entry(PathBuf::from(referrer))
                .or_default()
                .push(PathBuf::from(reference));
        }
        Ok(graph)
    }

    /// Registers `paths` (none of them valid yet) with their references
    /// (each valid already or among `paths`) and `outputs` of the
    /// derivations among them, at `registration_time`.
    pub fn add(
        &mut self,
        paths: &[&StorePathInfo],
        outputs: &[DerivationOutput],
        registration_time: i64,
    ) -> Result<(), GenerationError> {
        let db = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&db, "begin"))?;
        {
            let mut insert = tx
                .prepare("insert into ValidPaths (path, hash, registrationTime, deriver, narSize) values (?1, ?2, ?3, ?4, ?5)")
                .map_err(sql(&db, "prepare ValidPaths"))?;
            for info in paths {
                insert
                    .execute(params![
                        info.path.to_string_lossy(),
                        info.nar_hash,
                        registration_time,
                        info.deriver
                            .as_ref()
                            .map(|d| d.to_string_lossy().into_owned()),
                        info.nar_size as i64,
                    ])
                    .map_err(sql(&db, "insert into ValidPaths"))?;
            }
            let id_of = |path: &Path| -> Result<Option<i64>, GenerationError> {
                tx.query_row(
                    "select id from ValidPaths where path = ?1",
                    [path.to_string_lossy()],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sql(&db, "look up a path"))
            };
            let mut insert_ref = tx
                .prepare("insert or ignore into Refs (referrer, reference) values (?1, ?2)")
                .map_err(sql(&db, "prepare Refs"))?;
            for info in paths {
                let referrer = id_of(&info.path)?.ok_or_else(|| missing(&db, &info.path))?;
                for reference in &info.references {
                    let id = id_of(reference)?.ok_or_else(|| missing(&db, reference))?;
                    insert_ref
                        .execute(params![referrer, id])
                        .map_err(sql(&db, "insert into Refs"))?;
                }
            }
            let mut insert_output = tx
                .prepare(
                    "insert or replace into DerivationOutputs (drv, id, path) values (?1, ?2, ?3)",
                )
                .map_err(sql(&db, "prepare DerivationOutputs"))?;
            for output in outputs {
                let drv = id_of(&output.drv)?.ok_or_else(|| missing(&db, &output.drv))?;
                insert_output
                    .execute(params![drv, output.name, output.path.to_string_lossy()])
                    .map_err(sql(&db, "insert into DerivationOutputs"))?;
            }
        }
        tx.commit().map_err(sql(&db, "commit"))
    }

    /// Unregisters `paths` (collected: nothing that stays refers to them).
    pub fn remove<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a PathBuf>,
    ) -> Result<(), GenerationError> {
        let db = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&db, "begin"))?;
        let paths: Vec<String> = paths
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        // References among the collected paths first: Refs forbids removing
        // a path something still refers to.
        for path in &paths {
            tx.execute(
                "delete from Refs where referrer = (select id from ValidPaths where path = ?1)",
                [path],
            )
            .map_err(sql(&db, "delete from Refs"))?;
        }
        for path in &paths {
            tx.execute(
                "delete from DerivationOutputs where drv = (select id from ValidPaths where path = ?1)",
                [path],
            )
            .map_err(sql(&db, "delete from DerivationOutputs"))?;
            tx.execute("delete from ValidPaths where path = ?1", [path])
                .map_err(sql(&db, "delete from ValidPaths"))?;
        }
        tx.commit().map_err(sql(&db, "commit"))
    }

    /// Closes the database, folding any write-ahead log into the file.
    pub fn close(self) -> Result<(), GenerationError> {
        let db = self.path.clone();
        self.conn
            .execute_batch("pragma wal_checkpoint(truncate);")
            .map_err(sql(&db, "checkpoint"))?;
        self.conn
            .close()
            .map_err(|(_, source)| GenerationError::Database {
                db,
                what: "close",
                source,
            })
    }
}

fn sql(db: &Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> GenerationError {
    let db = db.to_owned();
    move |source| GenerationError::Database { db, what, source }
}

fn missing(db: &Path, path: &Path) -> GenerationError {
    GenerationError::Unregistered {
        db: db.to_owned(),
        path: path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::closure::Closure;
    use crate::install::render_nix_db;

    fn info(name: &str, references: &[&str]) -> StorePathInfo {
        let path = |n: &str| PathBuf::from(format!("/nix/store/{n}"));
        StorePathInfo {
            path: path(name),
            nar_hash: format!("sha256:{}", "ab".repeat(32)),
            nar_size: 100,
            references: references.iter().map(|r| path(r)).collect(),
            deriver: None,
        }
    }

    #[test]
    fn paths_are_added_with_references_and_removed_again() {
        let closure = Closure::new(vec![info("a-sys", &["a-sys", "lib"]), info("lib", &[])])
            .expect("a closed set");
        let files = render_nix_db(&closure, &[], 1).expect("a database");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db_path = dir.path().join("db.sqlite");
        std::fs::write(&db_path, &files.db_sqlite).expect("written");

        let mut db = ImageDb::open(&db_path).expect("opens");
        let new = info("b-sys", &["lib", "only-b"]);
        let only_b = info("only-b", &[]);
        db.add(&[&new, &only_b], &[], 7).expect("added");
        let graph = db.graph().expect("read");
        let p = |n: &str| PathBuf::from(format!("/nix/store/{n}"));
        assert_eq!(graph[&p("b-sys")], [p("lib"), p("only-b")]);
        assert_eq!(graph.len(), 4);
        // A reference registered nowhere is refused.
        let dangling = info("c-sys", &["nowhere"]);
        assert!(matches!(
            db.add(&[&dangling], &[], 7),
            Err(GenerationError::Unregistered { .. })
        ));

        db.remove([&p("b-sys"), &p("only-b")]).expect("removed");
        db.close().expect("closed");
        let db = ImageDb::open(&db_path).expect("opens again");
        let graph = db.graph().expect("read");
        assert_eq!(
            graph.keys().cloned().collect::<Vec<_>>(),
            [p("a-sys"), p("lib")]
        );
        assert_eq!(graph[&p("a-sys")], [p("a-sys"), p("lib")]);
    }
}

//! The Nix database of the installed system (`/nix/var/nix/db`), written
//! from a [`Closure`] the way Nix 2.x (schema 10) would register it.
//!
//! The tables, indexes and trigger are those of Nix's `schema.sql` (as Nix
//! 2.8 creates them). Rows go in the closure's order (sorted by path), so ids
//! are 1..n in path order; references in (referrer, reference) order. The file
//! is built with fixed page size and journal settings and left in WAL mode,
//! as Nix leaves it, so equal input gives equal bytes. `big-lock` and
//! `reserved` are not written: Nix creates them on the first open.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use crate::closure::Closure;

/// The schema version Nix 2.0 and later record in `/nix/var/nix/db/schema`.
pub const NIX_SCHEMA_VERSION: &str = "10";
/// The database directory, relative to the image root.
pub const DB_DIR: &str = "nix/var/nix/db";
/// The registration time written when the image is deterministic.
pub const DETERMINISTIC_REGISTRATION_TIME: i64 = 1;

/// Nix's `schema.sql` (schema 10), statement for statement.
const SCHEMA_SQL: &str = r#"
create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// What went wrong writing the database.
#[derive(Debug, thiserror::Error)]
pub enum NixDbError {
    /// SQLite refused a statement.
    #[error("cannot write the Nix database {db}: {what}: {source}")]
    Sqlite {
        /// The database file.
        db: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file of the database could not be written or read back.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A derivation in the closure could not be read.
    #[error(
        "cannot read the derivation {path}: {source}\n  hint: a `.drv` in the closure must exist on the host so its outputs can be registered"
    )]
    ReadDerivation {
        /// The `.drv` store path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A derivation's text is not the ATerm Nix writes.
    #[error("{path} is not a Nix derivation: {problem}")]
    MalformedDerivation {
        /// The `.drv` store path.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
    /// A derivation output names a `.drv` that is not in the closure.
    #[error("the derivation output `{output}` of {drv} belongs to a derivation not in the closure")]
    UnknownDerivation {
        /// The `.drv` path.
        drv: PathBuf,
        /// The output name.
        output: String,
    },
}

/// One row of `DerivationOutputs`: a `.drv` in the closure and an output path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DerivationOutput {
    /// The derivation's store path (must be in the closure).
    pub drv: PathBuf,
    /// The output name, e.g. `out`.
    pub name: String,
    /// The output's store path (need not be in the closure).
    pub path: PathBuf,
}

/// The files of `/nix/var/nix/db`, ready to be placed into an image root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixDbFiles {
    /// `db.sqlite`.
    pub db_sqlite: Vec<u8>,
    /// `schema` (`10`, no newline, as Nix writes it).
    pub schema: Vec<u8>,
}

/// The registration time to record: [`DETERMINISTIC_REGISTRATION_TIME`] when
/// deterministic, else the current time (as Nix would).
pub fn registration_time(deterministic: bool) -> i64 {
    if deterministic {
        return DETERMINISTIC_REGISTRATION_TIME;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(DETERMINISTIC_REGISTRATION_TIME)
}

/// Reads the outputs of every `.drv` in the closure from the host's store,
/// as Nix records them when it registers a derivation (outputs without a
/// fixed path, of floating content-addressed derivations, are left out as
/// Nix leaves them out). Sorted.
pub fn read_derivation_outputs(closure: &Closure) -> Result<Vec<DerivationOutput>, NixDbError> {
    let mut outputs = Vec::new();
    for drv in closure.store_paths().filter(|p| is_derivation(p)) {
        let text = std::fs::read_to_string(drv).map_err(|source| NixDbError::ReadDerivation {
            path: drv.to_owned(),
            source,
        })?;
        outputs.extend(parse_derivation_outputs(drv, &text)?);
    }
    outputs.sort();
    Ok(outputs)
}

fn is_derivation(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "drv")
}

/// The outputs of a derivation in Nix's ATerm form:
/// `Derive([("out","/nix/store/...","",""),...],...)`.
pub fn parse_derivation_outputs(
    drv: &Path,
    text: &str,
) -> Result<Vec<DerivationOutput>, NixDbError> {
    let malformed = |problem: &str| NixDbError::MalformedDerivation {
        path: drv.to_owned(),
        problem: problem.to_owned(),
    };
    let mut rest = text
        .strip_prefix("Derive([")
        .ok_or_else(|| malformed("it does not start with `Derive([`"))?;
    let mut outputs = Vec::new();
    while let Some(after) = rest.strip_prefix('(') {
        let (fields, tail) = after
            .split_once(')')
            .ok_or_else(|| malformed("an output tuple is not closed"))?;
        let strings: Vec<&str> = fields
            .split(',')
            .map(|field| field.trim_matches('"'))
            .collect();
        let [name, path, ..] = strings.as_slice() else {
            return Err(malformed("an output tuple has fewer than two fields"));
        };
        if !path.is_empty() {
            outputs.push(DerivationOutput {
                drv: drv.to_owned(),
                name: (*name).to_owned(),
                path: PathBuf::from(path),
            });
        }
        rest = tail.strip_prefix(',').unwrap_or(tail);
    }
    if !rest.starts_with(']') {
        return Err(malformed("the output list is not closed by `]`"));
    }
    Ok(outputs)
}

/// Builds the database of `closure` (plus `derivation_outputs`) and returns
/// its files. Pure in effect: the database is made in a private temporary
/// directory and read back.
pub fn render_nix_db(
    closure: &Closure,
    derivation_outputs: &[DerivationOutput],
    registration_time: i64,
) -> Result<NixDbFiles, NixDbError> {
    let dir = tempfile::tempdir().map_err(|source| NixDbError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let db = dir.path().join("db.sqlite");
    write_db_file(&db, closure, derivation_outputs, registration_time)?;
    let db_sqlite = std::fs::read(&db).map_err(|source| NixDbError::Io { path: db, source })?;
    Ok(NixDbFiles {
        db_sqlite,
        schema: NIX_SCHEMA_VERSION.as_bytes().to_vec(),
    })
}

/// Writes a fresh database at `db` (which must not exist).
fn write_db_file(
    db: &Path,
    closure: &Closure,
    derivation_outputs: &[DerivationOutput],
    registration_time: i64,
) -> Result<(), NixDbError> {
    let sql = |what: &'static str| {
        let db = db.to_owned();
        move |source| NixDbError::Sqlite { db, what, source }
    };
    let mut conn = Connection::open(db).map_err(sql("open"))?;
    // Fixed settings before the first page is written: the file depends on
    // nothing but the statements below. A fresh file needs no crash safety,
    // so the journal stays in memory and nothing is synced (twice as fast).
    conn.execute_batch("pragma page_size = 4096; pragma journal_mode = memory; pragma synchronous = off; pragma foreign_keys = on;")
        .map_err(sql("set pragmas"))?;
    conn.execute_batch(SCHEMA_SQL)
        .map_err(sql("create the schema"))?;
    let tx = conn.transaction().map_err(sql("begin"))?;
    insert_rows(&tx, db, closure, derivation_outputs, registration_time)?;
    tx.commit().map_err(sql("commit"))?;
    // Nix runs its databases in WAL mode; switching here marks the header
    // (bytes 18-19) as Nix would leave it. Closing checkpoints the log away.
    conn.execute_batch("pragma journal_mode = wal;")
        .map_err(sql("switch to WAL"))?;
    conn.close().map_err(|(_, source)| NixDbError::Sqlite {
        db: db.to_owned(),
        what: "close",
        source,
    })?;
    Ok(())
}

/// Inserts the closure's rows: paths in closure order (ids 1..n), then
/// references and derivation outputs in id order.
fn insert_rows(
    tx: &rusqlite::Transaction,
    db: &Path,
    closure: &Closure,
    derivation_outputs: &[DerivationOutput],
    registration_time: i64,
) -> Result<(), NixDbError> {
    let sql = |what: &'static str| {
        let db = db.to_owned();
        move |source| NixDbError::Sqlite { db, what, source }
    };
    let mut insert_path = tx
        .prepare("insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?1, ?2, ?3, ?4, ?5, null, null, null)")
        .map_err(sql("prepare ValidPaths"))?;
    for info in &closure.paths {
        let deriver = info
            .deriver
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned());
        insert_path
            .execute(params![
                info.path.to_string_lossy(),
                info.nar_hash,
                registration_time,
                deriver,
                info.nar_size as i64,
            ])
            .map_err(sql("insert into ValidPaths"))?;
    }
    // Ids follow the closure's order: 1 for its first path.
    let id_of = |path: &Path| {
        closure
            .paths
            .binary_search_by(|info| info.path.as_path().cmp(path))
            .ok()
            .map(|index| index as i64 + 1)
    };
    let mut insert_ref = tx
        .prepare("insert into Refs (referrer, reference) values (?1, ?2)")
        .map_err(sql("prepare Refs"))?;
    for (index, info) in closure.paths.iter().enumerate() {
        // Closure::new guarantees references are members, sorted.
        for reference in info.references.iter().filter_map(|r| id_of(r)) {
            insert_ref
                .execute(params![index as i64 + 1, reference])
                .map_err(sql("insert into Refs"))?;
        }
    }
    let mut insert_output = tx
        .prepare("insert into DerivationOutputs (drv, id, path) values (?1, ?2, ?3)")
        .map_err(sql("prepare DerivationOutputs"))?;
    let mut sorted = derivation_outputs.to_vec();
    sorted.sort();
    for output in &sorted {
        let drv = id_of(&output.drv).ok_or_else(|| NixDbError::UnknownDerivation {
            drv: output.drv.clone(),
            output: output.name.clone(),
        })?;
        insert_output
            .execute(params![drv, output.name, output.path.to_string_lossy()])
            .map_err(sql("insert into DerivationOutputs"))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "nix_db_tests.rs"]
mod tests;

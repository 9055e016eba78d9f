//! Why a spec was refused: one error type for reading, parsing, validating
//! and checking the paths of an image spec. Every message names the field,
//! the value found and what is allowed, with a hint where one helps.

use std::path::PathBuf;

/// A spec that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read the spec file `{}`", path.display())]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The text is not JSON at all.
    #[error("{origin} is not valid JSON: {message} (line {line}, column {column})")]
    Json {
        /// Where the text came from (a file name, or "standard input").
        origin: String,
        /// The parser's message, without its position.
        message: String,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
    },

    /// The JSON is valid but is not an object (`{ ... }`).
    #[error("{origin} must hold a JSON object of make-disk-image arguments, found {found}{}", hint_line(&Some("start from `nixdisk spec --defaults`".to_owned())))]
    NotAnObject {
        /// Where the text came from.
        origin: String,
        /// The kind of JSON value found instead.
        found: &'static str,
    },

    /// A field name that the spec does not have.
    #[error("unknown field `{field}`{} in the spec{}", at(.parent), did_you_mean(.suggestion, .known))]
    UnknownField {
        /// The unknown name as written.
        field: String,
        /// The object holding it: empty for the top level, `contents[2]` for an entry.
        parent: String,
        /// The closest known name, if one is close.
        suggestion: Option<String>,
        /// The known names, comma-separated.
        known: String,
    },

    /// A field holds a value of the wrong type or shape.
    #[error("field `{field}`: {message}{}", hint_line(.hint))]
    WrongType {
        /// Path of the field, such as `memSize` or `contents[0].mode`.
        field: String,
        /// What the deserializer expected and found.
        message: String,
        /// What to try instead.
        hint: Option<String>,
    },

    /// A field holds a value that is well-typed but not allowed.
    #[error("field `{field}` = {value} is not allowed: {allowed}{}", hint_line(.hint))]
    Invalid {
        /// Path of the field.
        field: String,
        /// The value found, as JSON.
        value: String,
        /// What the field accepts.
        allowed: String,
        /// What to try instead.
        hint: Option<String>,
    },

    /// Two fields that cannot be set together.
    #[error("field `{field}` = {value} cannot be used with {with}: {reason}{}", hint_line(.hint))]
    Conflict {
        /// Path of the field refused.
        field: String,
        /// Its value, as JSON.
        value: String,
        /// The setting it conflicts with, as "`name` = value".
        with: String,
        /// Why the two do not go together.
        reason: &'static str,
        /// What to try instead.
        hint: Option<String>,
    },

    /// The spec names nothing to install.
    #[error("the spec names no system to install: set `system` to a NixOS toplevel store path or a closureInfo directory{}", hint_line(&Some("pass `--system /nix/store/...-nixos-system-...`, or add \"system\": \"...\" to the spec".to_owned())))]
    MissingSystem,

    /// A path the spec names does not exist (or cannot be inspected).
    #[error("field `{field}`: `{}` does not exist or cannot be read{}", path.display(), hint_line(.hint))]
    PathMissing {
        /// Path of the field naming it.
        field: String,
        /// The path as written.
        path: PathBuf,
        /// What to try instead.
        hint: Option<String>,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl SpecError {
    /// The field the error is about, when it is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            SpecError::UnknownField { field, .. }
            | SpecError::WrongType { field, .. }
            | SpecError::Invalid { field, .. }
            | SpecError::Conflict { field, .. }
            | SpecError::PathMissing { field, .. } => Some(field),
            SpecError::MissingSystem => Some("system"),
            SpecError::Read { .. } | SpecError::Json { .. } | SpecError::NotAnObject { .. } => None,
        }
    }
}

/// Renders an optional hint on its own line, as the CLI prints it.
fn hint_line(hint: &Option<String>) -> String {
    match hint {
        Some(hint) => format!("\n  hint: {hint}"),
        None => String::new(),
    }
}

/// A close name if there is one, else the list of names allowed.
fn did_you_mean(suggestion: &Option<String>, known: &str) -> String {
    match suggestion {
        Some(name) => format!("\n  hint: did you mean `{name}`?"),
        None => format!("\n  hint: the known fields are {known}"),
    }
}

fn at(parent: &str) -> String {
    if parent.is_empty() {
        String::new()
    } else {
        format!(" in `{parent}`")
    }
}

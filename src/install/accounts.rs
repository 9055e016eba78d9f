//! User and group names of the installed system, resolved on the host.
//!
//! make-disk-image runs `chown -R user:group` inside `nixos-enter`, after the
//! activation script has written `/etc/passwd` and `/etc/group` from the
//! system's users. nixdisk resolves the names before the VM starts, from the
//! system's toplevel, in this order:
//! 1. `<toplevel>/etc/passwd` and `<toplevel>/etc/group`, when the system
//!    ships them as files;
//! 2. the `users-groups.json` the toplevel's `activate` script hands to
//!    NixOS's user update (every declared user and group with its id; an id
//!    NixOS would allocate at activation is unknown here, and refused);
//! 3. `root` (uid 0) and group `root` (gid 0), which NixOS fixes.
//!
//! A numeric name (`"1000"`) is taken as the id itself, as `chown` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What went wrong reading the system's accounts.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// A file that exists could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `users-groups.json` is not what NixOS writes.
    #[error("{path} is not NixOS's users-groups.json: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// Names and ids of the installed system's users and groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounts {
    /// User name to uid; `None` when NixOS allocates the id at activation.
    pub users: BTreeMap<String, Option<u32>>,
    /// Group name to gid; `None` when NixOS allocates the id at activation.
    pub groups: BTreeMap<String, Option<u32>>,
    /// Where the names were read, for error messages.
    pub sources: Vec<PathBuf>,
}

/// An account name looked up: its id, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The id.
    Id(u32),
    /// The name is declared but its id is allocated at activation.
    Allocated,
    /// The name is not known.
    Unknown,
}

#[derive(serde::Deserialize)]
struct UsersGroups {
    #[serde(default)]
    users: Vec<Account<Option<u32>>>,
    #[serde(default)]
    groups: Vec<Account<Option<u32>>>,
}

#[derive(serde::Deserialize)]
struct Account<Id> {
    name: String,
    #[serde(alias = "uid", alias = "gid")]
    id: Id,
}

impl Accounts {
    /// The accounts with only what NixOS fixes: `root` (0) and group `root` (0).
    pub fn builtin() -> Self {
        let mut accounts = Accounts::default();
        accounts.users.insert("root".into(), Some(0));
        accounts.groups.insert("root".into(), Some(0));
        accounts
    }

    /// Reads the accounts of the system at `toplevel` (see the module docs).
    pub fn from_toplevel(toplevel: &Path) -> Result<Self, AccountsError> {
        let mut accounts = Accounts::builtin();
        let passwd = toplevel.join("etc/passwd");
        if let Some(text) = read_if_present(&passwd)? {
            accounts.add_colon_file(&text, true);
            accounts.sources.push(passwd);
        }
        let group = toplevel.join("etc/group");
        if let Some(text) = read_if_present(&group)? {
            accounts.add_colon_file(&text, false);
            accounts.sources.push(group);
        }
        if let Some(text) = read_if_present(&toplevel.join("activate"))?
            && let Some(json) = find_users_groups_json(&text)
            && let Some(text) = read_if_present(&json)?
        {
            accounts.add_users_groups_json(&text, &json)?;
            accounts.sources.push(json);
        }
        Ok(accounts)
    }

    /// Adds the entries of a `passwd` (`users`) or `group` file: `name:x:id:...`.
    pub fn add_colon_file(&mut self, text: &str, users: bool) {
        let map = if users {
            &mut self.users
        } else {
            &mut self.groups
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let fields: Vec<&str> = line.split(':').collect();
            if let [name, _, id, ..] = fields.as_slice()
                && let Ok(id) = id.parse()
            {
                map.entry((*name).to_owned()).or_insert(Some(id));
            }
        }
    }

    /// Adds the users and groups of NixOS's `users-groups.json`.
    pub fn add_users_groups_json(&mut self, text: &str, path: &Path) -> Result<(), AccountsError> {
        let parsed: UsersGroups =
            serde_json::from_str(text).map_err(|source| AccountsError::Json {
                path: path.to_owned(),
                source,
            })?;
        for user in parsed.users {
            self.users.entry(user.name).or_insert(user.id);
        }
        for group in parsed.groups {
            self.groups.entry(group.name).or_insert(group.id);
        }
        Ok(())
    }

    /// The uid of `name`.
    pub fn user(&self, name: &str) -> Lookup {
        lookup(&self.users, name)
    }

    /// The gid of `name`.
    pub fn group(&self, name: &str) -> Lookup {
        lookup(&self.groups, name)
    }
}

fn lookup(map: &BTreeMap<String, Option<u32>>, name: &str) -> Lookup {
    if let Ok(id) = name.parse() {
        return Lookup::Id(id);
    }
    match map.get(name) {
        Some(Some(id)) => Lookup::Id(*id),
        Some(None) => Lookup::Allocated,
        None => Lookup::Unknown,
    }
}

fn read_if_present(path: &Path) -> Result<Option<String>, AccountsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // A directory or binary where text was expected: not an account file.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::IsADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(AccountsError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The `/nix/store/<hash>-users-groups.json` an activation script names.
fn find_users_groups_json(activate: &str) -> Option<PathBuf> {
    const SUFFIX: &str = "-users-groups.json";
    let end = activate.find(SUFFIX)? + SUFFIX.len();
    let start = activate[..end].rfind("/nix/store/")?;
    let path = &activate[start..end];
    (!path.contains(char::is_whitespace)).then(|| PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_files_give_ids_and_numbers_pass_through() {
        let mut accounts = Accounts::builtin();
        accounts.add_colon_file(
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:100::/home/alice:/bin/sh\n",
            true,
        );
        accounts.add_colon_file("root:x:0:\nusers:x:100:alice\n# comment\nbroken\n", false);
        assert_eq!(accounts.user("alice"), Lookup::Id(1000));
        assert_eq!(accounts.group("users"), Lookup::Id(100));
        assert_eq!(accounts.user("bob"), Lookup::Unknown);
        assert_eq!(accounts.group("4242"), Lookup::Id(4242));
        assert_eq!(accounts.user("root"), Lookup::Id(0));
    }

    #[test]
    fn users_groups_json_marks_allocated_ids() {
        let json = r#"{"users":[{"name":"alice","uid":1000,"group":"users"},{"name":"svc","uid":null}],
                       "groups":[{"name":"users","gid":100,"members":[]},{"name":"svc","gid":null}],
                       "mutableUsers":true}"#;
        let mut accounts = Accounts::builtin();
        accounts
            .add_users_groups_json(json, Path::new("x.json"))
            .unwrap();
        assert_eq!(accounts.user("alice"), Lookup::Id(1000));
        assert_eq!(accounts.user("svc"), Lookup::Allocated);
        assert_eq!(accounts.group("svc"), Lookup::Allocated);
        assert!(
            accounts
                .add_users_groups_json(r#"{"users": 3}"#, Path::new("x.json"))
                .is_err()
        );
    }

    #[test]
    fn the_json_path_is_found_in_an_activation_script() {
        let script = "#!/bin/sh\nperl update-users-groups.pl /nix/store/0123456789abcdfghijklmnpqrsvwxyz-users-groups.json\n";
        assert_eq!(
            find_users_groups_json(script),
            Some(PathBuf::from(
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-users-groups.json"
            ))
        );
        assert_eq!(find_users_groups_json("echo hello"), None);
    }

    #[test]
    fn a_toplevel_with_etc_files_and_activate_is_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "alice:x:1000:100::/:/bin/sh\n",
        )
        .unwrap();
        let accounts = Accounts::from_toplevel(dir.path()).unwrap();
        assert_eq!(accounts.user("alice"), Lookup::Id(1000));
        assert_eq!(accounts.group("root"), Lookup::Id(0));
        assert_eq!(accounts.sources, vec![dir.path().join("etc/passwd")]);
    }
}

//! The pure half of changing an image's generations: what the image holds
//! (its profile links and GC roots, as the builder VM lists them), what a
//! request changes, and which store paths no root needs any more.
//!
//! Everything here is data in, data out; tests compare it exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use super::GenerationError;

/// The profiles directory inside the image.
pub const PROFILES: &str = "/nix/var/nix/profiles";
/// The GC roots directory inside the image.
pub const GCROOTS: &str = "/nix/var/nix/gcroots";
/// The store directory.
pub const STORE: &str = "/nix/store";
/// How many links a root may go through before it counts as a loop.
const MAX_HOPS: usize = 40;

/// The symlinks of an image that matter for its generations and its GC
/// roots: image-absolute link path to its target as written.
pub type Links = BTreeMap<PathBuf, PathBuf>;

/// Parses the listing the builder VM prints: one `L\t<link>\t<target>` line
/// per symlink, paths inside the image. Other lines are ignored.
pub fn parse_links(listing: &str) -> Links {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            match (fields.next(), fields.next(), fields.next()) {
                (Some("L"), Some(link), Some(target)) if !link.is_empty() => {
                    Some((PathBuf::from(link), PathBuf::from(target)))
                }
                _ => None,
            }
        })
        .collect()
}

/// The generations of the system profile: number to the link's target.
pub fn generations(links: &Links) -> BTreeMap<u32, PathBuf> {
    links
        .iter()
        .filter(|(link, _)| link.parent() == Some(Path::new(PROFILES)))
        .filter_map(|(link, target)| {
            let name = link.file_name()?.to_str()?;
            let number = name.strip_prefix("system-")?.strip_suffix("-link")?;
            Some((number.parse().ok()?, target.clone()))
        })
        .collect()
}

/// The generation `system` points to (`system-N-link`), if any.
pub fn default_generation(links: &Links) -> Option<u32> {
    let target = links.get(&Path::new(PROFILES).join("system"))?;
    let name = target.file_name()?.to_str()?;
    name.strip_prefix("system-")?
        .strip_suffix("-link")?
        .parse()
        .ok()
}

/// The name of generation `n`'s link in the profiles directory.
pub fn link_name(n: u32) -> String {
    format!("system-{n}-link")
}

/// What the user asked to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// A toplevel to add as the next generation (it becomes the default
    /// unless `set_default` says otherwise).
    pub add: Option<PathBuf>,
    /// The generation to boot by default afterwards.
    pub set_default: Option<u32>,
    /// Generations whose links go; their paths are then collected.
    pub remove: Vec<u32>,
}

/// The change to carry out, checked against what the image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new generation's number and toplevel.
    pub added: Option<(u32, PathBuf)>,
    /// The default generation afterwards.
    pub default: u32,
    /// The generations removed, ascending.
    pub removed: Vec<u32>,
    /// The image's links as they will be.
    pub links: Links,
}

/// Checks `request` against the image's `links` and plans the change.
pub fn plan_change(links: &Links, request: &Request) -> Result<Change, GenerationError> {
    let existing = generations(links);
    if existing.is_empty() {
        return Err(GenerationError::NoGenerations);
    }
    let mut links = links.clone();
    let mut after: BTreeSet<u32> = existing.keys().copied().collect();
    let mut default = default_generation(&links)
        .filter(|n| after.contains(n))
        .or_else(|| after.last().copied())
        .ok_or(GenerationError::NoGenerations)?;
    let added = request.add.as_ref().map(|toplevel| {
        let next = after.last().map_or(1, |last| last + 1);
        (next, toplevel.clone())
    });
    if let Some((next, toplevel)) = &added {
        after.insert(*next);
        links.insert(Path::new(PROFILES).join(link_name(*next)), toplevel.clone());
        default = *next;
    }
    let missing = |n: u32| GenerationError::NoSuchGeneration {
        generation: n,
        existing: after
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    if let Some(n) = request.set_default {
        if !after.contains(&n) {
            return Err(missing(n));
        }
        default = n;
    }
    let removed: BTreeSet<u32> = request.remove.iter().copied().collect();
    for &n in &removed {
        if !after.contains(&n) {
            return Err(missing(n));
        }
        if n == default {
            return Err(GenerationError::RemovingDefault { generation: n });
        }
        links.remove(&Path::new(PROFILES).join(link_name(n)));
    }
    links.insert(
        Path::new(PROFILES).join("system"),
        PathBuf::from(link_name(default)),
    );
    Ok(Change {
        added,
        default,
        removed: removed.into_iter().collect(),
        links,
    })
}

/// `path` with `.` and `..` resolved lexically (it is absolute).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => out.push(name),
            _ => {}
        }
    }
    out
}

/// The store path (`/nix/store/<name>`) `path` lies in, if any.
pub fn store_path_of(path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(STORE).ok()?;
    match rest.components().next()? {
        Component::Normal(name) => Some(Path::new(STORE).join(name)),
        _ => None,
    }
}

/// The store paths the image's GC roots name, as Nix finds them: every link
/// under the GC roots and profiles directories, followed through `links`
/// (targets relative to the link's directory) until it reaches the store.
/// A link that ends outside the store (a directory, a dangling target) roots
/// nothing.
pub fn roots(links: &Links) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    for link in links.keys() {
        if !(link.starts_with(GCROOTS) || link.starts_with(PROFILES)) {
            continue;
        }
        let mut current = link.clone();
        for _ in 0..MAX_HOPS {
            let Some(target) = links.get(&current) else {
                break;
            };
            let base = current.parent().unwrap_or(Path::new("/"));
            let next = normalise(&base.join(target));
            if let Some(store_path) = store_path_of(&next) {
                found.insert(store_path);
                break;
            }
            current = next;
        }
    }
    found
}

/// The valid paths no root reaches: `graph` maps each valid path to what it
/// keeps alive (its references, and its deriver when that is valid, as
/// Nix's default `keep-derivations` does). Roots that are not valid are
/// ignored.
pub fn dead_paths(
    graph: &BTreeMap<PathBuf, Vec<PathBuf>>,
    roots: &BTreeSet<PathBuf>,
) -> BTreeSet<PathBuf> {
    let mut live = BTreeSet::new();
    let mut todo: Vec<&PathBuf> = roots.iter().filter(|r| graph.contains_key(*r)).collect();
    while let Some(path) = todo.pop() {
        if !live.insert(path.clone()) {
            continue;
        }
        for next in graph.get(path).into_iter().flatten() {
            if graph.contains_key(next) && !live.contains(next) {
                todo.push(next);
            }
        }
    }
    graph
        .keys()
        .filter(|path| !live.contains(*path))
        .cloned()
        .collect()
}

/// Whether `path` is exactly `/nix/store/<name>` with a plain name: what may
/// be deleted from the image by path (the image's database is not trusted
/// to hold only such paths).
pub fn is_plain_store_path(path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix(STORE) else {
        return false;
    };
    let mut components = rest.components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(name)), None)
            if !name.is_empty() && path.to_str().is_some_and(|s| !s.contains('\n') && !s.ends_with('/'))
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

//! No two files import each other, directly or around a loop: the modules of every
//! library in the workspace read bottom-up, as `src/lib.rs` promises.
//!
//! The check reads the sources: every `crate::…`, `super::…`, `self::…` path, and
//! paths that start with a child module's name, resolved to the file that defines the
//! item. A name a `mod.rs` (or `lib.rs`) only re-exports is followed to the file that
//! defines it, and the re-export is no edge of the facade unless its own code uses the
//! name, so a facade is not a node of its own; `mod x;` declarations are not edges. Test modules (`#[cfg(test)] mod tests { … }`) are left out: a test may use
//! whatever it checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Groups of files allowed to import each other for now, each with why and until when.
/// Empty: add a group only with a reason and a plan to remove it.
const ALLOWED_CYCLES: &[&[&str]] = &[];

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut crates = vec![root.join("src"), root.join("emulator/src")];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        crates.push(entry.unwrap().path().join("src"));
    }
    let mut problems = Vec::new();
    let mut files = 0;
    for src in crates {
        let graph = crate_graph(&src);
        files += graph.len();
        let from_root = |file: &PathBuf| {
            src.join(file)
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string()
        };
        for Cycle { around, group } in cycles(&graph) {
            let named: Vec<String> = around.iter().map(from_root).collect();
            // Allowed only as the whole group: a file joining it fails the check.
            let members: BTreeSet<String> = group.iter().map(from_root).collect();
            let allowed = ALLOWED_CYCLES.iter().any(|files| {
                files.iter().map(|f| f.to_string()).collect::<BTreeSet<_>>() == members
            });
            if !allowed {
                let mut problem = named.join(" -> ");
                write!(problem, " -> {}", named[0]).unwrap();
                if group.len() > around.len() {
                    let others: Vec<String> = group
                        .iter()
                        .filter(|file| !around.contains(file))
                        .map(|file| file.display().to_string())
                        .collect();
                    write!(problem, " (in one loop with {})", others.join(", ")).unwrap();
                }
                problems.push(problem);
            }
        }
    }
    assert!(files > 50, "the sources were not found: {files} files");
    assert!(
        problems.is_empty(),
        "files import each other:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_cycle_finder_names_a_loop_and_passes_a_tree() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: Graph = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry(PathBuf::from(from))
                .or_default()
                .insert(PathBuf::from(to));
            graph.entry(PathBuf::from(to)).or_default();
        }
        graph
    };
    let names = |cycle: &[PathBuf]| -> Vec<String> {
        cycle.iter().map(|f| f.display().to_string()).collect()
    };
    let looped = graph(&[
        ("a.rs", "b.rs"),
        ("b.rs", "c.rs"),
        ("c.rs", "a.rs"),
        ("c.rs", "d.rs"),
    ]);
    let found = cycles(&looped);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(names(&found[0].around), ["a.rs", "b.rs", "c.rs"]);
    let two = graph(&[("x.rs", "y.rs"), ("y.rs", "x.rs")]);
    assert_eq!(names(&cycles(&two)[0].around), ["x.rs", "y.rs"]);
    // Two loops through one file are one group, named by its shortest loop.
    let eight = graph(&[
        ("a.rs", "b.rs"),
        ("b.rs", "a.rs"),
        ("b.rs", "c.rs"),
        ("c.rs", "d.rs"),
        ("d.rs", "b.rs"),
    ]);
    let found = cycles(&eight);
    assert_eq!(names(&found[0].around), ["a.rs", "b.rs"]);
    assert_eq!(names(&found[0].group), ["a.rs", "b.rs", "c.rs", "d.rs"]);
    // A diamond is not a cycle, nor is a file naming itself.
    let tree = graph(&[
        ("a.rs", "b.rs"),
        ("a.rs", "c.rs"),
        ("b.rs", "d.rs"),
        ("c.rs", "d.rs"),
    ]);
    assert!(cycles(&tree).is_empty());
    assert!(cycles(&graph(&[("a.rs", "a.rs")])).is_empty());
}

#[test]
fn edges_are_read_through_groups_relative_paths_and_re_exports() {
    let dir = std::env::temp_dir().join(format!("lakegate-architecture-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "//! use crate::b; (a comment is no edge)\nmod a;\nmod b;\nmod c;\nmod d;\n\
         pub struct Root;\npub use d::D;\n",
    );
    write("d.rs", "use crate::Root;\npub struct D;\n");
    write("a/mod.rs", "mod inner;\npub use inner::Thing;\n");
    write(
        "a/inner.rs",
        "use crate::{b::{self, B}};\nconst S: &str = \"crate::c::C\";\n",
    );
    write("b.rs", "use super::a::Thing;\npub struct B;\n");
    write(
        "c.rs",
        "pub struct C;\n#[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n",
    );
    let graph = crate_graph(&dir);
    let edges = |file: &str| -> Vec<String> {
        graph[Path::new(file)]
            .iter()
            .map(|f| f.display().to_string())
            .collect()
    };
    assert_eq!(edges("a/inner.rs"), ["b.rs"]);
    // Through the facade to the file that defines `Thing`.
    assert_eq!(edges("b.rs"), ["a/inner.rs"]);
    assert!(edges("a/mod.rs").is_empty());
    assert!(edges("c.rs").is_empty());
    // A re-export the facade's own code does not use is no edge.
    assert!(edges("lib.rs").is_empty());
    assert_eq!(edges("d.rs"), ["lib.rs"]);
    assert_eq!(cycles(&graph).len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Files (relative to a crate's `src`) and the files each imports.
type Graph = BTreeMap<PathBuf, BTreeSet<PathBuf>>;

/// A module path from the crate root, e.g. `["ingest", "body"]`.
type ModPath = Vec<String>;

struct SourceFile {
    module: ModPath,
    /// Comments, strings and test modules removed.
    code: String,
}

fn crate_graph(src: &Path) -> Graph {
    let mut files: HashMap<ModPath, PathBuf> = HashMap::new();
    let mut sources = Vec::new();
    collect(src, src, &mut |relative, text| {
        let module = module_of(relative);
        files.insert(module.clone(), relative.to_path_buf());
        sources.push((
            relative.to_path_buf(),
            SourceFile {
                module,
                code: without_tests(&strip(text)),
            },
        ));
    });
    // What each file's `use` items bring in by name, as absolute paths.
    let mut imports: HashMap<ModPath, HashMap<String, ModPath>> = HashMap::new();
    for (_, file) in &sources {
        let names = imports.entry(file.module.clone()).or_default();
        for (path, alias) in use_trees(&file.code) {
            let Some(absolute) = absolute(&file.module, &path, &files) else {
                continue;
            };
            if let Some(name) = alias.or_else(|| path.last().cloned())
                && name != "*"
            {
                names.insert(name, absolute);
            }
        }
    }
    let mut graph = Graph::new();
    for (relative, file) in &sources {
        let edges = graph.entry(relative.clone()).or_default();
        for path in paths(&file.code, &file.module, &files) {
            let Some(absolute) = absolute(&file.module, &path, &files) else {
                continue;
            };
            if let Some(target) = defining_file(&absolute, &files, &imports, 0)
                && &target != relative
            {
                edges.insert(target);
            }
        }
    }
    graph
}

fn collect(src: &Path, dir: &Path, found: &mut impl FnMut(&Path, &str)) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(src, &path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src).unwrap();
            // A binary is a crate of its own, importing the library by name.
            if relative != Path::new("main.rs") {
                found(relative, &std::fs::read_to_string(&path).unwrap());
            }
        }
    }
}

fn module_of(relative: &Path) -> ModPath {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "lib.rs" | "mod.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// The source without comments and without the contents of string and char literals.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), left as it is.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < chars.len() && chars[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The code without `#[cfg(test)]` items (test modules and test-only functions).
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at its `;` or at the brace that closes its first `{`.
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `use` tree in the code, flattened: each leaf's path and its `as` alias.
fn use_trees(code: &str) -> Vec<(Vec<String>, Option<String>)> {
    use_items(code)
        .into_iter()
        .flat_map(|item| item.leaves)
        .collect()
}

/// One `use` item: where it is in the code, whether it re-exports, and its leaves.
struct UseItem {
    span: std::ops::Range<usize>,
    re_export: bool,
    leaves: Vec<(Vec<String>, Option<String>)>,
}

fn use_items(code: &str) -> Vec<UseItem> {
    let mut items = Vec::new();
    for (at, _) in code.match_indices("use ") {
        let before = code[..at].chars().last();
        if before.is_some_and(is_ident) {
            continue;
        }
        let tree = &code[at + 4..];
        let end = tree.find(';').unwrap_or(tree.len());
        let mut leaves = Vec::new();
        flatten(&tree[..end], &[], &mut leaves);
        // `pub use`, `pub(crate) use`, `pub(super) use`, `pub(in …) use`.
        let before = code[..at].trim_end();
        let re_export = before.ends_with("pub")
            || (before.ends_with(')')
                && before
                    .rfind("pub(")
                    .is_some_and(|p| !before[p..].contains(['\n', ';', '{', '}'])));
        items.push(UseItem {
            span: at..at + 4 + end,
            re_export,
            leaves,
        });
    }
    items
}

/// Splits a use tree such as `crate::a::{b::{self, C}, d as e}` into its leaves.
fn flatten(tree: &str, prefix: &[String], leaves: &mut Vec<(Vec<String>, Option<String>)>) {
    let tree = tree.trim();
    let tree = tree.strip_prefix("::").unwrap_or(tree);
    if let Some(open) = tree.find('{') {
        let mut path = prefix.to_vec();
        path.extend(segments(&tree[..open]));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    flatten(&inner[start..i], &path, leaves);
                    start = i + 1;
                }
                _ => {}
            }
        }
        flatten(&inner[start..], &path, leaves);
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((path, alias)) => (path, Some(alias.trim().to_owned())),
        None => (tree, None),
    };
    let mut full = prefix.to_vec();
    full.extend(segments(path));
    if full.last().is_some_and(|s| s == "self") {
        full.pop();
    }
    if !full.is_empty() {
        leaves.push((full, alias));
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every path in the code that may name an item of this crate: `use` leaves, and
/// `crate::`, `super::`, `self::` or `child::` paths anywhere else.
fn paths(code: &str, module: &ModPath, files: &HashMap<ModPath, PathBuf>) -> Vec<Vec<String>> {
    // The code with its `use` items blanked, so that each is counted once, below.
    let items = use_items(code);
    let mut blanked = code.to_owned();
    for item in &items {
        blanked.replace_range(item.span.clone(), &" ".repeat(item.span.len()));
    }
    let code = blanked.as_str();
    let mut found = Vec::new();
    for item in items {
        for (path, alias) in item.leaves {
            // A re-export only passes a name on: it is an edge when the file's own code
            // uses the name too.
            let name = alias.as_deref().or(path.last().map(String::as_str));
            let used = name.is_some_and(|name| name != "*" && uses_name(code, name));
            if !item.re_export || used {
                found.push(path);
            }
        }
    }
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let starts = is_ident(c)
            && !(i > 0 && (is_ident(chars[i - 1].1) || chars[i - 1].1 == '$'))
            && !(i > 1 && chars[i - 1].1 == ':' && chars[i - 2].1 == ':');
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut path = Vec::new();
        let mut segment = String::new();
        loop {
            while j < chars.len() && is_ident(chars[j].1) {
                segment.push(chars[j].1);
                j += 1;
            }
            path.push(std::mem::take(&mut segment));
            let rest = &code[chars.get(j).map_or(code.len(), |(a, _)| *a)..];
            if rest.starts_with("::") && rest[2..].starts_with(is_ident) {
                j += 2;
            } else {
                break;
            }
        }
        let first = path[0].as_str();
        let mut child = module.clone();
        child.push(first.to_owned());
        if path.len() > 1
            && (matches!(first, "crate" | "super" | "self") || files.contains_key(&child))
        {
            found.push(path);
        }
        let _ = at;
        i = j.max(i + 1);
    }
    found
}

/// Whether `name` occurs in the code as a whole identifier.
fn uses_name(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().last();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// A path as seen from `module`, made absolute; `None` for another crate's.
fn absolute(
    module: &ModPath,
    path: &[String],
    files: &HashMap<ModPath, PathBuf>,
) -> Option<ModPath> {
    let mut base = module.clone();
    let mut rest = path;
    match rest.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &rest[1..];
        }
        "self" => rest = &rest[1..],
        "super" => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        first => {
            let mut child = module.clone();
            child.push(first.to_owned());
            if !files.contains_key(&child) {
                return None;
            }
        }
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file that defines what an absolute path names: the deepest module file on the
/// path, or, when that file only imports the name, the file its import leads to.
fn defining_file(
    path: &ModPath,
    files: &HashMap<ModPath, PathBuf>,
    imports: &HashMap<ModPath, HashMap<String, ModPath>>,
    depth: usize,
) -> Option<PathBuf> {
    let deepest = (0..=path.len())
        .rev()
        .find(|&n| files.contains_key(&path[..n]))?;
    let module = &path[..deepest];
    if depth < 8
        && let Some(name) = path.get(deepest)
        && let Some(target) = imports.get(module).and_then(|names| names.get(name))
    {
        let mut target = target.clone();
        target.extend(path[deepest + 1..].iter().cloned());
        if let Some(file) = defining_file(&target, files, imports, depth + 1) {
            return Some(file);
        }
    }
    files.get(module).cloned()
}

/// Files that import each other around a loop.
#[derive(Debug)]
struct Cycle {
    /// A shortest loop, from the group's first file in order.
    around: Vec<PathBuf>,
    /// Every file on some loop with it, in order.
    group: Vec<PathBuf>,
}

/// The cycles of a graph: one per strongly connected group of more than one file.
fn cycles(graph: &Graph) -> Vec<Cycle> {
    let nodes: Vec<&PathBuf> = graph.keys().collect();
    let index: HashMap<&PathBuf, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let edges: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            graph[*n]
                .iter()
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    let groups = strongly_connected(&edges);
    let mut found = Vec::new();
    for group in groups.into_iter().filter(|g| g.len() > 1) {
        let members: BTreeSet<usize> = group.iter().copied().collect();
        let start = *members.first().unwrap();
        let path = loop_through(start, &edges, &members);
        found.push(Cycle {
            around: path.into_iter().map(|i| nodes[i].clone()).collect(),
            group: members.iter().map(|&i| nodes[i].clone()).collect(),
        });
    }
    found
}

/// Tarjan's algorithm, iteratively.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut groups = Vec::new();
    let mut counter = 0;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work = vec![(root, 0)];
        while let Some((v, next)) = work.pop() {
            if next == 0 {
                index[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = edges[v].get(next) {
                work.push((v, next + 1));
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            if low[v] == index[v] {
                let mut group = Vec::new();
                loop {
                    let w = stack.pop().unwrap();
                    on_stack[w] = false;
                    group.push(w);
                    if w == v {
                        break;
                    }
                }
                groups.push(group);
            }
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    groups
}

/// A shortest loop from `start` back to itself within one strongly connected group.
fn loop_through(start: usize, edges: &[Vec<usize>], members: &BTreeSet<usize>) -> Vec<usize> {
    let mut came_from: HashMap<usize, usize> = HashMap::new();
    let mut frontier = std::collections::VecDeque::from([start]);
    while let Some(v) = frontier.pop_front() {
        for &w in &edges[v] {
            if !members.contains(&w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = came_from.entry(w) {
                e.insert(v);
                frontier.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected group has a loop through each member")
}

/// `panic = "abort"` would turn a bug in one request into the loss of every reading
/// acknowledged with `ack=accept` and still queued; `tests/gateway/resilience.rs` proves
/// that an unwinding panic fails only its request.
#[test]
fn release_builds_unwind_on_panic() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let aborting: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.replace(' ', "").starts_with("panic=\"abort\""))
        .collect();
    assert!(aborting.is_empty(), "Cargo.toml sets {aborting:?}");
}

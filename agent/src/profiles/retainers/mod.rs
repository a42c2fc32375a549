//! Who holds the memory: a summary of a V8 heap snapshot (`heapwarden retainers FILE`),
//! computed out of the worker, from a file pulled with `heapwarden pull`.
//!
//! What it computes (a dominator-free approximation, exactly): a breadth-first walk from
//! the snapshot's root over every edge but weak ones gives each object one *shortest
//! retaining path*; each object's self size is then counted for every object on that
//! path. An object's "held" size is so the total of the objects whose shortest path
//! passes through it. It is exact for memory reachable one way only (the usual leak:
//! objects pushed into one collection) and under-counts memory shared between holders
//! (counted under the nearer one), where V8's retained size (dominators) would count it
//! for neither. A *holder* is an object whose held size is at least `min_bytes` and that
//! spreads it: no single child holds more than half of it (a collection of many
//! entries, not a link in a chain). Holders are listed largest first, each with its
//! path (`sessions (Array) in server.js ← context (system / Context) ← rememberSession()`):
//! a variable of a function's or module's scope (a `context` edge) names the script of a
//! closure over that scope, found through the closure's `shared` function info.
//!
//! `stored` summarises the store's snapshots in a helper process and matches two by path.
//!
//! Bounded: the file size is capped, every index is checked, and a hostile file ends in
//! an error, never a panic.

mod stored;

use std::collections::VecDeque;
use std::path::Path;

pub use stored::{RetainersDiff, RetainersDiffError, diff_stored, summarize_in_helper};

use serde::{Deserialize, Serialize};

/// A snapshot is about twice the heap it describes; 2 GiB covers a 1 GiB heap.
pub const MAX_SNAPSHOT_BYTES: u64 = 2 << 30;
/// Hops of the retaining path shown above each holder.
const PATH_HOPS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RetainersError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is {bytes} bytes, over the {limit}-byte limit")]
    TooLarge {
        path: String,
        bytes: u64,
        limit: u64,
    },
    #[error("not a V8 heap snapshot")]
    Json(#[from] serde_json::Error),
    #[error("not a V8 heap snapshot: {0}")]
    Shape(String),
}

#[derive(Debug, Deserialize)]
struct Snapshot {
    snapshot: Header,
    nodes: Vec<u64>,
    edges: Vec<u64>,
    strings: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Header {
    meta: Meta,
}

#[derive(Debug, Deserialize)]
struct Meta {
    node_fields: Vec<String>,
    node_types: Vec<serde_json::Value>,
    edge_fields: Vec<String>,
    edge_types: Vec<serde_json::Value>,
}

/// One holder: its retaining path (holder first), what it holds, in how many objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub path: String,
    pub held_bytes: u64,
    pub objects: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainerSummary {
    pub total_bytes: u64,
    pub objects: u64,
    pub holders: Vec<Holder>,
}

/// One holder's growth between two snapshots, matched by retaining path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HolderGrowth {
    pub path: String,
    pub delta_bytes: i64,
    pub held_bytes: u64,
    pub base_held_bytes: u64,
    pub objects: u64,
}

/// Holders of `leak` by growth since `base` (a holder absent from `base`, or below its
/// threshold there, grew by all it holds), largest first, growing ones only.
pub fn growth(base: &RetainerSummary, leak: &RetainerSummary, top: usize) -> Vec<HolderGrowth> {
    let mut out: Vec<HolderGrowth> = leak
        .holders
        .iter()
        .map(|h| {
            let before = base
                .holders
                .iter()
                .find(|b| b.path == h.path)
                .map_or(0, |b| b.held_bytes);
            HolderGrowth {
                path: h.path.clone(),
                delta_bytes: h.held_bytes as i64 - before as i64,
                held_bytes: h.held_bytes,
                base_held_bytes: before,
                objects: h.objects,
            }
        })
        .filter(|g| g.delta_bytes > 0)
        .collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.delta_bytes));
    out.truncate(top);
    out
}

/// Reads and summarises the snapshot at `path`.
pub fn summarize_file(
    path: &Path,
    min_bytes: u64,
    top: usize,
) -> Result<RetainerSummary, RetainersError> {
    let shown = path.display().to_string();
    let read_err = |source| RetainersError::Read {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_SNAPSHOT_BYTES {
        return Err(RetainersError::TooLarge {
            path: shown,
            bytes: len,
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    summarize(&bytes, min_bytes, top)
}

fn field(fields: &[String], name: &str) -> Result<usize, RetainersError> {
    fields
        .iter()
        .position(|f| f == name)
        .ok_or_else(|| RetainersError::Shape(format!("no {name} field")))
}

fn type_names(types: &[serde_json::Value], at: usize) -> Vec<String> {
    types
        .get(at)
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Summarises a snapshot's JSON.
pub fn summarize(
    json: &[u8],
    min_bytes: u64,
    top: usize,
) -> Result<RetainerSummary, RetainersError> {
    let s: Snapshot = serde_json::from_slice(json)?;
    let m = &s.snapshot.meta;
    let (nf, ef) = (m.node_fields.len(), m.edge_fields.len());
    if nf == 0 || ef == 0 || !s.nodes.len().is_multiple_of(nf) || !s.edges.len().is_multiple_of(ef)
    {
        return Err(RetainersError::Shape("node or edge table length".into()));
    }
    let (n_type, n_name, n_size, n_edges) = (
        field(&m.node_fields, "type")?,
        field(&m.node_fields, "name")?,
        field(&m.node_fields, "self_size")?,
        field(&m.node_fields, "edge_count")?,
    );
    let (e_type, e_name, e_to) = (
        field(&m.edge_fields, "type")?,
        field(&m.edge_fields, "name_or_index")?,
        field(&m.edge_fields, "to_node")?,
    );
    let node_types = type_names(&m.node_types, n_type);
    let edge_types = type_names(&m.edge_types, e_type);
    let count = s.nodes.len() / nf;
    if count == 0 {
        return Err(RetainersError::Shape("no nodes".into()));
    }
    let node = |i: usize, f: usize| s.nodes[i * nf + f];
    // Each node's first edge; the edge table must be exactly the sum of the counts.
    let mut first_edge = Vec::with_capacity(count + 1);
    let mut at = 0usize;
    for i in 0..count {
        first_edge.push(at);
        at = at
            .checked_add(usize::try_from(node(i, n_edges)).unwrap_or(usize::MAX))
            .ok_or_else(|| RetainersError::Shape("edge counts overflow".into()))?;
    }
    first_edge.push(at);
    if at * ef != s.edges.len() {
        return Err(RetainersError::Shape(format!(
            "edge counts sum to {at}, the table holds {}",
            s.edges.len() / ef
        )));
    }
    let weak = edge_types.iter().position(|t| t == "weak");
    const NONE: usize = usize::MAX;
    let mut parent = vec![NONE; count];
    let mut parent_edge = vec![NONE; count];
    let mut order = Vec::with_capacity(count);
    let mut queue = VecDeque::from([0usize]);
    parent[0] = 0;
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for e in first_edge[i]..first_edge[i + 1] {
            let edge = &s.edges[e * ef..(e + 1) * ef];
            if weak.is_some_and(|w| edge[e_type] as usize == w) {
                continue;
            }
            let to = edge[e_to] as usize;
            if !to.is_multiple_of(nf) || to / nf >= count {
                return Err(RetainersError::Shape(format!("edge to node offset {to}")));
            }
            let to = to / nf;
            if parent[to] == NONE {
                parent[to] = i;
                parent_edge[to] = e;
                queue.push_back(to);
            }
        }
    }
    let mut held = vec![0u64; count];
    let mut objects = vec![0u64; count];
    let mut biggest_child = vec![0u64; count];
    for &i in order.iter().rev() {
        held[i] = held[i].saturating_add(node(i, n_size));
        objects[i] += 1;
        if i != 0 {
            let p = parent[i];
            held[p] = held[p].saturating_add(held[i]);
            objects[p] += objects[i];
            biggest_child[p] = biggest_child[p].max(held[i]);
        }
    }
    let string = |i: u64| s.strings.get(i as usize).map(String::as_str).unwrap_or("?");
    let type_of = |i: usize| {
        node_types
            .get(node(i, n_type) as usize)
            .map(String::as_str)
            .unwrap_or("?")
    };
    let edge_label = |e: usize| {
        let edge = &s.edges[e * ef..(e + 1) * ef];
        let kind = edge_types
            .get(edge[e_type] as usize)
            .map(String::as_str)
            .unwrap_or("?");
        match kind {
            "element" | "hidden" => format!("[{}]", edge[e_name]),
            _ => string(edge[e_name]).to_owned(),
        }
    };
    let modules = modules_of_contexts(
        &s,
        &first_edge,
        &node_types,
        &edge_types,
        (n_type, n_name),
        (e_type, e_name, e_to),
    );
    let context_edge = edge_types.iter().position(|t| t == "context");
    let hop = |i: usize| {
        let name = string(node(i, n_name));
        let what = match type_of(i) {
            "object" | "native" | "hidden" => name.to_owned(),
            "closure" if name.is_empty() => "(anonymous closure)".to_owned(),
            "closure" => format!("{name}()"),
            other => format!("({other}) {name}").trim().to_owned(),
        };
        match parent_edge[i] {
            NONE => what,
            e => {
                let scope = context_edge
                    .filter(|&c| s.edges[e * ef + e_type] as usize == c)
                    .and_then(|_| modules.get(&parent[i]))
                    .map(|m| format!(" in {m}"))
                    .unwrap_or_default();
                format!("{} ({what}){scope}", edge_label(e))
            }
        }
    };
    let synthetic = node_types.iter().position(|t| t == "synthetic");
    let mut holders: Vec<(usize, u64)> = Vec::new();
    for &i in &order {
        if i == 0 || synthetic.is_some_and(|t| node(i, n_type) as usize == t) {
            continue;
        }
        if held[i] < min_bytes || biggest_child[i] * 2 > held[i] {
            continue;
        }
        // A collection's backing store (`elements`, a Map's `table`) is reported as the
        // collection that owns it.
        let mut at = i;
        let internal = |e: usize| {
            edge_types
                .get(s.edges[e * ef + e_type] as usize)
                .is_some_and(|t| t == "internal" || t == "hidden")
        };
        while parent_edge[at] != NONE && internal(parent_edge[at]) && parent[at] != 0 {
            at = parent[at];
        }
        if !holders.iter().any(|(h, _)| *h == at) {
            holders.push((at, held[at]));
        }
    }
    holders.sort_by_key(|h| std::cmp::Reverse(h.1));
    holders.truncate(top);
    let holders = holders
        .into_iter()
        .map(|(i, bytes)| {
            // The holder itself, then its retainers up to the synthetic roots.
            let mut hops = vec![hop(i)];
            let mut at = parent[i];
            let is_synthetic = |i: usize| synthetic.is_some_and(|t| node(i, n_type) as usize == t);
            while at != 0 && !is_synthetic(at) && hops.len() < PATH_HOPS {
                hops.push(hop(at));
                at = parent[at];
            }
            Holder {
                path: hops.join(" ← "),
                held_bytes: bytes,
                objects: objects[i],
            }
        })
        .collect();
    Ok(RetainerSummary {
        total_bytes: held[0],
        objects: objects[0],
        holders,
    })
}

/// The script of each scope (context) some closure closes over: closure → `context`, and
/// closure → `shared` (its SharedFunctionInfo) → `script_or_debug_info` (`script` in older
/// V8) → the Script, named by its URL. Shown as the file name, or the path from the last
/// `node_modules/` for a dependency's file.
fn modules_of_contexts(
    s: &Snapshot,
    first_edge: &[usize],
    node_types: &[String],
    edge_types: &[String],
    (n_type, n_name): (usize, usize),
    (e_type, e_name, e_to): (usize, usize, usize),
) -> std::collections::HashMap<usize, String> {
    let (nf, ef) = (
        s.snapshot.meta.node_fields.len(),
        s.snapshot.meta.edge_fields.len(),
    );
    let closure = node_types.iter().position(|t| t == "closure");
    let named = |t: u64| {
        edge_types
            .get(t as usize)
            .is_some_and(|k| k != "element" && k != "hidden")
    };
    // Edge targets were checked by the walk before this runs.
    let target = |i: usize, wanted: &[&str]| {
        (first_edge[i]..first_edge[i + 1]).find_map(|e| {
            let edge = &s.edges[e * ef..(e + 1) * ef];
            let name = s.strings.get(edge[e_name] as usize)?;
            (named(edge[e_type]) && wanted.contains(&name.as_str()))
                .then_some(edge[e_to] as usize / nf)
        })
    };
    let mut modules = std::collections::HashMap::new();
    let count = s.nodes.len() / nf;
    for i in 0..count {
        if closure != Some(s.nodes[i * nf + n_type] as usize) {
            continue;
        }
        let Some(context) = target(i, &["context"]) else {
            continue;
        };
        if modules.contains_key(&context) {
            continue;
        }
        let script = target(i, &["shared"])
            .and_then(|shared| target(shared, &["script_or_debug_info", "script"]));
        let Some(url) = script.and_then(|at| s.strings.get(s.nodes[at * nf + n_name] as usize))
        else {
            continue;
        };
        let url = url.trim_start_matches("file://");
        if url.is_empty() || url.starts_with("node:") {
            continue;
        }
        let shown = match url.rfind("node_modules/") {
            Some(at) => &url[at + "node_modules/".len()..],
            None => url.rsplit('/').next().unwrap_or(url),
        };
        modules.insert(context, shown.to_owned());
    }
    modules
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// root → (GC roots) → closure `remember` → context → `sessions` Array → elements
    /// store → 100 session objects of 1000 bytes; plus a chain of 3 objects.
    fn snapshot() -> Vec<u8> {
        let strings = vec![
            "",
            "(GC roots)",
            "remember",
            "system / Context",
            "sessions",
            "Array",
            "(object elements)",
            "Session",
            "context",
            "elements",
            "Chain",
            "next",
            "shared",
            "script_or_debug_info",
            "/srv/app/server.js",
        ];
        let s = |x: &str| strings.iter().position(|v| *v == x).unwrap() as u64;
        // node types: hidden 0, array 1, object 3, closure 5, synthetic 9
        let mut nodes: Vec<u64> = Vec::new();
        let mut edges: Vec<u64> = Vec::new();
        // [type, name, id, self_size, edge_count]
        let nf = 5;
        let mut add = |t: u64, name: u64, size: u64, n_edges: u64| {
            let id = nodes.len() as u64 / nf;
            nodes.extend([t, name, id, size, n_edges]);
            id
        };
        let root = add(9, s(""), 0, 2);
        let gc = add(9, s("(GC roots)"), 0, 2);
        let closure = add(5, s("remember"), 64, 2);
        let context = add(0, s("system / Context"), 48, 1);
        let array = add(3, s("Array"), 32, 1);
        let store = add(1, s("(object elements)"), 800, 100);
        let first_session = store + 1;
        for _ in 0..100 {
            add(3, s("Session"), 1000, 0);
        }
        let chain = add(3, s("Chain"), 10, 1);
        let chain2 = add(3, s("Chain"), 10, 0);
        let shared = add(4, s("remember"), 40, 1);
        let script = add(4, s("/srv/app/server.js"), 20, 0);
        let _ = root;
        // Edges in node order: [type, name_or_index, to_node * nf]
        // edge types: context 0, element 1, property 2, internal 3, hidden 4, weak 6
        edges.extend([4, 0, gc * nf, 2, s("Chain"), chain * nf]); // root
        edges.extend([1, 0, closure * nf, 6, 1, array * nf]); // (GC roots), one weak
        edges.extend([3, s("context"), context * nf, 3, s("shared"), shared * nf]); // closure
        edges.extend([0, s("sessions"), array * nf]); // context
        edges.extend([3, s("elements"), store * nf]); // array
        for k in 0..100u64 {
            edges.extend([1, k, (first_session + k) * nf]);
        }
        edges.extend([2, s("next"), chain2 * nf]); // chain
        edges.extend([3, s("script_or_debug_info"), script * nf]); // shared
        serde_json::to_vec(&json!({
            "snapshot": {"meta": {
                "node_fields": ["type", "name", "id", "self_size", "edge_count"],
                "node_types": [["hidden", "array", "string", "object", "code", "closure",
                    "regexp", "number", "native", "synthetic"], "string", "number", "number", "number"],
                "edge_fields": ["type", "name_or_index", "to_node"],
                "edge_types": [["context", "element", "property", "internal", "hidden",
                    "shortcut", "weak"], "string_or_number", "node"],
            }},
            "nodes": nodes, "edges": edges, "strings": strings,
        }))
        .unwrap()
    }

    #[test]
    fn the_collection_holding_the_leak_is_named_with_its_path() {
        let summary = summarize(&snapshot(), 10_000, 5).unwrap();
        assert_eq!(summary.objects, 110);
        let top = &summary.holders[0];
        assert_eq!(
            top.path,
            "sessions (Array) in server.js ← context (system / Context) ← [0] (remember())"
        );
        assert_eq!(top.held_bytes, 100 * 1000 + 800 + 32);
        assert_eq!(top.objects, 102);
        // A chain (each link holds everything below it) is no holder, nor is the closure
        // whose one child holds it all.
        assert_eq!(summary.holders.len(), 1, "{:?}", summary.holders);
    }

    #[test]
    fn growth_matches_holders_by_path() {
        let holder = |path: &str, held_bytes: u64| Holder {
            path: path.into(),
            held_bytes,
            objects: 1,
        };
        let base = RetainerSummary {
            total_bytes: 0,
            objects: 0,
            holders: vec![holder("a", 5 << 20), holder("cache", 9 << 20)],
        };
        let leak = RetainerSummary {
            total_bytes: 0,
            objects: 0,
            holders: vec![
                holder("cache", 9 << 20),
                holder("a", 40 << 20),
                holder("new", 2 << 20),
            ],
        };
        let g = growth(&base, &leak, 10);
        let rows: Vec<(&str, i64)> = g.iter().map(|g| (g.path.as_str(), g.delta_bytes)).collect();
        assert_eq!(rows, [("a", 35 << 20), ("new", 2 << 20)]);
    }

    #[test]
    fn hostile_snapshots_are_errors() {
        for bad in [
            &b"{}"[..],
            br#"{"snapshot":{"meta":{"node_fields":[],"node_types":[],"edge_fields":[],"edge_types":[]}},"nodes":[],"edges":[],"strings":[]}"#,
            br#"{"snapshot":{"meta":{"node_fields":["type","name","id","self_size","edge_count"],"node_types":[[]],"edge_fields":["type","name_or_index","to_node"],"edge_types":[[]]}},"nodes":[0,0,0,0,1],"edges":[0,0,7],"strings":[]}"#,
            br#"{"snapshot":{"meta":{"node_fields":["type","name","id","self_size","edge_count"],"node_types":[[]],"edge_fields":["type","name_or_index","to_node"],"edge_types":[[]]}},"nodes":[0,0,0,0,9],"edges":[0,0,0],"strings":[]}"#,
        ] {
            assert!(summarize(bad, 1, 5).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}

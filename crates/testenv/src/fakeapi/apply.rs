//! Server-side apply's field ownership (`managedFields`) and how a write
//! merges into the stored object. Pure: values in, values out.

#![allow(clippy::result_large_err)]

use super::*;

/// Applies `new` over `old` honouring the status subresource and generation.
pub(super) fn merge_update(old: &Value, mut new: Value, status_only: bool) -> Value {
    if status_only {
        let mut out = old.clone();
        out["status"] = new["status"].take();
        return out;
    }
    // `stringData` is folded on every write, not only on create.
    if new["kind"] == "Secret" {
        fold_string_data(&mut new);
    }
    // The main resource ignores status changes (status subresource semantics);
    // spec-like changes bump the generation.
    new["status"] = old["status"].clone();
    if new.get("status").is_some_and(Value::is_null) {
        new.as_object_mut().expect("object").remove("status");
    }
    for immutable in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "managedFields",
    ] {
        new["metadata"][immutable] = old["metadata"][immutable].clone();
    }
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("metadata");
            o.remove("status");
        }
        v
    };
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if strip(old) != strip(&new) {
        generation + 1
    } else {
        generation
    });
    if old["metadata"]["deletionTimestamp"].is_string() {
        new["metadata"]["deletionTimestamp"] = old["metadata"]["deletionTimestamp"].clone();
    }
    new
}

/// Metadata the server owns; never part of a field set.
pub(super) const SERVER_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
];

pub(super) type FieldPath = Vec<String>;

pub(super) fn manager_of(q: &BTreeMap<String, String>) -> String {
    q.get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".to_string())
}

/// Leaf paths of an object (maps recurse, lists and scalars are leaves).
pub(super) fn leaf_paths(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let top = prefix.is_empty();
                if top && (k == "apiVersion" || k == "kind") {
                    continue;
                }
                if prefix.len() == 1
                    && prefix[0] == "metadata"
                    && SERVER_FIELDS.contains(&k.as_str())
                {
                    continue;
                }
                prefix.push(k.clone());
                leaf_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.push(prefix.clone());
            }
        }
    }
}

pub(super) fn paths_of(v: &Value) -> Vec<FieldPath> {
    let mut out = Vec::new();
    leaf_paths(v, &mut Vec::new(), &mut out);
    out
}

pub(super) fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

pub(super) fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for k in &path[..path.len() - 1] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = json!({});
        }
        cur = cur.get_mut(k).expect("just made");
    }
    cur[path[path.len() - 1].as_str()] = value;
}

pub(super) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

pub(super) fn to_fields_v1(paths: &[FieldPath]) -> Value {
    let mut root = json!({});
    for p in paths {
        let keyed: Vec<String> = p.iter().map(|k| format!("f:{k}")).collect();
        set_path(&mut root, &keyed, json!({}));
    }
    root
}

pub(super) fn from_fields_v1(v: &Value) -> Vec<FieldPath> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        let m = v.as_object().filter(|m| !m.is_empty());
        match m {
            None => out.push(prefix.clone()),
            Some(m) => {
                for (k, child) in m {
                    prefix.push(k.trim_start_matches("f:").to_string());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out.retain(|p| !p.is_empty());
    out
}

/// (manager, operation, paths) from `metadata.managedFields`.
pub(super) fn managed(obj: &Value) -> Vec<(String, String, Vec<FieldPath>)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                        from_fields_v1(&e["fieldsV1"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn write_managed(obj: &mut Value, entries: &[(String, String, Vec<FieldPath>)]) {
    let api_version = obj["apiVersion"].clone();
    let list: Vec<Value> = entries
        .iter()
        .filter(|(_, _, paths)| !paths.is_empty())
        .map(|(m, op, paths)| json!({"manager": m, "operation": op, "apiVersion": api_version, "time": rfc3339(now()), "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}))
        .collect();
    if list.is_empty() {
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = Value::Array(list);
    }
}

/// Does `a` overlap `b` (one is a prefix of the other)?
pub(super) fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// A non-apply write: the fields it changed now belong to `manager` (Update).
pub(super) fn record_update(old: &Value, new: &mut Value, manager: &str) {
    let changed: Vec<FieldPath> = {
        let mut all = paths_of(old);
        all.extend(paths_of(new));
        all.sort();
        all.dedup();
        all.into_iter()
            .filter(|p| lookup(old, p) != lookup(new, p))
            .collect()
    };
    if changed.is_empty() {
        return;
    }
    let mut entries = managed(old);
    for (_, _, paths) in entries.iter_mut() {
        paths.retain(|p| !changed.iter().any(|c| overlaps(p, c)));
    }
    let present: Vec<FieldPath> = changed
        .into_iter()
        .filter(|p| lookup(new, p).is_some())
        .collect();
    match entries
        .iter_mut()
        .find(|(m, op, _)| m == manager && op == "Update")
    {
        Some((_, _, paths)) => paths.extend(present),
        None => entries.push((manager.to_string(), "Update".to_string(), present)),
    }
    write_managed(new, &entries);
}

/// The fields a server-side apply sets: everything but `status` on the
/// object, only `status` on the status subresource.
pub(super) fn applied_paths(applied: &Value, status_only: bool) -> Vec<FieldPath> {
    let mut paths = paths_of(applied);
    if status_only {
        paths.retain(|p| p.first().is_some_and(|k| k == "status"));
    } else {
        paths.retain(|p| p.first().is_none_or(|k| k != "status"));
    }
    paths
}

/// `manager` applies `applied` (setting `applied_paths`) over `old`: the new
/// object with its `managedFields`, or the conflicts — (manager, `.field`)
/// where another manager owns a field this apply changes — unless `force`.
pub(super) fn apply_fields(
    old: &Value,
    applied: &Value,
    applied_paths: Vec<FieldPath>,
    manager: &str,
    force: bool,
    status_only: bool,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = managed(old);
    // Conflicts: another manager owns a field this apply sets to another value.
    let mut conflicts = Vec::new();
    for (m, _, paths) in &entries {
        if *m == manager {
            continue;
        }
        for p in paths {
            if let Some(a) = applied_paths.iter().find(|a| overlaps(a, p)) {
                if lookup(old, a) != lookup(applied, a) {
                    conflicts.push((m.clone(), format!(".{}", a.join("."))));
                }
            }
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let mut new = old.clone();
    // Fields this manager applied before and no longer applies are removed,
    // unless someone else also owns them.
    let previous: Vec<FieldPath> = entries
        .iter()
        .filter(|(m, op, _)| *m == manager && op == "Apply")
        .flat_map(|(_, _, p)| p.clone())
        .collect();
    for p in previous.iter().filter(|p| !applied_paths.contains(p)) {
        let shared = entries
            .iter()
            .any(|(m, _, paths)| *m != manager && paths.iter().any(|q| overlaps(q, p)));
        if !shared {
            remove_path(&mut new, p);
        }
    }
    for p in &applied_paths {
        if let Some(v) = lookup(applied, p) {
            set_path(&mut new, p, v.clone());
        }
    }
    // Ownership: this manager's Apply set is exactly what it applied; forced
    // fields leave their previous owners.
    for (m, _, paths) in entries.iter_mut() {
        if *m != manager {
            paths.retain(|p| !applied_paths.iter().any(|a| overlaps(a, p)));
        }
    }
    entries.retain(|(m, op, _)| !(*m == manager && op == "Apply"));
    entries.push((manager.to_string(), "Apply".into(), applied_paths));
    let mut new = merge_update(old, new, status_only);
    write_managed(&mut new, &entries);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(obj: &Value) -> Vec<(String, String, Vec<String>)> {
        managed(obj)
            .into_iter()
            .map(|(m, op, paths)| (m, op, paths.iter().map(|p| p.join(".")).collect()))
            .collect()
    }

    fn sa(secrets: &[&str]) -> Value {
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"},
               "imagePullSecrets": secrets.iter().map(|s| json!({"name": s})).collect::<Vec<_>>()})
    }

    fn apply_as(
        old: &Value,
        manager: &str,
        applied: &Value,
        force: bool,
    ) -> Result<Value, Vec<(String, String)>> {
        apply_fields(
            old,
            applied,
            applied_paths(applied, false),
            manager,
            force,
            false,
        )
    }

    #[test]
    fn a_first_apply_owns_what_it_set() {
        // apiVersion and kind are in no field set, as on a real server.
        let new = apply_as(
            &json!({"metadata": {"name": "app"}}),
            "a",
            &sa(&["x"]),
            false,
        )
        .unwrap();
        assert_eq!(new["imagePullSecrets"], json!([{"name": "x"}]));
        assert_eq!(
            owners(&new),
            [(
                "a".to_string(),
                "Apply".to_string(),
                vec!["imagePullSecrets".to_string()]
            )]
        );
    }

    #[test]
    fn another_managers_field_conflicts_unless_forced_and_then_changes_hands() {
        let old = apply_as(
            &json!({"metadata": {"name": "app"}}),
            "a",
            &sa(&["x"]),
            false,
        )
        .unwrap();
        let conflicts = apply_as(&old, "b", &sa(&["y"]), false).unwrap_err();
        assert_eq!(
            conflicts,
            [("a".to_string(), ".imagePullSecrets".to_string())]
        );
        // The same value is no conflict: both own it.
        assert!(apply_as(&old, "b", &sa(&["x"]), false).is_ok());
        let forced = apply_as(&old, "b", &sa(&["y"]), true).unwrap();
        assert_eq!(forced["imagePullSecrets"], json!([{"name": "y"}]));
        assert!(
            owners(&forced)
                .iter()
                .all(|(m, _, paths)| m != "a" || !paths.contains(&"imagePullSecrets".to_string())),
            "the field left its previous owner (an owner of nothing is dropped): {:?}",
            owners(&forced)
        );
    }

    #[test]
    fn a_field_no_longer_applied_is_removed_unless_someone_else_owns_it() {
        let with_labels = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "labels": {"team": "a"}}});
        let old = apply_as(
            &json!({"metadata": {"name": "app"}}),
            "a",
            &with_labels,
            false,
        )
        .unwrap();
        let dropped = apply_as(&old, "a", &sa(&[]), false).unwrap();
        assert!(
            dropped["metadata"]
                .get("labels")
                .is_none_or(|l| l.get("team").is_none()),
            "{dropped}"
        );
        let shared = apply_as(&old, "b", &with_labels, false).unwrap();
        let kept = apply_as(&shared, "a", &sa(&[]), false).unwrap();
        assert_eq!(
            kept["metadata"]["labels"]["team"], "a",
            "b still applies it"
        );
    }

    #[test]
    fn the_status_subresource_applies_status_only() {
        let applied =
            json!({"metadata": {"name": "g"}, "spec": {"x": 1}, "status": {"ready": true}});
        assert_eq!(
            applied_paths(&applied, true)
                .iter()
                .map(|p| p.join("."))
                .collect::<Vec<_>>(),
            ["status.ready"]
        );
        assert!(!applied_paths(&applied, false)
            .iter()
            .any(|p| p[0] == "status"));
    }
}

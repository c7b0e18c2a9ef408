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

/// The key field of the lists server-side apply merges by key
/// (`listType=map`) among those the fake knows: the containers of a Pod and
/// of the pod templates of built-in workloads, keyed by `name`, as
/// kube-apiserver merges them (`../shared/kubernetes-facts.md`). Every other
/// list is atomic here; a CRD's list types (its schema's
/// `x-kubernetes-list-type`) are not read.
fn map_list_key(kind: &str, path: &[String]) -> Option<&'static str> {
    let pod_spec = match kind {
        "Pod" => 1,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "PodTemplate" => 3,
        "CronJob" => 6,
        _ => return None,
    };
    let (last, parents) = path.split_last()?;
    let containers = matches!(last.as_str(), "containers" | "initContainers");
    let under_pod_spec = parents.len() == pod_spec
        && parents
            .first()
            .is_some_and(|k| k == "spec" || k == "template")
        && parents.last().is_some_and(|k| k == "spec");
    (containers && under_pod_spec).then_some("name")
}

/// The path component of a map list's element: `k:{"name":"side"}`, as
/// `managedFields` writes it.
fn element_component(key: &str, value: &Value) -> String {
    format!("k:{}", json!({ key: value }))
}

/// The key fields of an element component, or `None` for a field name.
fn element_key(component: &str) -> Option<serde_json::Map<String, Value>> {
    let key = component.strip_prefix("k:")?;
    serde_json::from_str::<Value>(key)
        .ok()?
        .as_object()
        .cloned()
}

fn is_element(v: &Value, key: &serde_json::Map<String, Value>) -> bool {
    key.iter().all(|(k, want)| v.get(k) == Some(want))
}

/// Leaf paths of an object: maps recurse, `listType=map` lists recurse
/// into their elements (one `k:{…}` component each), other lists and
/// scalars are leaves.
pub(super) fn leaf_paths(v: &Value, kind: &str, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
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
                leaf_paths(child, kind, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if !items.is_empty() && map_list_key(kind, prefix).is_some() => {
            let key = map_list_key(kind, prefix).expect("checked");
            for item in items {
                let Some(value) = item.get(key) else {
                    continue;
                };
                prefix.push(element_component(key, value));
                leaf_paths(item, kind, prefix, out);
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
    let kind = v["kind"].as_str().unwrap_or_default();
    leaf_paths(v, kind, &mut Vec::new(), &mut out);
    out
}

/// One step down a path: a field of an object, or the element of a map
/// list that a `k:{…}` component names.
fn child<'a>(v: &'a Value, component: &str) -> Option<&'a Value> {
    match (element_key(component), v) {
        (Some(key), Value::Array(items)) => items.iter().find(|i| is_element(i, &key)),
        _ => v.get(component),
    }
}

pub(super) fn lookup<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| child(cur, k))
}

/// Sets `path` to `value`, making the objects and map-list elements on the
/// way.
pub(super) fn set_path(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        cur = match element_key(k) {
            Some(key) => {
                if !cur.is_array() {
                    *cur = json!([]);
                }
                let items = cur.as_array_mut().expect("just made");
                let i = match items.iter().position(|i| is_element(i, &key)) {
                    Some(i) => i,
                    None => {
                        items.push(Value::Object(key.clone()));
                        items.len() - 1
                    }
                };
                &mut items[i]
            }
            None => {
                if !cur.get(k).is_some_and(|c| c.is_object() || c.is_array()) {
                    cur[k.as_str()] = json!({});
                }
                cur.get_mut(k).expect("just made")
            }
        };
    }
    match element_key(last) {
        Some(key) => {
            if !cur.is_array() {
                *cur = json!([]);
            }
            let items = cur.as_array_mut().expect("just made");
            match items.iter().position(|i| is_element(i, &key)) {
                Some(i) => items[i] = value,
                None => items.push(value),
            }
        }
        None => cur[last.as_str()] = value,
    }
}

/// Removes the field or map-list element at `path`, if there.
pub(super) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        let next = match element_key(k) {
            Some(key) => cur
                .as_array_mut()
                .and_then(|items| items.iter_mut().find(|i| is_element(i, &key))),
            None => cur.get_mut(k),
        };
        match next {
            Some(next) => cur = next,
            None => return,
        }
    }
    match (element_key(last), cur) {
        (Some(key), Value::Array(items)) => items.retain(|i| !is_element(i, &key)),
        (None, Value::Object(m)) => {
            m.remove(last);
        }
        _ => {}
    }
}

/// `fieldsV1` of field paths: `f:` before a field name; an element's
/// `k:{…}` as it is.
pub(super) fn to_fields_v1(paths: &[FieldPath]) -> Value {
    let mut root = json!({});
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let k = if k.starts_with("k:") {
                k.clone()
            } else {
                format!("f:{k}")
            };
            cur = cur
                .as_object_mut()
                .expect("fieldsV1 is objects")
                .entry(k)
                .or_insert_with(|| json!({}));
        }
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
                    prefix.push(k.strip_prefix("f:").unwrap_or(k).to_string());
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

/// A field as kube-apiserver names it in a conflict:
/// `.spec.template.spec.containers[name="side"].image`.
pub(super) fn field_name(path: &[String]) -> String {
    let mut out = String::new();
    for k in path {
        match element_key(k) {
            Some(key) => {
                let keys: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", keys.join(",")));
            }
            None => {
                out.push('.');
                out.push_str(k);
            }
        }
    }
    out
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
                    conflicts.push((m.clone(), field_name(a)));
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
    let owned_by_others = |p: &[String]| {
        entries
            .iter()
            .any(|(m, _, paths)| *m != manager && paths.iter().any(|q| overlaps(q, p)))
    };
    let mut dropped_elements = Vec::new();
    for p in previous.iter().filter(|p| !applied_paths.contains(p)) {
        // A map-list element goes whole once nobody owns a field of it:
        // its key fields stay while anyone does.
        if let Some(i) = p.iter().rposition(|k| k.starts_with("k:")) {
            dropped_elements.push(p[..=i].to_vec());
            if i + 2 == p.len() && element_key(&p[i]).is_some_and(|k| k.contains_key(&p[i + 1])) {
                continue;
            }
        }
        if !owned_by_others(p) {
            remove_path(&mut new, p);
        }
    }
    for element in dropped_elements {
        let applied_now = applied_paths.iter().any(|a| overlaps(a, &element));
        if !applied_now && !owned_by_others(&element) {
            remove_path(&mut new, &element);
        }
    }
    for p in &applied_paths {
        if let Some(v) = lookup(applied, p) {
            set_path(&mut new, p, v.clone());
        }
    }
    // Ownership: this manager's Apply set is exactly what it applied; forced
    // fields leave their previous owners; a field applied with the value it
    // has is owned by both.
    for (m, _, paths) in entries.iter_mut() {
        if *m != manager {
            paths.retain(|p| {
                !applied_paths
                    .iter()
                    .any(|a| overlaps(a, p) && lookup(old, a) != lookup(applied, a))
            });
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

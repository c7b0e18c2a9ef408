//! Strategic merge patch, for the built-in types pullbroker and its tests
//! patch (`../shared/kubernetes-facts.md`, "Patch strategies", v1.36.2):
//! like a JSON merge patch, except that lists with a `patchMergeKey` merge
//! item by item on that key (a pod template's `containers` by `name`), and
//! `$patch: delete` removes an item from such a list. Lists without one —
//! `ServiceAccount.imagePullSecrets` among them — are replaced whole by the
//! patch's list, so `$patch: delete` inside them removes nothing that was
//! there, exactly as observed.
//! Custom resources refuse it (415), as kube-apiserver does.
//!
//! Not modelled: `$retainKeys`, `$setElementOrder`, `$deleteFromPrimitiveList`
//! and primitive lists with a merge strategy (`finalizers`).

use serde_json::{Map, Value};

/// The merge key of list `field` in an object of `kind`, if it has one.
fn merge_key(kind: &str, field: &str) -> Option<&'static str> {
    match (kind, field) {
        ("ServiceAccount", "secrets") => Some("name"),
        // ServiceAccount.imagePullSecrets has no patch strategy: atomic.
        ("ServiceAccount", _) => None,
        // PodSpec and Container, wherever a pod template sits.
        (
            _,
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "env"
            | "volumeMounts",
        ) => Some("name"),
        (_, "ports") => Some("containerPort"),
        _ => None,
    }
}

/// Applies `patch` to `target`, an object of `kind`.
pub(super) fn merge(kind: &str, target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let fields = target.as_object_mut().expect("an object");
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                fields.remove(k);
            }
            Value::Array(items) => match merge_key(kind, k) {
                Some(key) => {
                    let current = fields
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    merge_list(kind, current, items, key);
                }
                // Atomic: replaced whole; a directive item decodes to
                // nothing in the typed list.
                None => {
                    let kept = items.iter().filter(|i| i.get("$patch").is_none()).cloned();
                    fields.insert(k.clone(), Value::Array(kept.collect()));
                }
            },
            Value::Object(_) => merge(kind, fields.entry(k.clone()).or_insert(Value::Null), v),
            other => {
                fields.insert(k.clone(), other.clone());
            }
        }
    }
}

/// Merges `items` into the list `current` by `key`.
fn merge_list(kind: &str, current: &mut Value, items: &[Value], key: &str) {
    if !current.is_array() {
        *current = Value::Array(Vec::new());
    }
    let list = current.as_array_mut().expect("an array");
    for item in items {
        let id = &item[key];
        let at = list.iter().position(|e| !id.is_null() && &e[key] == id);
        if item["$patch"] == "delete" {
            if let Some(i) = at {
                list.remove(i);
            }
            continue;
        }
        match at {
            Some(i) => merge(kind, &mut list[i], item),
            None => {
                let mut fresh = Value::Null;
                merge(kind, &mut fresh, item);
                list.push(fresh);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_account_pull_secrets_are_atomic() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "app:1"}, {"name": "side", "image": "side:0"}]}}}});
        merge(
            "Deployment",
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "image": "side:1"}]}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "app:1"}, {"name": "side", "image": "side:1"}])
        );
        merge(
            "Deployment",
            &mut d,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "app:1"}])
        );

        let mut sa = json!({"imagePullSecrets": [{"name": "user-own"}]});
        merge(
            "ServiceAccount",
            &mut sa,
            &json!({"imagePullSecrets": [{"name": "pullbroker-g"}]}),
        );
        assert_eq!(sa["imagePullSecrets"], json!([{"name": "pullbroker-g"}]));
        let mut sa = json!({"imagePullSecrets": [{"name": "user-own"}]});
        merge(
            "ServiceAccount",
            &mut sa,
            &json!({"imagePullSecrets": [{"name": "pullbroker-g"}, {"name": "user-own", "$patch": "delete"}]}),
        );
        assert_eq!(
            sa["imagePullSecrets"],
            json!([{"name": "pullbroker-g"}]),
            "replaced whole, as observed on v1.36"
        );
    }
}

//! Label and field selectors, as kube-apiserver evaluates them. Pure.

#![allow(clippy::result_large_err)]

use super::*;

/// Label selector semantics of Kubernetes (`,`-separated requirements).
pub fn labels_match(selector: &str, labels: &Value) -> bool {
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    split_requirements(selector).iter().all(|req| {
        let req = req.trim();
        if req.is_empty() {
            return true;
        }
        if let Some((k, vals)) = req.split_once(" notin ") {
            let vals = set(vals);
            return get(k.trim()).is_none_or(|v| !vals.contains(&v.to_string()));
        }
        if let Some((k, vals)) = req.split_once(" in ") {
            let vals = set(vals);
            return get(k.trim()).is_some_and(|v| vals.contains(&v.to_string()));
        }
        if let Some((k, v)) = req.split_once("!=") {
            return get(k.trim()) != Some(v.trim());
        }
        if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
            return get(k.trim()) == Some(v.trim());
        }
        if let Some(k) = req.strip_prefix('!') {
            return get(k.trim()).is_none();
        }
        get(req).is_some()
    })
}

pub(super) fn set(vals: &str) -> Vec<String> {
    vals.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(|v| v.trim().to_string())
        .collect()
}

/// Splits on commas outside parentheses.
pub(super) fn split_requirements(selector: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

pub(super) fn fields_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|r| !r.is_empty()).all(|req| {
        let (field, want, negate) = match req.split_once("!=") {
            Some((f, v)) => (f, v, true),
            None => match req.split_once("==").or_else(|| req.split_once('=')) {
                Some((f, v)) => (f, v, false),
                None => return true,
            },
        };
        let got = match field {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            "spec.serviceAccountName" => obj["spec"]["serviceAccountName"].as_str(),
            // Core Events' involved object (the fields kubectl describe uses).
            "involvedObject.kind" => obj["involvedObject"]["kind"].as_str(),
            "involvedObject.name" => obj["involvedObject"]["name"].as_str(),
            "involvedObject.namespace" => obj["involvedObject"]["namespace"].as_str(),
            "involvedObject.uid" => obj["involvedObject"]["uid"].as_str(),
            // Secrets' `type` (a real server accepts it for secrets only).
            "type" => obj["type"].as_str(),
            _ => None,
        };
        (got == Some(want)) != negate
    })
}

pub(super) fn selected(q: &BTreeMap<String, String>, obj: &Value) -> bool {
    q.get("labelSelector")
        .is_none_or(|s| labels_match(s, &obj["metadata"]["labels"]))
        && q.get("fieldSelector").is_none_or(|s| fields_match(s, obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors_as_kube_apiserver_reads_them() {
        let labels = json!({"tier": "prod", "team": "a"});
        for (selector, want) in [
            ("", true),
            ("tier=prod", true),
            ("tier==prod", true),
            ("tier!=prod", false),
            ("tier in (prod, stage)", true),
            ("tier notin (prod)", false),
            ("missing notin (x)", true),
            ("team", true),
            ("!team", false),
            ("!missing", true),
            ("tier=prod,team=b", false),
            ("tier in (prod,stage),team=a", true),
        ] {
            assert_eq!(labels_match(selector, &labels), want, "{selector:?}");
        }
        assert!(!labels_match("team", &Value::Null), "no labels at all");
    }

    #[test]
    fn field_selectors_on_the_fields_kubernetes_indexes() {
        let event = json!({"metadata": {"name": "e", "namespace": "ns"}, "type": "Warning",
                           "involvedObject": {"kind": "Pod", "name": "web-0", "uid": "u1"}});
        assert!(fields_match(
            "involvedObject.kind=Pod,involvedObject.name=web-0",
            &event
        ));
        assert!(!fields_match("involvedObject.uid=u2", &event));
        assert!(fields_match("metadata.namespace!=other", &event));
        assert!(
            !fields_match("spec.serviceAccountName=app", &event),
            "absent field"
        );
        let q = BTreeMap::from([
            ("labelSelector".to_string(), "a=b".to_string()),
            ("fieldSelector".to_string(), "metadata.name=e".to_string()),
        ]);
        assert!(!selected(&q, &event), "both must hold");
    }
}

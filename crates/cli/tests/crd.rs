//! `pullbroker crd`: valid CustomResourceDefinitions, and the documents the
//! standalone file uses are the same objects the cluster will store.

use std::process::Command;

use pullbroker_core::policy::model::{PullGrant, PullGrantStatus, RegistryCredential};
use serde_json::Value;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/standalone/broker.yaml"
);

fn crds() -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_pullbroker"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap()
}

#[test]
fn crds_are_cluster_scoped_with_status_columns_and_validation() {
    let crds = crds();
    assert_eq!(crds.len(), 2);
    for (crd, name, kind, columns) in [
        (
            &crds[0],
            "registrycredentials.pullbroker.dev",
            "RegistryCredential",
            vec!["Registries", "Ready", "Next Rotation", "Age"],
        ),
        (
            &crds[1],
            "pullgrants.pullbroker.dev",
            "PullGrant",
            vec!["Credential", "Purposes", "Namespaces", "Ready", "Age"],
        ),
    ] {
        assert_eq!(crd["apiVersion"], "apiextensions.k8s.io/v1");
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        assert_eq!(crd["metadata"]["name"], name);
        let spec = &crd["spec"];
        assert_eq!(spec["group"], "pullbroker.dev");
        assert_eq!(spec["scope"], "Cluster", "operator-owned, cluster-scoped");
        assert_eq!(spec["names"]["kind"], kind);
        let v = &spec["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(
            (v["served"].as_bool(), v["storage"].as_bool()),
            (Some(true), Some(true))
        );
        assert!(
            v["subresources"]["status"].is_object(),
            "status subresource"
        );
        let names: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, columns);
        let schema = serde_saphyr::to_string(&v["schema"]["openAPIV3Schema"]).unwrap();
        assert!(
            !schema.contains("additionalProperties: false"),
            "structural schema"
        );
    }
    let grant = &crds[1]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let required: Vec<&str> = grant["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for field in ["credential", "subjects", "repositories", "purposes"] {
        assert!(required.contains(&field), "{field} is required");
    }
    assert_eq!(grant["properties"]["repositories"]["minItems"], 1);
    let purposes: Vec<&str> = grant["properties"]["purposes"]["items"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(purposes, ["resolve", "pull", "sync"]);
}

#[test]
fn standalone_documents_are_the_cluster_objects() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let (mut grants, mut creds) = (0, 0);
    for v in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
        match v["kind"].as_str() {
            Some("PullGrant") => {
                let g: PullGrant = serde_json::from_value(v).unwrap();
                g.spec.validate().unwrap();
                grants += 1;
            }
            Some("RegistryCredential") => {
                let c: RegistryCredential = serde_json::from_value(v).unwrap();
                c.spec.validate().unwrap();
                creds += 1;
            }
            _ => {}
        }
    }
    assert_eq!((grants, creds), (2, 1));
    // Status round-trips in the shape the printer columns read.
    let status: PullGrantStatus = serde_json::from_value(serde_json::json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "lastTransitionTime": "2026-11-23T00:00:00Z"}],
        "observedGeneration": 3, "selectedNamespaces": 2
    }))
    .unwrap();
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(
        serde_json::to_value(&status).unwrap()["selectedNamespaces"],
        2
    );
}

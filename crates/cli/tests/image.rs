//! The container image `scripts/image.sh` writes: packed twice it is the
//! same digest; pushed to a real `docker-registry` with skopeo, pulled by
//! containerd and run by it (host network, read-only root filesystem, as
//! the image's user 65532) it prints its version and serves the standalone broker.

use std::collections::BTreeSet;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pullbroker_testenv::containerd::Containerd;
use pullbroker_testenv::skopeo::{self, Format};
use pullbroker_testenv::{Auth, Registry, RegistryOptions};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where scripts/image.sh wrote the image (`PULLBROKER_IMAGE_LAYOUT`, else
/// its default).
fn layout() -> PathBuf {
    std::env::var_os("PULLBROKER_IMAGE_LAYOUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/image/oci"))
}

/// The layout's tag and manifest digest.
fn index(layout: &Path) -> (String, String) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    (
        m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap()
            .to_string(),
        m["digest"].as_str().unwrap().to_string(),
    )
}

/// Where the layout keeps the blob `digest` names.
fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(blob_path(layout, digest)).unwrap()
}

/// Kills `ctr run` (and so the container) if the test fails half-way.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs the image: scripts/test.sh runs scripts/image.sh, then this"]
fn the_image_is_reproducible_and_runs_under_containerd_as_nonroot_read_only() {
    let layout = layout();
    assert!(
        layout.join("index.json").exists(),
        "no image at {} — run scripts/image.sh",
        layout.display()
    );
    let (tag, digest) = index(&layout);
    assert_eq!(tag, env!("CARGO_PKG_VERSION"));

    // Packed again from the same binaries: the same bytes, the same digest.
    let again = tempfile::tempdir().unwrap();
    let out = Command::new(workspace().join("scripts/image.sh"))
        .args(["--no-build", "--out"])
        .arg(again.path().join("oci"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        index(&again.path().join("oci")).1,
        digest,
        "packing is reproducible"
    );

    // What the manifest and config say.
    let manifest: Value = serde_json::from_slice(&blob(&layout, &digest)).unwrap();
    let layer = &manifest["layers"][0];
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    let size = layer["size"].as_u64().unwrap();
    assert!(size <= 30 << 20, "compressed {size} bytes: over 30 MiB");
    let config: Value = serde_json::from_slice(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["User"], "65532:65532");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], tag);
    assert_eq!(labels["org.opencontainers.image.title"], "pullbroker");
    // No shell, no package manager: only what the binaries need.
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(blob_path(&layout, layer["digest"].as_str().unwrap()))
        .output()
        .unwrap();
    let files = String::from_utf8(listing.stdout).unwrap();
    for want in [
        "./usr/local/bin/pullbroker",
        "./usr/local/bin/pullbroker-credential-provider",
        "./etc/ssl/certs/ca-certificates.crt",
        "./etc/passwd",
    ] {
        assert!(files.lines().any(|l| l == want), "{want} missing:\n{files}");
    }
    for shell in ["./bin/sh", "./usr/bin/sh", "./bin/bash"] {
        assert!(
            !files.lines().any(|l| l == shell),
            "a shell in the image: {shell}"
        );
    }

    // Pushed with skopeo, pulled by containerd.
    let registry = Registry::start(RegistryOptions {
        name: "image".into(),
        auth: Auth::Anonymous,
        tls: None,
        quiet: true,
        data_dir: None,
    })
    .unwrap();
    let image = format!("{}/pullbroker:{tag}", registry.host());
    skopeo::copy(&layout, &tag, &image, None, Format::Oci, false).unwrap();
    let containerd = Containerd::start().unwrap();
    containerd.pull(&image, None).unwrap();
    let listed = containerd.ctr(&["images", "ls"]).unwrap();
    assert!(
        listed.contains(&digest),
        "pulled by digest {digest}: {listed}"
    );

    // Unique per process: runc's state is shared by every containerd here.
    let serve_id = format!("pb-serve-{}", std::process::id());
    let run = |id: &str| -> Vec<String> {
        [
            "--address",
            containerd.socket.to_str().unwrap(),
            "run",
            "--rm",
            "--net-host",
            "--read-only",
            "--snapshotter",
            "native",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!(
            "--mount=type=bind,src={},dst=/config,options=rbind:ro",
            workspace()
                .join("examples/standalone")
                .canonicalize()
                .unwrap()
                .display()
        )])
        .chain([image.clone(), id.to_string()])
        .collect()
    };
    let version = Command::new("ctr")
        .args(run(&format!("pb-version-{}", std::process::id())))
        .args(["/usr/local/bin/pullbroker", "--version"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        version.status.success(),
        "{}",
        String::from_utf8_lossy(&version.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("pullbroker {tag}")
    );

    // The standalone broker from inside the container, on the host network.
    let mut child = Command::new("ctr")
        .args(run(&serve_id))
        .args([
            "/usr/local/bin/pullbroker",
            "serve",
            "--config",
            "/config/broker.yaml",
            "--listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The container's output reaches us through ctr; read it on threads to the end.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let serving = Running(child);
    let mut seen = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no 'pullbroker serving' line: {seen:#?}"));
        if let Ok(json) = serde_json::from_str::<Value>(&line) {
            if json["message"] == "pullbroker serving" {
                break json["address"].as_str().unwrap().to_string();
            }
        }
        seen.push(line);
    };
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: broker\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"configGeneration\""), "{answer}");
    // ctr takes the user from the image config (it has no --user): the
    // broker's process runs as 65532 on the host.
    let tasks = containerd.ctr(&["task", "ls"]).unwrap();
    let pid = tasks
        .lines()
        .find(|l| l.starts_with(&serve_id))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("pb-serve in {tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("65532"), "{uid}");
    containerd
        .ctr(&["task", "kill", "--signal", "SIGTERM", &serve_id])
        .unwrap();
    let mut serving = serving;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serving.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "graceful stop: {status}");
}

/// `name@version` of every package in `Cargo.lock`.
fn lock_packages() -> BTreeSet<String> {
    let lock = std::fs::read_to_string(workspace().join("Cargo.lock")).unwrap();
    let mut out = BTreeSet::new();
    let mut name = None;
    for line in lock.lines() {
        let value = |l: &str, key: &str| {
            l.strip_prefix(key)
                .map(|v| v.trim_matches(|c| c == '"' || c == ' ').to_string())
        };
        if let Some(n) = value(line, "name = ") {
            name = Some(n);
        } else if let (Some(v), Some(n)) = (value(line, "version = "), name.take()) {
            out.insert(format!("{n}@{v}"));
        }
    }
    out
}

/// The crates `cargo auditable` recorded in a binary: its `.dep-v0`
/// section (zlib-compressed JSON), read with binutils and flate2 — not with
/// the tool that wrote the SBOM.
fn audited(binary: &Path) -> Vec<Value> {
    let section = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new("objcopy")
        .arg(format!(
            "--dump-section=.dep-v0={}",
            section.path().display()
        ))
        .arg(binary)
        .arg(section.path().with_extension("copy"))
        .output()
        .unwrap();
    let _ = std::fs::remove_file(section.path().with_extension("copy"));
    assert!(
        out.status.success(),
        "{}: no .dep-v0 section (not built with cargo auditable?): {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut json = String::new();
    flate2::read::ZlibDecoder::new(std::fs::File::open(section.path()).unwrap())
        .read_to_string(&mut json)
        .unwrap();
    let data: Value = serde_json::from_str(&json).unwrap();
    data["packages"].as_array().unwrap().clone()
}

#[test]
#[ignore = "needs the image: scripts/test.sh runs scripts/image.sh, then this"]
fn the_binaries_carry_their_dependency_list_and_an_sbom_names_what_they_hold() {
    let layout = layout();
    let (_, digest) = index(&layout);
    let lock = lock_packages();
    let id = |p: &Value| {
        format!(
            "{}@{}",
            p["name"].as_str().unwrap(),
            p["version"].as_str().unwrap()
        )
    };

    // The binaries as shipped: out of the image's layer.
    let manifest: Value = serde_json::from_slice(&blob(&layout, &digest)).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let root = tempfile::tempdir().unwrap();
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(blob_path(&layout, layer))
        .arg("-C")
        .arg(root.path())
        .args([
            "./usr/local/bin/pullbroker",
            "./usr/local/bin/pullbroker-credential-provider",
        ])
        .output()
        .unwrap();
    assert!(
        untar.status.success(),
        "{}",
        String::from_utf8_lossy(&untar.stderr)
    );
    let mut compiled = BTreeSet::new();
    for (binary, root_package, must) in [
        (
            "pullbroker",
            "pullbroker",
            &["kube", "tokio", "rustls", "aws-lc-rs", "pullbroker-broker"][..],
        ),
        (
            "pullbroker-credential-provider",
            "pullbroker-credential-provider",
            &["ureq", "aws-lc-rs"][..],
        ),
    ] {
        let packages = audited(&root.path().join("usr/local/bin").join(binary));
        let names: BTreeSet<&str> = packages
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(
            packages
                .iter()
                .any(|p| p["name"] == root_package && p["root"] == true),
            "{binary}: its own package is the root"
        );
        for m in must {
            assert!(names.contains(m), "{binary} lists {m}: {names:?}");
        }
        // cargo auditable writes `cargo metadata`'s resolve, which lists ring
        // under rustls-webpki because its `alloc` feature names the weak
        // `ring?/alloc`, though no feature turns ring on (`cargo tree -i
        // ring` prints nothing, and cargo deny bans it). So ring may be
        // listed, reached from rustls-webpki alone, and never compiled.
        if let Some(ring) = packages.iter().position(|p| p["name"] == "ring") {
            let dependents: Vec<&str> = packages
                .iter()
                .filter(|p| {
                    p["dependencies"]
                        .as_array()
                        .is_some_and(|d| d.iter().any(|i| i.as_u64() == Some(ring as u64)))
                })
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert_eq!(dependents, ["rustls-webpki"], "{binary}: who needs ring");
        }
        let build = workspace().join("target/image/build/release/deps");
        if build.exists() {
            let compiled_ring: Vec<_> = std::fs::read_dir(&build)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("libring-"))
                .collect();
            assert!(compiled_ring.is_empty(), "the image's build compiled ring");
        }
        for p in &packages {
            assert!(
                lock.contains(&id(p)),
                "{binary}: {} is not in Cargo.lock",
                id(p)
            );
        }
        compiled.extend(packages.iter().map(id));
    }

    // The SBOM: an artifact whose subject is the image, beside it in the layout.
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let sboms: Vec<&Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["artifactType"] == "application/vnd.cyclonedx+json")
        .collect();
    assert_eq!(sboms.len(), 1, "{index}");
    let artifact: Value =
        serde_json::from_slice(&blob(&layout, sboms[0]["digest"].as_str().unwrap())).unwrap();
    assert_eq!(artifact["subject"]["digest"], digest.as_str());
    assert_eq!(
        artifact["layers"][0]["mediaType"],
        "application/vnd.cyclonedx+json"
    );
    let sbom_bytes = blob(&layout, artifact["layers"][0]["digest"].as_str().unwrap());
    let sbom: Value = serde_json::from_slice(&sbom_bytes).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");
    assert_eq!(sbom["specVersion"], "1.5");
    assert_eq!(sbom["metadata"]["component"]["name"], "pullbroker");
    let listed: BTreeSet<String> = sbom["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(id)
        .chain([id(&sbom["metadata"]["component"])])
        .collect();
    // Exactly what the binaries hold, every one a crate of the lock file.
    assert_eq!(
        listed, compiled,
        "SBOM components vs the binaries' audit data"
    );
    assert!(listed.is_subset(&lock));
    for c in sbom["components"].as_array().unwrap() {
        let purl = c["purl"].as_str().unwrap_or_default();
        assert!(purl.starts_with(&format!("pkg:cargo/{}", id(c))), "{c}");
    }
    assert!(
        !String::from_utf8_lossy(&sbom_bytes)
            .contains(&workspace().canonicalize().unwrap().display().to_string()),
        "no path of this checkout in the SBOM"
    );
}

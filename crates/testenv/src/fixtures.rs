//! Deterministic OCI image layouts: tag `v1` (linux/amd64 image manifest) and
//! `multi` (an index of linux/amd64 and linux/arm64). Layers are real gzip'd
//! tars with fixed mtimes, so containerd can unpack them and digests repeat.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use serde_json::json;
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Digests of what was written, by tag and by platform.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub tags: BTreeMap<String, String>,
    pub platforms: BTreeMap<String, String>,
}

/// A blob: bytes plus its `sha256:` digest.
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Blob {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Blob { bytes, digest }
    }
    pub fn descriptor(&self, media_type: &str) -> serde_json::Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// One single-platform image: layer, config and manifest blobs.
pub struct Image {
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
}

/// Builds a single-platform image whose file content is `content`.
pub fn image(arch: &str, content: &str, annotations: Option<serde_json::Value>) -> Image {
    let mut tar_bytes = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut tar_bytes);
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        tar.append_data(&mut header, "hello.txt", content.as_bytes())
            .expect("tar in memory");
        tar.finish().expect("tar in memory");
    }
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)));
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).expect("gzip in memory");
    let layer = Blob::new(gz.finish().expect("gzip in memory"));
    let config = Blob::new(
        serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }))
        .expect("json"),
    );
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(OCI_CONFIG),
        "layers": [layer.descriptor(OCI_LAYER)],
    });
    if let Some(a) = annotations {
        manifest["annotations"] = a;
    }
    let manifest = Blob::new(serde_json::to_vec(&manifest).expect("json"));
    Image {
        layer,
        config,
        manifest,
    }
}

/// Writes an OCI layout with tags `v1` and `multi` to `dir`.
pub fn build_layout(dir: &Path) -> std::io::Result<Layout> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let write =
        |b: &Blob| std::fs::write(blobs.join(b.digest.trim_start_matches("sha256:")), &b.bytes);
    let amd64 = image("amd64", "hello from pullbroker (amd64)\n", None);
    let arm64 = image("arm64", "hello from pullbroker (arm64)\n", None);
    for img in [&amd64, &arm64] {
        write(&img.layer)?;
        write(&img.config)?;
        write(&img.manifest)?;
    }
    let platform_entry = |img: &Image, arch: &str| {
        let mut d = img.manifest.descriptor(OCI_MANIFEST);
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        d
    };
    let index = Blob::new(
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [platform_entry(&amd64, "amd64"), platform_entry(&arm64, "arm64")],
        }))
        .expect("json"),
    );
    write(&index)?;
    let tagged = |blob: &Blob, media_type: &str, tag: &str| {
        let mut d = blob.descriptor(media_type);
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        d
    };
    let top = json!({
        "schemaVersion": 2,
        "manifests": [tagged(&amd64.manifest, OCI_MANIFEST, "v1"), tagged(&index, OCI_INDEX, "multi")],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&top).expect("json"),
    )?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Layout {
        tags: BTreeMap::from([
            ("v1".to_string(), amd64.manifest.digest.clone()),
            ("multi".to_string(), index.digest.clone()),
        ]),
        platforms: BTreeMap::from([
            ("linux/amd64".to_string(), amd64.manifest.digest.clone()),
            ("linux/arm64".to_string(), arm64.manifest.digest.clone()),
        ]),
    })
}

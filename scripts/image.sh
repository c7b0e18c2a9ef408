#!/usr/bin/env bash
# Builds the pullbroker container image without a container daemon: release
# binaries, packed with the CA bundle and a non-root user into one
# reproducible layer, written as an OCI image layout (linux/amd64).
#
#   scripts/image.sh                      # -> target/image/oci, tag = the crate version
#   scripts/image.sh --out DIR --tag TAG
#   skopeo copy oci:target/image/oci:0.1.0 docker://REGISTRY/pullbroker:0.1.0
#
# What is inside: /usr/local/bin/pullbroker (the entrypoint) and
# /usr/local/bin/pullbroker-credential-provider (for nodes: copy it out),
# the exact shared libraries they link (glibc's loader, libc, libm, libgcc_s:
# a static musl build needs a musl toolchain that cannot be installed here,
# and a static glibc binary cannot resolve host names reliably), the Debian
# CA bundle, /etc/passwd and /etc/group with user and group 65532 (nonroot),
# nothing else: no shell, no package manager.
#
# Reproducible: file times are the last commit's time, entries sorted, owners
# numeric 0, gzip without a name or time, paths remapped out of the binaries;
# the same commit, toolchain and Debian packages give the same digest
# (crates/cli/tests/image.rs packs twice and compares). Prints the digest and
# the compressed size.
#
# Supply chain: the binaries are built with `cargo auditable`, so each
# carries the list of crates compiled into it (a `.dep-v0` section that
# trivy, grype and syft read). Beside the image, the layout holds a
# CycloneDX 1.5 SBOM (cargo-cyclonedx) of the two shipped packages, pruned
# to the crates the binaries' audit data name (cargo metadata also lists
# optional crates no feature enables), as an OCI artifact whose `subject` is
# the image: `oras discover`/`trivy --sbom-sources oci` find it, and
# `skopeo copy` of the tag copies the image alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-tools.sh
ensure_tools jq=jq ldd=libc-bin
# Cargo subcommands, pinned (crates.io).
command -v cargo-auditable >/dev/null 2>&1 || cargo install --locked --quiet cargo-auditable --version 0.7.7
command -v cargo-cyclonedx >/dev/null 2>&1 || cargo install --locked --quiet cargo-cyclonedx --version 0.5.9
command -v rust-audit-info >/dev/null 2>&1 || cargo install --locked --quiet rust-audit-info --version 0.5.4

out=target/image/oci
tag=$(cargo metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "pullbroker") | .version')
build=1
while (($#)); do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

target_dir=target/image/build
if ((build)); then
  # Paths of this checkout and of the crate registry are remapped, so the
  # binaries do not depend on where the tree or the cargo home lives.
  RUSTFLAGS="--remap-path-prefix=$PWD=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
  CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo auditable build --release --locked --target-dir "$target_dir" \
      -p pullbroker -p pullbroker-credential-provider >&2
fi
bins=("$target_dir/release/pullbroker" "$target_dir/release/pullbroker-credential-provider")
for b in "${bins[@]}"; do [ -x "$b" ] || { echo "missing $b (run without --no-build)" >&2; exit 1; }; done

epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
work=$(mktemp -d)
sbom_name=".image-sbom-$$"
trap 'rm -rf "$work"; rm -f crates/*/"$sbom_name".json' EXIT
root="$work/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
install -m 0755 "${bins[@]}" "$root/usr/local/bin/"
# The shared libraries, at the paths the loader looks for them.
for lib in $(ldd "${bins[@]}" | grep -Eo '/[^ ]+\.so[^ ]*' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  install -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

# One layer: sorted, fixed times and owners, no pax atime/ctime, gzip -n.
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$root" -cf "$work/layer.tar" .
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
blob() { # FILE -> prints "sha256:HEX SIZE", stores it
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  cp "$1" "$out/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
read -r layer layer_size < <(blob "$work/layer.tar.gz")

labels=$(jq -cn --arg v "$tag" --arg r "$revision" --arg c "$created" '{
  "org.opencontainers.image.title": "pullbroker",
  "org.opencontainers.image.description": "Registry-credential broker for Kubernetes: the broker, the controller and the KEP-4412 kubelet plugin",
  "org.opencontainers.image.version": $v,
  "org.opencontainers.image.revision": $r,
  "org.opencontainers.image.created": $c,
  "org.opencontainers.image.licenses": "Apache-2.0"}')
jq -cn --arg c "$created" --arg d "$diff_id" --argjson l "$labels" '{
  created: $c, architecture: "amd64", os: "linux",
  config: {User: "65532:65532", Entrypoint: ["/usr/local/bin/pullbroker"],
    Env: ["PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    WorkingDir: "/", Labels: $l},
  rootfs: {type: "layers", diff_ids: [$d]},
  history: [{created: $c, created_by: "scripts/image.sh"}]}' | tr -d '\n' >"$work/config.json"
read -r config config_size < <(blob "$work/config.json")
jq -cn --arg cd "$config" --argjson cs "$config_size" --arg ld "$layer" --argjson ls "$layer_size" --argjson l "$labels" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $ld, size: $ls}],
  annotations: $l}' | tr -d '\n' >"$work/manifest.json"
read -r manifest manifest_size < <(blob "$work/manifest.json")
jq -cn --arg md "$manifest" --argjson ms "$manifest_size" --arg t "$tag" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
    platform: {architecture: "amd64", os: "linux"},
    annotations: {"org.opencontainers.image.ref.name": $t}}]}' | tr -d '\n' >"$out/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"

# The SBOM: cargo-cyclonedx writes one per workspace package beside its
# Cargo.toml; the shipped two are merged, kept to what the binaries' audit
# data name, dated like the layer, checkout paths remapped as in the binaries.
SOURCE_DATE_EPOCH=$epoch cargo cyclonedx -q --format json --spec-version 1.5 \
  --override-filename "$sbom_name" --manifest-path Cargo.toml
audited=$(for b in "${bins[@]}"; do rust-audit-info "$b"; done |
  jq -cs '[.[].packages[] | "\(.name)@\(.version)"] | unique')
jq -S -s --argjson keep "$audited" '
  def id: "\(.name)@\(.version)";
  (.[0].metadata.component | del(.components)) as $main
  | (.[1].metadata.component | del(.components)) as $provider
  | ([.[0].components[], .[1].components[], $provider]
     | map(select(id as $i | $keep | index($i))) | unique_by(."bom-ref")) as $components
  | ([$main."bom-ref"] + [$components[]."bom-ref"]) as $refs
  | .[0] + {
      components: $components,
      dependencies: ([.[].dependencies[] | select(.ref as $r | $refs | index($r))
        | .dependsOn |= ((. // []) | map(select(. as $d | $refs | index($d))))] | unique_by(.ref))
    }' crates/cli/"$sbom_name".json crates/kubelet-plugin/"$sbom_name".json |
  sed "s|file://$PWD|file:///src|g" | tr -d '\n' >"$work/sbom.cdx.json"
rm -f crates/*/"$sbom_name".json
read -r sbom sbom_size < <(blob "$work/sbom.cdx.json")
printf '{}' >"$work/empty.json"
read -r empty empty_size < <(blob "$work/empty.json")
jq -cn --arg ed "$empty" --argjson es "$empty_size" --arg sd "$sbom" --argjson ss "$sbom_size" \
  --arg md "$manifest" --argjson ms "$manifest_size" --arg c "$created" '{
  schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
  artifactType: "application/vnd.cyclonedx+json",
  config: {mediaType: "application/vnd.oci.empty.v1+json", digest: $ed, size: $es, data: "e30="},
  layers: [{mediaType: "application/vnd.cyclonedx+json", digest: $sd, size: $ss,
    annotations: {"org.opencontainers.image.title": "pullbroker.cdx.json"}}],
  subject: {mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms},
  annotations: {"org.opencontainers.image.created": $c}}' | tr -d '\n' >"$work/sbom-manifest.json"
read -r sbom_manifest sbom_manifest_size < <(blob "$work/sbom-manifest.json")
jq -c --arg d "$sbom_manifest" --argjson s "$sbom_manifest_size" '.manifests += [{
  mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
  artifactType: "application/vnd.cyclonedx+json"}]' "$out/index.json" >"$work/index.json"
mv "$work/index.json" "$out/index.json"

echo "image oci:$out:$tag"
echo "digest $manifest"
echo "compressed $layer_size bytes (layer), uncompressed $(stat -c %s "$work/layer.tar") bytes"
echo "sbom $sbom_manifest ($(jq '.components | length' "$work/sbom.cdx.json") components)"

//! The pure core of pullbroker.
//!
//! Everything here is plain data and functions: no network, no files, no clock
//! reads (callers pass `now`). Adapters (the registry client, the broker, the
//! Kubernetes controller, the CLI) translate between the world and these types,
//! so the rules that matter — how an image reference is normalized, which
//! credential a docker config offers for an image — live in one place and are
//! tested exhaustively without I/O.
//!
//! - [`reference`]: image references, normalized exactly as Docker/containerd do.
//! - [`digest`]: content digests (`sha256:…`) and their validation.
//! - [`credential`]: registry credentials whose secrets redact themselves.
//! - [`dockerconfig`]: `.dockerconfigjson` / `config.json` parsing and the
//!   kubelet's credential matching rules.
//! - [`secret`]: Kubernetes `Secret` manifests of the docker-config types.
//! - [`keychain`]: the small trait that hands credentials to a registry client.
//! - [`libtrust`]: the key IDs docker/distribution registries expect in token headers.
//! - [`sync`]: sync mode's desired state and plan (the controller's decisions, no I/O).
//! - [`seal`]: the keyed MAC on the secrets sync writes, so a tenant's edit is detected.
//! - [`jwt`]: reading (not verifying) a JWT's expiry for display.
//! - [`admission`]: AdmissionReview digest pinning — kinds, pod specs, which
//!   images to pin, the JSON Patch (the broker's webhook decides and resolves).
//! - [`policy`]: `RegistryCredential`, `PullGrant` and the decision function.
//! - [`diagnose`]: why a pull failed, from kubelet's and containerd's messages.
//! - [`audit`]: `pullbroker audit`'s findings from pull secrets, service
//!   accounts, pods and the policy.
//! - [`adopt`]: `pullbroker adopt`'s plan — central credentials and the
//!   narrowest grants for copied pull secrets, proven and ordered.
//! - [`proxy`]: which proxy a request goes through, by Go's
//!   `ProxyFromEnvironment` rules (`HTTPS_PROXY`, `NO_PROXY`, …).
//! - [`time`]: [`UnixTime`](time::UnixTime), instants as RFC 3339 with
//!   saturating arithmetic.

pub mod admission;
pub mod adopt;
pub mod audit;
pub mod credential;
pub mod diagnose;
pub mod digest;
pub mod dockerconfig;
pub mod jwt;
pub mod keychain;
pub mod libtrust;
pub mod policy;
pub mod proxy;
pub mod reference;
pub mod seal;
pub mod secret;
pub mod sync;
pub mod time;

pub use credential::Credential;
pub use digest::Digest;
pub use dockerconfig::DockerConfig;
pub use keychain::Keychain;
pub use reference::Reference;

//! The registry adapter of pullbroker: talks the OCI distribution API.
//!
//! - [`challenge`]: `WWW-Authenticate` parsing (Basic/Bearer, several challenges).
//! - [`client`]: [`RegistryClient`] — `/v2/` ping, scheme choice (HTTPS, or plain
//!   HTTP for loopback and listed lab registries), token fetch and cache,
//!   manifest `HEAD`/`GET` with the four manifest media types, digest checks,
//!   bounded retries on 429/5xx; one module per concern.
//! - [`resolve`]: [`Resolver`] — many references at once with a concurrency
//!   bound, de-duplication of identical in-flight work, and a digest cache.
//!
//! Why not `oci-client`: it keys tokens by registry and operation rather than
//! by credential identity, offers no in-flight de-duplication, and hides the
//! `HEAD`→`GET` fallback and per-request retry policy we need to control. The
//! protocol surface we need (ping, token, manifest) is small.

pub mod challenge;
pub mod client;
pub mod error;
pub mod manifest;
pub mod resolve;
pub mod settings;

mod singleflight;
mod token;

pub use client::{Manifest, ManifestInfo, RegistryClient};
pub use error::{RegistryError, SetupError};
pub use manifest::Platform;
pub use resolve::{Resolved, Resolver, ResolverOptions};
pub use settings::{ClientSettings, OnRateLimited, RegistryTls};

//! Credential issuing for pullbroker, shared by the broker and the controller
//! (neither depends on the other's I/O for it):
//!
//! - [`keys`]: token-issuer signing keys (ES256), the certificate a registry
//!   trusts, the libtrust `kid`, and the derived MAC key for broker credentials.
//! - [`mint`]: registry JWTs (distribution token auth) and the broker's own
//!   short-lived credentials (HS256 JWTs, `typ: pbc+jwt`; the legacy `pbc1.…` still opens).
//! - [`source`]: refreshing upstream credentials from an `exec` source.
//! - [`runtime`]: the usable credential set built from the policy documents
//!   and the central Secrets.
//! - [`pki`]: the broker's TLS: a CA, serving certificates, their validity.
//! - [`dev_issuer`]: service-account-shaped tokens for trying the standalone
//!   broker without a cluster.

mod error;
pub use error::{Error, ExecProblem, Result};

pub mod dev_issuer;
pub mod keys;
pub mod mint;
pub mod pki;
pub mod runtime;
pub mod source;

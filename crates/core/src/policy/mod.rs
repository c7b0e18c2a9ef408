//! Operator-owned policy: credentials, grants, and the decision function.
//!
//! See [`glob`] for the exact pattern semantics and [`decide`] for the rules.

pub mod decide;
pub mod glob;
pub mod model;

pub use decide::{
    Allowed, Decision, DocumentKind, Named, Policy, Problem, Request, Subject, Target,
};
pub use model::{AdmissionSettings, FailurePolicy, PullGrantSpec, Purpose, RegistryCredentialSpec};
#[cfg(feature = "crd")]
pub use model::{PullGrant, RegistryCredential};

//! daemonset-webhook: a Kubernetes admission webhook for apps/v1 DaemonSets.
//!
//! - [`policy`]: what is valid and what to patch; pure functions, no I/O.
//! - [`admission`]: the `admission.k8s.io/v1` envelope around the policy.
//! - [`server`]: the HTTPS shell (axum, hyper, rustls).
//! - [`check`]: the same engine over manifest files, for CI pipelines.
//! - [`cli`]: the command line; [`config`] reads the policy file; [`certs`] makes certificates.

pub mod admission;
pub mod certs;
pub mod check;
pub mod cli;
pub mod config;
pub mod policy;
pub mod server;

//! The run engine: what a workflow run does, without Kubernetes.
//!
//! The engine runs a pinned [`WorkflowSpec`](crate::api::WorkflowSpec): it orders the stages
//! ([`dag`]), checks and fills in the run's params ([`params`]), renders the messages of publish
//! stages ([`template`]) and parses durations ([`duration`]). [`check`] reports what is wrong
//! with a workflow beyond what the CRD's CEL rules catch. Nothing here imports kube, so the
//! controller and a `devset run` CLI can both drive it, and it is tested without a cluster.

pub mod check;
pub mod dag;
pub mod duration;
pub mod params;
pub mod runner;
pub mod template;

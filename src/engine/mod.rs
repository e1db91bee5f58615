//! The run engine: what a workflow run does, without Kubernetes.
//!
//! The engine runs a pinned [`WorkflowSpec`](crate::api::WorkflowSpec) ([`runner`]): it orders
//! the stages ([`dag`]), checks and fills in the run's params ([`params`]) and the `count`s and
//! rates that come from them ([`amounts`]), evaluates CEL ([`expr`]: `when`, `where`, `capture`),
//! and runs each stage's action in a module of its own: [`publish`] (messages rendered by
//! [`template`]), [`delay`], [`approval`] and [`expect`]. Stage results flow to later stages as
//! [`outputs`]. [`check`] reports what is wrong with a workflow beyond what the CRD's CEL rules
//! catch. Nothing here imports kube, so the controller and `devset run` both drive it, and it is
//! tested without a cluster.

pub mod amounts;
pub mod approval;
pub mod check;
pub mod dag;
pub mod delay;
pub mod duration;
pub mod expect;
pub mod expr;
pub mod outputs;
pub mod params;
pub mod publish;
pub mod runner;
pub mod template;

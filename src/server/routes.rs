//! What the route files of `devset api` share: the namespace check and the run lookups.

use super::{AppState, error::ApiError};
use crate::api::WorkflowRun;
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;

/// Refuses a namespace this API does not serve (`--namespace`) with 404.
pub(super) fn check_namespace(state: &AppState, ns: &str) -> Result<(), ApiError> {
    if crate::watch::serves(&state.namespaces, ns) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "this API serves the namespaces {:?} only",
            state.namespaces
        )))
    }
}

/// The run from the watch cache.
pub(super) fn cached_run(state: &AppState, ns: &str, name: &str) -> Option<Arc<WorkflowRun>> {
    state.runs.get(&ObjectRef::new(name).within(ns))
}

/// 404 for a run that does not exist.
pub(super) fn not_found(ns: &str, name: &str) -> ApiError {
    ApiError::not_found(format!(
        "workflowruns.devset.io {name:?} not found in the namespace {ns:?}"
    ))
}

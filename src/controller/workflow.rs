//! Workflow: check what CEL cannot (cycles, templates, params) and report `Ready`.

use super::{Context, Error, Result, apply_status, conditions, metrics::WORKFLOW};
use crate::{
    api::{Workflow, WorkflowStatus, conditions::READY},
    engine::check::check_workflow,
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use std::{sync::Arc, time::Duration};
use tracing::instrument;

pub async fn controller(ctx: Arc<Context>) {
    super::reconcile_per_namespace(ctx, WORKFLOW, reconcile, error_policy).await;
}

fn error_policy(_: Arc<Workflow>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile.set_failure(WORKFLOW, err);
    tracing::warn!(error = %err, label = err.metric_label(), "Workflow reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

#[instrument(skip_all, fields(namespace = wf.namespace().unwrap_or_default(), name = wf.name_any()))]
async fn reconcile(wf: Arc<Workflow>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile.count_and_measure(WORKFLOW);
    let problems = check_workflow(&wf.spec);
    let (status, reason, message) = match problems.first() {
        None => (
            "True",
            "Valid".to_string(),
            "the workflow is valid".to_string(),
        ),
        Some(first) => (
            "False",
            first.reason.to_string(),
            problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let old = wf.status.clone().unwrap_or_default();
    let generation = wf.metadata.generation;
    let new = WorkflowStatus {
        observed_generation: generation,
        conditions: conditions::set(
            &old.conditions,
            READY,
            status,
            &reason,
            &message,
            generation,
            Timestamp::now(),
        ),
    };
    if new != old {
        let api: Api<Workflow> = ctx.api(&wf.namespace().unwrap_or_default());
        apply_status(&api, wf.as_ref(), &new).await?;
        if status == "False" {
            ctx.event(wf.as_ref(), EventType::Warning, &reason, message)
                .await;
        }
    }
    Ok(Action::await_change())
}

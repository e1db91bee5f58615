//! Reading runs as an independent client does: `kubectl get workflowrun -o jsonpath`.

use super::{env, wait_until};
use std::time::Duration;

/// A JSONPath of the run `ns/run`, e.g. `{.status.phase}`.
pub fn status(ns: &str, run: &str, path: &str) -> String {
    env().jsonpath(ns, "workflowrun", run, path)
}

/// A field of one stage's status, e.g. `phase`, `reason`, `outputs.decision`.
pub fn stage_field(ns: &str, run: &str, stage: &str, field: &str) -> String {
    status(
        ns,
        run,
        &format!("{{.status.stages[?(@.name==\"{stage}\")].{field}}}"),
    )
}

/// Waits until the run is in `phase`; fails at once when it ends in another final phase, with
/// its reason and message.
pub fn wait_phase(ns: &str, run: &str, phase: &str, timeout: Duration) {
    wait_until(timeout, &format!("run {run} to be {phase}"), || {
        let p = status(ns, run, "{.status.phase}");
        assert!(
            !(matches!(p.as_str(), "Failed" | "Completed" | "Stopped") && p != phase),
            "run {run} is {p}, not {phase}: {} {}",
            status(ns, run, "{.status.reason}"),
            status(ns, run, "{.status.message}")
        );
        (p == phase).then_some(())
    });
}

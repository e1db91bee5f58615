use crate::{
    api::{TRIGGERED_BY_ANNOTATION, WorkflowRun, WorkflowRunSpec},
    schedule::{Schedule, ScheduleError, Spec, Window},
};
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::ObjectReference,
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time},
};
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Runs a Workflow on a cron schedule: a new WorkflowRun at each time.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "devset.io",
    version = "v1alpha1",
    kind = "WorkflowSchedule",
    plural = "workflowschedules",
    shortname = "wfs",
    shortname = "schedule",
    namespaced,
    doc = "Creates a WorkflowRun from runTemplate at each time of a cron schedule in a time zone, between startAt and endAt. Runs are named SCHEDULE-<scheduled time in Unix minutes>, so no time ever fires twice.",
    status = "WorkflowScheduleStatus",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "TimeZone", type_ = "string", json_path = ".spec.timeZone"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.startAt) || !has(self.endAt) || self.endAt > self.startAt"
).message("endAt must be after startAt").field_path(".endAt"))]
#[serde(rename_all = "camelCase")]
pub struct WorkflowScheduleSpec {
    /// When to run: five cron fields (minute hour day-of-month month day-of-week, e.g.
    /// `0 9 * * MON`; names such as MON and JAN, ranges, lists and steps allowed), or `@hourly`,
    /// `@daily`, `@weekly`, `@monthly`, `@yearly`, or `@every DURATION` (e.g. `@every 10m`;
    /// counted from startAt, or else from the Unix epoch). A schedule that does not parse sets
    /// the Ready condition to False with reason InvalidSchedule.
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// The IANA time zone the cron fields are read in, e.g. `Europe/Paris`; default `UTC`. An
    /// unknown name sets Ready to False with reason InvalidTimeZone. Across daylight-saving
    /// changes a fixed time runs once (a time skipped by spring forward runs right after the
    /// gap; a time repeated by fall back runs at its first occurrence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// No run is scheduled for a time before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Time>,
    /// No run is scheduled for this time or later. Must be after startAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<Time>,
    /// True pauses the schedule: no run is created until it is false again (fire now still
    /// works). Runs already started go on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// What to do when a time comes while a run of this schedule is still active: `Allow`
    /// (start another), `Forbid` (skip this time) or `Replace` (stop the active runs, then start
    /// the new one).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A time is fired at most this many seconds late (after a controller restart or outage);
    /// a later one is skipped with an Event `MissedSchedule`. Unset: the most recent missed
    /// time is fired however late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// Finished runs that completed to keep; older ones are deleted with their event logs.
    /// Default 3.
    #[serde(
        default = "default_successful",
        skip_serializing_if = "is_default_successful"
    )]
    #[schemars(range(min = 0))]
    pub successful_runs_history_limit: i32,
    /// Finished runs that failed or were stopped to keep; older ones are deleted with their
    /// event logs. Default 1.
    #[serde(default = "default_failed", skip_serializing_if = "is_default_failed")]
    #[schemars(range(min = 0))]
    pub failed_runs_history_limit: i32,
    /// The run to create at each time.
    pub run_template: RunTemplate,
}

fn default_successful() -> i32 {
    3
}
fn is_default_successful(v: &i32) -> bool {
    *v == default_successful()
}
fn default_failed() -> i32 {
    1
}
fn is_default_failed(v: &i32) -> bool {
    *v == default_failed()
}

/// What to do with a time that comes while a run of the schedule is active.
#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ConcurrencyPolicy {
    /// Start another run.
    #[default]
    Allow,
    /// Skip this time (Event `Skipped`).
    Forbid,
    /// Stop the active runs (`spec.stop: true`), then start the new one (Event `Replaced`).
    Replace,
}

/// The WorkflowRun a schedule creates.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct RunTemplate {
    /// Labels and annotations for each run (besides `devset.io/schedule` and
    /// `devset.io/triggered-by`, which the controller sets).
    #[serde(default, skip_serializing_if = "RunTemplateMetadata::is_empty")]
    pub metadata: RunTemplateMetadata,
    /// The run's spec: workflowRef, connectorRef, params.
    #[schemars(schema_with = "run_spec_schema")]
    pub spec: WorkflowRunSpec,
}

/// Labels and annotations of a scheduled run.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
pub struct RunTemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl RunTemplateMetadata {
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

// The run spec's schema without its transition rules (`self == oldSelf` keeps a run's
// references fixed; a schedule's template may change).
fn run_spec_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                if let Some(serde_json::Value::Array(rules)) = o.get_mut("x-kubernetes-validations")
                {
                    rules.retain(|r| !r["rule"].as_str().unwrap_or_default().contains("oldSelf"));
                    if rules.is_empty() {
                        o.remove("x-kubernetes-validations");
                    }
                }
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::Value::from(<WorkflowRunSpec as schemars::JsonSchema>::json_schema(
        generator,
    ));
    strip(&mut v);
    schemars::Schema::try_from(v).unwrap_or_default()
}

/// What the schedule did last and will do next.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowScheduleStatus {
    /// The latest scheduled time the controller dealt with: fired, skipped by Forbid, or
    /// missed past startingDeadlineSeconds. Times up to it never fire again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The next time a run is due; unset when suspended, invalid, or past endAt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The runs of this schedule that have not finished.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ObjectReference>,
    /// The run created last (by the schedule or by fire now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_name: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: True when the schedule and time zone are valid (reason `Scheduled`, or
    /// `Suspended`, `Ended`); False with reason `InvalidSchedule`, `InvalidTimeZone`,
    /// `InvalidWindow` or `InvalidName`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The label on every run a schedule creates: the schedule's name.
pub const SCHEDULE_LABEL: &str = "devset.io/schedule";
/// The annotation on a scheduled run: the time it was scheduled for (RFC 3339); absent on a
/// run fired now.
pub const SCHEDULED_AT_ANNOTATION: &str = "devset.io/scheduled-at";

impl WorkflowSchedule {
    /// The schedule and its window, or what is wrong with them or the name (naming the field).
    pub fn parse(&self) -> Result<(Schedule, Window), ScheduleError> {
        let name = self.name_any();
        let spec = &self.spec;
        Spec {
            name: &name,
            schedule: &spec.schedule,
            time_zone: spec.time_zone.as_deref(),
            start_at: spec.start_at.as_ref().map(|t| t.0),
            end_at: spec.end_at.as_ref().map(|t| t.0),
            starting_deadline_seconds: spec.starting_deadline_seconds,
        }
        .parse()
    }

    /// The run this schedule creates: `name` (or, without one, a name generated from
    /// `SCHEDULE-manual-`), its template's labels and annotations plus [`SCHEDULE_LABEL`], the
    /// [`TRIGGERED_BY_ANNOTATION`] `triggered_by`, [`SCHEDULED_AT_ANNOTATION`] when
    /// `scheduled_for` is given, and the schedule as its controlling owner.
    pub fn new_run(
        &self,
        name: Option<String>,
        scheduled_for: Option<Timestamp>,
        triggered_by: &str,
    ) -> WorkflowRun {
        let schedule = self.name_any();
        let template = &self.spec.run_template;
        let mut labels = template.metadata.labels.clone();
        labels.insert(SCHEDULE_LABEL.into(), schedule.clone());
        let mut annotations = template.metadata.annotations.clone();
        annotations.insert(TRIGGERED_BY_ANNOTATION.into(), triggered_by.into());
        if let Some(t) = scheduled_for {
            annotations.insert(SCHEDULED_AT_ANNOTATION.into(), t.to_string());
        }
        let generate_name = name.is_none().then(|| format!("{schedule}-manual-"));
        let mut spec = template.spec.clone();
        spec.stop = false;
        WorkflowRun {
            metadata: ObjectMeta {
                name,
                generate_name,
                namespace: self.namespace(),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: self.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    /// Whether `run` was created by this schedule (its label and controlling owner).
    pub fn owns(&self, run: &WorkflowRun) -> bool {
        let uid = self.metadata.uid.as_deref();
        run.labels().get(SCHEDULE_LABEL) == Some(&self.name_any())
            && run
                .owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WorkflowSchedule {
        let path = format!(
            "{}/config/samples/workflowschedule.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_sample_parses_and_defaults_fill_in() {
        let s = sample();
        assert_eq!(s.spec.concurrency_policy, ConcurrencyPolicy::Forbid);
        let (schedule, window) = s.parse().unwrap();
        assert_eq!(window.deadline, Some(std::time::Duration::from_secs(300)));
        // Friday 2027-01-01, 12:00 UTC: next Monday 09:00 in Paris (CET) is 08:00 UTC.
        let next = schedule.next_after("2027-01-01T12:00:00Z".parse().unwrap());
        assert_eq!(next.unwrap().to_string(), "2027-01-04T08:00:00Z");
        let bare: WorkflowScheduleSpec = serde_json::from_value(serde_json::json!({
            "schedule": "@daily",
            "runTemplate": {"spec": {"workflowRef": {"name": "w"}, "connectorRef": {"name": "k"}}}
        }))
        .unwrap();
        assert_eq!(
            (
                bare.concurrency_policy,
                bare.successful_runs_history_limit,
                bare.failed_runs_history_limit,
                bare.suspend
            ),
            (ConcurrencyPolicy::Allow, 3, 1, false)
        );
    }

    #[test]
    fn a_new_run_carries_the_template_the_schedule_label_and_its_owner() {
        let mut s = sample();
        s.metadata.namespace = Some("team".into());
        s.metadata.uid = Some("u-1".into());
        s.spec.run_template.spec.stop = true;
        let t: Timestamp = "2027-01-04T08:00:00Z".parse().unwrap();
        let run = s.new_run(
            Some("orders-weekday-29983680".into()),
            Some(t),
            "schedule/orders-weekday",
        );
        let labels = run.labels();
        assert_eq!(labels[SCHEDULE_LABEL], "orders-weekday");
        assert_eq!(labels["team"], "payments");
        let annotations = run.annotations();
        assert_eq!(
            annotations[TRIGGERED_BY_ANNOTATION],
            "schedule/orders-weekday"
        );
        assert_eq!(annotations[SCHEDULED_AT_ANNOTATION], "2027-01-04T08:00:00Z");
        assert!(!run.spec.stop, "a template's stop is not copied");
        assert_eq!(run.namespace().as_deref(), Some("team"));
        assert!(s.owns(&run));
        let manual = s.new_run(None, None, "alice");
        assert_eq!(
            manual.metadata.generate_name.as_deref(),
            Some("orders-weekday-manual-")
        );
        assert!(!manual.annotations().contains_key(SCHEDULED_AT_ANNOTATION));
        assert!(s.owns(&manual));
        let mut other = run.clone();
        other.metadata.owner_references = None;
        assert!(!s.owns(&other));
    }
}

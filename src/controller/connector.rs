//! BrokerConnector: resolve the Secret, probe the broker, report `Ready`.

use super::{Context, Error, Result, apply_status, conditions, metrics::BROKERCONNECTOR};
use crate::{
    api::{BrokerConnector, BrokerConnectorStatus, conditions::READY},
    brokers::{self, BrokerConfig},
};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, ResourceExt,
    runtime::{controller::Action, events::EventType},
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tracing::{info, instrument};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn controller(ctx: Arc<Context>) {
    super::reconcile_per_namespace(ctx, BROKERCONNECTOR, reconcile, error_policy).await;
}

fn error_policy(_: Arc<BrokerConnector>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile.set_failure(BROKERCONNECTOR, err);
    tracing::warn!(error = %err, label = err.metric_label(), "BrokerConnector reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// Reads the Secrets a connector names (kube side of [`BrokerConfig::from_spec`]).
pub async fn resolve(
    ctx: &Context,
    bc: &BrokerConnector,
) -> Result<Result<BrokerConfig, brokers::ConfigError>> {
    let ns = bc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = ctx.api(&ns);
    let mut found: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>> = BTreeMap::new();
    for name in secret_names(bc) {
        let data = secrets.get_opt(&name).await?.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        });
        found.insert(name, data);
    }
    Ok(BrokerConfig::from_spec(&bc.spec, |name| {
        found.get(name).cloned().flatten()
    }))
}

fn secret_names(bc: &BrokerConnector) -> Vec<String> {
    let mut names = Vec::new();
    let tls = |t: &Option<crate::api::TlsConfig>, names: &mut Vec<String>| {
        if let Some(t) = t {
            names.extend(t.ca_secret_ref.iter().map(|r| r.name.clone()));
            names.extend(t.client_cert_secret_ref.iter().map(|r| r.name.clone()));
        }
    };
    if let Some(k) = &bc.spec.kafka {
        names.extend(k.sasl.iter().map(|s| s.secret_ref.name.clone()));
        tls(&k.tls, &mut names);
    }
    if let Some(r) = &bc.spec.rabbitmq {
        names.extend(r.secret_ref.iter().map(|s| s.name.clone()));
        tls(&r.tls, &mut names);
    }
    names.sort();
    names.dedup();
    names
}

#[instrument(skip_all, fields(namespace = bc.namespace().unwrap_or_default(), name = bc.name_any()))]
async fn reconcile(bc: Arc<BrokerConnector>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile.count_and_measure(BROKERCONNECTOR);
    let kind = if bc.spec.kafka.is_some() {
        "kafka"
    } else {
        "rabbitmq"
    };
    let (status, reason, message) = match resolve(&ctx, &bc).await? {
        Err(e) => ("False", e.reason().to_string(), e.to_string()),
        Ok(cfg) => match brokers::probe(&cfg, PROBE_TIMEOUT).await {
            Ok(reached) => ("True", "Connected".to_string(), reached),
            Err(e) => (
                "False",
                e.reason().to_string(),
                format!("probing {}: {e}", cfg.describe()),
            ),
        },
    };
    let old = bc.status.clone().unwrap_or_default();
    let generation = bc.metadata.generation;
    let new = BrokerConnectorStatus {
        r#type: Some(kind.into()),
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
        let api: Api<BrokerConnector> = ctx.api(&bc.namespace().unwrap_or_default());
        apply_status(&api, bc.as_ref(), &new).await?;
        let was =
            conditions::get(&old.conditions, READY).map(|c| (c.status.clone(), c.reason.clone()));
        if was != Some((status.to_string(), reason.clone())) {
            info!(status, reason, "connector readiness changed");
            let type_ = if status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            };
            ctx.event(bc.as_ref(), type_, &reason, message).await;
        }
    }
    let every = Duration::from_secs(ctx.settings.probe_interval_seconds);
    Ok(Action::requeue(if status == "True" {
        every
    } else {
        every.min(Duration::from_secs(15))
    }))
}

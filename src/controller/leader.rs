//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does
//! it: only the holder of the Lease runs the reconcilers, so two replicas never drive the same
//! run.
//!
//! - A candidate tries every [`Election::retry`] to take the Lease. It may when the Lease has no
//!   holder, or when its record has not changed for `leaseDurationSeconds` *as observed on this
//!   machine's monotonic clock* (so clock skew between nodes does not matter).
//! - The leader renews every `retry`. When it has not managed to renew for `renew_deadline`
//!   (shorter than the lease duration) it gives up leadership before anyone else can take it.
//! - Every write carries the `resourceVersion` it read, so two candidates cannot both win.
//! - On a clean shutdown the leader empties the holder, and a standby takes over at once.

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Leader election flags of `devset controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct LeaderSettings {
    /// Run the reconcilers only while holding a Lease, so that several replicas can run with
    /// one active. Needs the postgres event store when replicas > 1 (each pod's SQLite file is
    /// its own).
    #[arg(long, env = "DEVSET_LEADER_ELECT", default_value_t = false)]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(
        long,
        env = "DEVSET_LEADER_ELECTION_ID",
        default_value = "devset-operator"
    )]
    pub leader_election_id: String,
    /// The Lease's namespace (default: `POD_NAMESPACE`, else the kubeconfig's namespace).
    #[arg(long, env = "DEVSET_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// How long a Lease that is not renewed stays held, in seconds.
    #[arg(long, env = "DEVSET_LEADER_ELECTION_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..))]
    pub leader_election_lease_seconds: u64,
}

/// One candidate for one Lease.
pub struct Election {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    lease: Duration,
    renew_deadline: Duration,
    retry: Duration,
    /// The last record read and when this process first saw it.
    observed: Option<(Observed, Instant)>,
}

#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew: Option<Timestamp>,
    transitions: Option<i32>,
}

impl Observed {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            transitions: spec.and_then(|s| s.lease_transitions),
        }
    }
}

impl Election {
    pub fn new(client: Client, settings: &LeaderSettings) -> Self {
        let namespace = settings
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let host = std::env::var("POD_NAME")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "devset".into());
        let lease = Duration::from_secs(settings.leader_election_lease_seconds);
        Self {
            api: Api::namespaced(client, &namespace),
            name: settings.leader_election_id.clone(),
            namespace,
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            lease,
            // client-go's defaults are 15 s / 10 s / 2 s; keep the same proportions.
            renew_deadline: lease * 2 / 3,
            retry: lease * 2 / 15,
            observed: None,
        }
    }

    /// `namespace/name` of the Lease, for messages.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Returns once this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.lease(), identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    if !logged {
                        let holder = self.observed.as_ref().and_then(|(o, _)| o.holder.clone());
                        info!(lease = %self.lease(), holder = ?holder,
                              "another replica leads; waiting to take over");
                        logged = true;
                    }
                }
                Err(e) => warn!(lease = %self.lease(), error = %e, "cannot read or take the Lease"),
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    /// Renews the Lease while this candidate holds it; returns when leadership is lost.
    pub async fn hold(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.retry).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.lease(), "another replica took the Lease");
                    return;
                }
                Err(e) => warn!(lease = %self.lease(), error = %e, "cannot renew the Lease"),
            }
            if renewed.elapsed() >= self.renew_deadline {
                warn!(lease = %self.lease(), deadline = ?self.renew_deadline,
                      "the Lease was not renewed in time");
                return;
            }
        }
    }

    /// Gives the Lease up (a clean shutdown), so a standby need not wait for it to expire.
    pub async fn release(&mut self) {
        let Ok(mut lease) = self.api.get(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.lease(), "released the Lease"),
            Err(e) => warn!(lease = %self.lease(), error = %e, "cannot release the Lease"),
        }
    }

    /// One round: `Ok(true)` when this candidate holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = Timestamp::now();
        let (identity, seconds) = (self.identity.clone(), self.lease.as_secs() as i32);
        let mine = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(acquire.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(mine(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let record = Observed::of(&lease);
        self.observe(&lease);
        let held_by_me = record.holder.as_deref() == Some(self.identity.as_str());
        if !held_by_me && record.holder.is_some() {
            let duration = lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(self.lease);
            let seen = self.observed.as_ref().map(|(_, at)| *at).unwrap();
            if seen.elapsed() < duration {
                return Ok(false);
            }
            debug!(lease = %self.lease(), holder = ?record.holder, "the Lease expired");
        }
        let spec = lease.spec.take().unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        let acquire = held_by_me.then_some(spec.acquire_time).flatten();
        lease.spec = Some(mine(acquire, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            // Someone else wrote the Lease since it was read: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records `lease`; the clock of its expiry starts when its record first changes.
    fn observe(&mut self, lease: &Lease) {
        let record = Observed::of(lease);
        if self.observed.as_ref().map(|(o, _)| o) != Some(&record) {
            self.observed = Some((record, Instant::now()));
        }
    }
}

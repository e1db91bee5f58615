//! Leader election: of two controllers on one Lease, only the holder reconciles; when it dies
//! the other takes over and finishes its runs; a clean shutdown hands the Lease over at once.

mod common;

use common::*;
use std::time::{Duration, Instant};

const MINUTE: Duration = Duration::from_secs(60);

/// `devset_leader` and `devset_reconcile_runs_total` (summed) of a controller's metrics.
fn leader_and_reconciles(port: u16) -> Option<(u64, u64)> {
    let (code, body) = http_get(port, "/metrics").ok()?;
    if code != 200 {
        return None;
    }
    let value = |line: &str| -> u64 {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    let leader = body
        .lines()
        .find(|l| l.starts_with("devset_leader "))
        .map(value)?;
    let reconciles = body
        .lines()
        .filter(|l| l.starts_with("devset_reconcile_runs_total{"))
        .map(value)
        .sum();
    Some((leader, reconciles))
}

fn status(ns: &str, name: &str, path: &str) -> String {
    env().jsonpath(ns, "run", name, path)
}

fn holder(ns: &str, lease: &str) -> String {
    env().jsonpath(ns, "lease", lease, "{.spec.holderIdentity}")
}

#[test]
#[ignore = "needs the test environment: tests/env/up, or run everything with tests/run"]
fn one_of_two_controllers_leads_and_the_other_takes_over_its_runs() {
    install_crds();
    let ns = TestNamespace::new("leader");
    let lease = unique("lease");
    // Several replicas share one store: PostgreSQL.
    let store = env().var("DATABASE_URL").to_owned();
    let ports = [free_port(), free_port()];
    let start = |port: u16| {
        ControllerProcess::start_with_env(
            &ns.name,
            10,
            port,
            &store,
            &[
                ("DEVSET_LEADER_ELECT", "true"),
                ("DEVSET_LEADER_ELECTION_ID", &lease),
                ("DEVSET_LEADER_ELECTION_NAMESPACE", &ns.name),
                ("DEVSET_LEADER_ELECTION_LEASE_SECONDS", "4"),
            ],
        )
    };
    let mut controllers = [Some(start(ports[0])), Some(start(ports[1]))];

    // Exactly one leads.
    let leader = wait_until(MINUTE, "one controller to lead", || {
        let states: Vec<_> = ports.iter().map(|p| leader_and_reconciles(*p)).collect();
        match states.as_slice() {
            [Some((1, _)), Some((0, _))] => Some(0),
            [Some((0, _)), Some((1, _))] => Some(1),
            _ => None,
        }
    });
    let standby = 1 - leader;
    assert!(!holder(&ns.name, &lease).is_empty());

    // The leader runs a paced workflow; the standby does not reconcile at all.
    let topic = unique("leader");
    let total = 3_000;
    env().apply(
        &ns.name,
        &format!(
            "apiVersion: devset.io/v1alpha1\nkind: BrokerConnector\nmetadata: {{name: kafka}}\n\
             spec:\n  kafka: {{bootstrapServers: \"{}\"}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: Workflow\nmetadata: {{name: paced}}\n\
             spec:\n  stages:\n    - name: send\n      publish: {{topic: {topic}, count: {total}, \
             ratePerSecond: 500, payload: \"{{{{ seq }}}}\"}}\n---\n\
             apiVersion: devset.io/v1alpha1\nkind: WorkflowRun\nmetadata: {{name: r1}}\n\
             spec:\n  workflowRef: {{name: paced}}\n  connectorRef: {{name: kafka}}\n",
            env().var("KAFKA_BOOTSTRAP")
        ),
    );
    wait_until(MINUTE, "some messages", || {
        let n: u64 = status(&ns.name, "r1", "{.status.messagesPublished}")
            .parse()
            .unwrap_or(0);
        (n >= 500).then_some(())
    });
    let (_, standby_reconciles) = leader_and_reconciles(ports[standby]).unwrap();
    assert_eq!(standby_reconciles, 0, "the standby reconciled nothing");

    // The leader dies; the standby takes the Lease once it expires and finishes the run.
    controllers[leader].take().unwrap().kill();
    let killed = Instant::now();
    wait_until(MINUTE, "the standby to lead", || {
        matches!(leader_and_reconciles(ports[standby]), Some((1, _))).then_some(())
    });
    eprintln!("takeover after {:?}", killed.elapsed());
    wait_until(2 * MINUTE, "the run to complete", || {
        let phase = status(&ns.name, "r1", "{.status.phase}");
        assert_ne!(phase, "Failed");
        (phase == "Completed").then_some(())
    });
    let published: u64 = status(&ns.name, "r1", "{.status.messagesPublished}")
        .parse()
        .unwrap();
    assert_eq!(published, total);
    let counted: u64 = String::from_utf8_lossy(&env().client("kafka-count", &[&topic]).stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(counted >= total, "{counted} on the broker");

    // A clean shutdown gives the Lease up: no holder, so a new replica need not wait.
    let status = controllers[standby].take().unwrap().terminate();
    assert!(status.success(), "a SIGTERM exit is clean: {status:?}");
    assert_eq!(holder(&ns.name, &lease), "", "the Lease was released");
}

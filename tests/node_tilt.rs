//! The inner loop on the node: `tilt ci` with the repository's `Tiltfile`, building the image
//! without Docker (`DEVSET_TILT_BUILD=script`: a `custom_build` through `tests/env/image`),
//! installs the chart with that image, waits for the operator to be Ready and exits 0; the
//! Deployment runs the image Tilt built; `tilt down` removes the release and leaves the CRDs.

mod common;

use common::*;
use std::process::{Command, Output};

const NAMESPACE: &str = "devset-system";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `tilt ARGS` from the repository with the environment's PATH (tilt, kubectl, helm), its own
/// home, free local ports for the port-forwards, and the image built by the script.
fn tilt(home: &std::path::Path, args: &[&str]) -> Output {
    let release = repo().join("target/release/devset");
    assert!(
        release.exists(),
        "{} is missing: cargo build --release --bin devset (tests/run builds it)",
        release.display()
    );
    let mut cmd: Command = env().command("tilt");
    cmd.args(args)
        .current_dir(repo())
        .env("HOME", home)
        .env("DEVSET_TILT_BUILD", "script")
        .env("DEVSET_IMAGE_BINARY", &release)
        // Only the samples' namespace: other tests' runs are not this operator's business.
        .env("DEVSET_TILT_HELM_SET", "watchNamespaces={default}")
        .env("DEVSET_TILT_API_PORT", free_port().to_string())
        .env("DEVSET_TILT_METRICS_PORT", free_port().to_string())
        .output()
        .expect("tilt runs (tests/env/up … node builds it)")
}

/// Uninstalls what `tilt ci` left, even when the test fails half-way.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        // The samples first, while the operator still runs to release their finalizers.
        env().kubectl(&[
            "delete",
            "-k",
            "config/samples/",
            "-n",
            "default",
            "--ignore-not-found",
            "--timeout=60s",
        ]);
        let out = tilt(&self.0, &["down", "--file", "Tiltfile"]);
        if !out.status.success() {
            eprintln!("tilt down failed: {}", text(&out.stderr));
        }
        env().kubectl(&["delete", "namespace", NAMESPACE, "--wait=false"]);
    }
}

#[test]
#[ignore = "needs the test environment with a node: tests/env/up k8s kafka rabbitmq postgres node; or tests/run"]
fn tilt_ci_builds_the_image_without_docker_and_runs_the_chart_on_the_node() {
    let home = tempfile::tempdir().unwrap();
    let _down = Down(home.path().to_owned());
    let port = free_port().to_string();
    let out = tilt(
        home.path(),
        &[
            "ci",
            "--file",
            "Tiltfile",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--timeout",
            "10m",
        ],
    );
    let log = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "tilt ci failed:\n{log}");

    // The Deployment runs the image Tilt asked the script for, and it is Available.
    let image = env().jsonpath(
        NAMESPACE,
        "deployment",
        "devset-operator",
        "{.spec.template.spec.containers[0].image}",
    );
    assert!(
        image.starts_with("devset/devset-operator:tilt-")
            || image.starts_with("docker.io/devset/devset-operator:tilt-"),
        "the Deployment runs {image:?}, not the image Tilt built:\n{log}"
    );
    let available = env().jsonpath(
        NAMESPACE,
        "deployment",
        "devset-operator",
        "{.status.conditions[?(@.type==\"Available\")].status}",
    );
    assert_eq!(available, "True", "the operator is not Available:\n{log}");
    let tag = image.rsplit(':').next().unwrap();
    let images = Command::new("ctr")
        .args([
            "-a",
            env().var("CONTAINERD_ADDRESS"),
            "-n",
            "k8s.io",
            "images",
            "ls",
            "-q",
        ])
        .output()
        .expect("ctr runs");
    let want = format!("docker.io/devset/devset-operator:{tag}");
    assert!(
        text(&images.stdout).lines().any(|l| l == want),
        "{want} is not in the node's containerd"
    );

    // `tilt down` (in the guard) uninstalls the release; the CRDs stay.
    drop(_down);
    assert!(
        !env()
            .kubectl(&["get", "deployment", "devset-operator", "-n", NAMESPACE])
            .status
            .success(),
        "tilt down left the Deployment"
    );
    env().kubectl_ok(&["get", "crd", "workflowruns.devset.io"]);
}

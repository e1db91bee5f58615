//! devset-operator: runs event-driven workflows against real Kafka and RabbitMQ brokers, driven
//! by the `Workflow` and `WorkflowRun` custom resources of the `devset.io` API group.
#![forbid(unsafe_code)]

pub mod api;
pub mod brokers;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod engine;
pub mod events;
pub mod message;
pub mod server;
pub mod watch;

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
pub mod schedule;
pub mod server;
pub mod watch;

// mimalloc instead of glibc's malloc for the whole binary (and the tests and examples that
// link this crate): a publish stage allocates per message on a tokio worker while librdkafka's
// and tokio's threads free, and glibc's arenas made that about half the engine's CPU, up to
// twice the raw client's cost per message; with mimalloc the engine matches the raw rdkafka
// loop (docs/benchmarks.md). Declaring it takes no unsafe code.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

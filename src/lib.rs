//! eventgate: a Kafka wire-protocol gateway.
//!
//! Clients point `bootstrap.servers` at eventgate; it forwards every request to the real brokers,
//! rewrites broker addresses so clients keep coming back through it, and inspects produced records.
//! See `ARCHITECTURE.md` for the map of modules and the data path.

pub mod asyncapi;
pub mod bench;
pub mod bench_sink;
pub mod cli;
pub mod config;
pub mod hostile;
pub mod http;
pub mod mirror;
pub mod nats;
pub mod offline;
pub mod proxy;
pub mod server;
pub mod specs;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod wire;

//! The test world of the `shared` crate's integration tests and benchmarks, compiled once for
//! all of them (it used to be a module included into every test target).
//!
//! - [`world`]: an isolated table, queues and bucket per test, created on moto from
//!   template.yaml; SDK call counting; ledger assertions.
//! - [`events`]: API Gateway payload-v2 events and their answers.
//! - [`workers`]: the generator and sweeper wired to a mock provider, and deliveries as the
//!   SQS event source mapping makes them.

pub mod events;
pub mod workers;
pub mod world;

pub use events::*;
pub use workers::*;
pub use world::*;

//! `stream-router`: routes the raw events of `context.events.v1` to derived
//! topics by the rules of a file, exactly once through Kafka transactions,
//! and dead-letters what cannot be routed.
//!
//! - [`rules`]: the rules file, its validation and evaluation;
//! - [`router`]: decoding, projection, encoding and dead letters of a batch,
//!   and the target topics' schemas and existence;
//! - [`service`]: the consume → route → commit loop;
//! - [`config`]: the settings.

pub mod config;
pub mod router;
pub mod rules;
pub mod service;

pub use config::Config;

//! `ingest-gateway`: the HTTPS batch endpoint mobile SDKs send their events to.
//!
//! The request path is split by what it touches:
//!
//! - pure, no I/O (always built, fuzzed): [`batch`] (decompression with a
//!   hard limit, the JSON envelope), [`validate`] (every event against the
//!   catalogue, clock-skew correction), [`auth`] (key hashes), [`config`],
//!   [`openapi`], [`sdk`] (request bodies as the SDK builds them),
//!   [`onepass`] (the fast reader: one pass from bytes to an event's parts,
//!   checked against the generic path), and [`pipeline`], which strings them
//!   together for one request body;
//! - the service (feature `server`): [`service`] (HTTP handlers, rate limits,
//!   dedup, backpressure), [`produce`] (Kafka with `acks=all`, waiting for
//!   every delivery report), [`keys`] (the keys file, reloaded on change).

pub mod auth;
pub mod batch;
pub mod config;
pub mod error;
pub mod onepass;
pub mod openapi;
pub mod pipeline;
pub mod sdk;
pub mod validate;

#[cfg(feature = "server")]
pub mod api_error;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod lag;
#[cfg(feature = "server")]
pub mod produce;
#[cfg(feature = "server")]
pub mod service;

pub use config::{Config, Limits};
pub use error::BatchError;
#[cfg(feature = "server")]
pub use service::{start, Running};

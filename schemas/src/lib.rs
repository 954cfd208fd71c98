//! The Avro contract of the context-events platform.
//!
//! The `.avsc` files in `schemas/avro/` are the single source of truth. This
//! crate embeds them and derives everything else from them at run time:
//!
//! - [`catalog`]: the signal catalogue (name, group, type, unit, range, meaning)
//!   read from `context_event.avsc`, used for validation, docs and DDL;
//! - [`event`], [`records`]: the Rust types of the four records;
//! - [`codec`]: lossless conversion of those types to and from Avro binary,
//!   including decoding data written with an older schema version;
//! - [`wire`]: the Confluent wire format (magic byte, schema id, body);
//! - [`reference`]: the generated signal reference in `docs/signals.md`.
//!
//! Adding a signal is a one-line change to `context_event.avsc`: the catalogue,
//! the Rust [`event::Signals`], the codec and the docs follow from it.

pub mod catalog;
pub mod codec;
pub mod compat;
pub mod contract;
pub mod error;
pub mod event;
pub mod records;
pub mod reference;
pub mod sample;
pub mod wire;

pub use apache_avro;
pub use catalog::{catalog, Catalog, SignalKind, SignalSpec};
pub use codec::AvroRecord;
pub use error::SchemaError;
pub use event::{Axes3, ContextEvent, DeviceFacts, Motion, Sdk, SignalValue, Signals};
pub use records::{ActivityTag, ClassProbability, DeadLetter, MotionWindow};

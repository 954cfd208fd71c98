//! The simulated device fleet behind `devicesim`: installs whose signals move
//! as a phone's do ([`life`]), each with an on-disk queue of unsent batches
//! ([`queue`]), sending as the SDK contract says ([`run`]), and the check of
//! what ClickHouse holds against what the fleet was told ([`verify`]).

pub mod life;
pub mod queue;
pub mod run;
pub mod verify;

//! `enrich-activity`: turns accelerometer and gyroscope windows into
//! activities (standing, walking, running…).
//!
//! Built so far, with no I/O:
//! - [`dataset`]: labelled windows from the UEA/sktime `.ts` format;
//! - [`features`]: the feature vector of a window (statistics, correlations,
//!   jerk, spectrum, gravity angles), resampled to the model's rate.
//!
//! The linfa model, `train`/`eval`, `serve` and `replay` come next (see the
//! enrichment issue); until then this crate has no binary.

pub mod dataset;
pub mod features;

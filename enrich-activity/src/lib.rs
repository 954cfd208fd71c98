//! `enrich-activity`: turns accelerometer and gyroscope windows into
//! activities (standing, walking, running…).
//!
//! Built so far, with no I/O below the binary:
//! - [`dataset`]: labelled windows from the UEA/sktime `.ts` format and CSV;
//! - [`features`]: the feature vector of a window (statistics, correlations,
//!   jerk, spectrum, gravity angles), resampled to the model's rate;
//! - [`model`]: a linfa Gaussian naive Bayes model chosen by cross-validation,
//!   its versioned artifact, evaluation.
//!
//! The binary has `train` and `eval`; `serve` and `replay` come next (see
//! the enrichment issue).

pub mod config;
pub mod dataset;
pub mod features;
pub mod model;
pub mod replay;
pub mod serve;

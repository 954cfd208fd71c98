//! `enrich-activity`: tags motion windows with activities using a linfa model,
//! and replays history with new model versions.
//!
//! Not built yet: an empty member of the workspace that the enrichment issue fills.

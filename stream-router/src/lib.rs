//! `stream-router`: routes `context.events.v1` to derived topics by rules and
//! dead-letters what cannot be routed.
//!
//! Not built yet: an empty member of the workspace that a later issue fills.

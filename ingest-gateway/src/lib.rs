//! `ingest-gateway`: the HTTPS batch endpoint of the platform (`POST /v1/batch`).
//!
//! Not built yet: this crate is an empty member of the workspace that the
//! gateway issue fills. See `docs/ARCHITECTURE.md` for its place in the data
//! path and `../shared/SPEC.md` for its contract.

//! The embedded `.avsc` files and the default topics they travel on.

/// `ContextEvent`, the value of `context.events.v1`.
pub const CONTEXT_EVENT_AVSC: &str = include_str!("../avro/context_event.avsc");
/// `MotionWindow`, the value of `context.motion.v1`.
pub const MOTION_WINDOW_AVSC: &str = include_str!("../avro/motion_window.avsc");
/// `ActivityTag`, the value of `context.activity.v1`.
pub const ACTIVITY_TAG_AVSC: &str = include_str!("../avro/activity_tag.avsc");
/// `DeadLetter`, the envelope of dead-lettered records.
pub const DEAD_LETTER_AVSC: &str = include_str!("../avro/dead_letter.avsc");

/// Default topic names (every service lets operators override them).
pub mod topics {
    pub const EVENTS: &str = "context.events.v1";
    pub const MOTION: &str = "context.motion.v1";
    pub const ACTIVITY: &str = "context.activity.v1";
    pub const DEAD_LETTER: &str = "context.deadletter.v1";
    /// The forget ledger: requests to erase an install's data (compacted).
    pub const FORGET: &str = "context.forget.v1";
    pub const SCHEMAS: &str = "_schemas";
}

/// One schema of the contract and where it is registered.
#[derive(Debug, Clone, Copy)]
pub struct ContractSchema {
    /// File name under `schemas/avro/`.
    pub file: &'static str,
    /// Default topic whose values use this schema.
    pub topic: &'static str,
    /// The schema text.
    pub avsc: &'static str,
}

impl ContractSchema {
    /// The TopicNameStrategy subject: `<topic>-value`.
    pub fn subject(&self) -> String {
        format!("{}-value", self.topic)
    }
}

/// Every schema of the contract with its default topic. The dead-letter topic
/// carries original bytes, so its envelope is registered under the
/// `context.dead_letters` table subject rather than the topic's.
pub const SCHEMAS: [ContractSchema; 4] = [
    ContractSchema {
        file: "context_event.avsc",
        topic: topics::EVENTS,
        avsc: CONTEXT_EVENT_AVSC,
    },
    ContractSchema {
        file: "motion_window.avsc",
        topic: topics::MOTION,
        avsc: MOTION_WINDOW_AVSC,
    },
    ContractSchema {
        file: "activity_tag.avsc",
        topic: topics::ACTIVITY,
        avsc: ACTIVITY_TAG_AVSC,
    },
    ContractSchema {
        file: "dead_letter.avsc",
        topic: topics::DEAD_LETTER,
        avsc: DEAD_LETTER_AVSC,
    },
];

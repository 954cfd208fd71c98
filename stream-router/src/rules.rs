//! The rules file: which events go to which topics, as what record.
//!
//! ```toml
//! [[rules]]
//! name = "motion-windows"                     # unique; names the rule in metrics and errors
//! when = [{ field = "motion", op = "present" }]
//! to = [{ topic = "context.motion.v1", project = "MotionWindow" }]
//!
//! [[rules]]
//! name = "low-battery-sample"
//! when = [
//!   { field = "battery_level", op = "<", value = 0.2 },
//!   { field = "network_type", op = "in", value = ["wifi", "cellular"] },
//! ]
//! sample_percent = 10.0                       # the same 10 % of installs every time
//! to = [{ topic = "context.lowbattery.v1" }]  # the whole ContextEvent
//!
//! [[rules]]
//! name = "internal-apps"
//! when = [{ field = "app_id", op = "in", value = ["test-app"] }]
//! drop = "internal traffic"                   # stops here: later rules never see it
//!
//! [default]                                   # when no rule routed or dropped the event
//! drop = "no rule matched"                    # or: to = [{ topic = "..." }]
//! ```
//!
//! Rules are tried in order. Every rule whose conditions all hold (and whose
//! sample takes the install) fires: a routing rule adds its targets and the
//! next rule is tried; a `drop` rule drops the event with its reason and ends
//! the evaluation, even if earlier rules fired. An event no rule fired for
//! takes the `[default]` (drop, reason "no rule matched", when absent).

use std::collections::BTreeSet;
use std::fmt;

use context_schemas::catalog::{catalog, SignalKind};
use context_schemas::{ContextEvent, SignalValue};
use serde::Deserialize;

/// The rules file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub default: Option<ActionSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
    /// Keep only this share of installs (0–100), chosen by a hash of
    /// `install_id`: the same installs every time, on every replica.
    pub sample_percent: Option<f64>,
    #[serde(default)]
    pub to: Vec<TargetSpec>,
    pub drop: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    #[serde(default)]
    pub to: Vec<TargetSpec>,
    pub drop: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    pub field: String,
    pub op: String,
    pub value: Option<toml::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub topic: String,
    /// `ContextEvent` (the default: the whole event) or `MotionWindow`.
    pub project: Option<String>,
}

/// What a target receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    /// The whole event, re-encoded only when it was written with an older schema.
    ContextEvent,
    /// The event's motion samples (events without motion are dead-lettered).
    MotionWindow,
}

impl Projection {
    pub const NAMES: &'static str = "ContextEvent, MotionWindow";

    fn parse(s: Option<&str>) -> Option<Self> {
        match s {
            None | Some("ContextEvent") => Some(Projection::ContextEvent),
            Some("MotionWindow") => Some(Projection::MotionWindow),
            Some(_) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Projection::ContextEvent => "ContextEvent",
            Projection::MotionWindow => "MotionWindow",
        }
    }
}

/// One output of the router: a topic and what it receives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub topic: String,
    pub projection: Projection,
}

/// A field a condition can read.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    Signal {
        index: usize,
        kind: SignalKind,
    },
    AppId,
    InstallId,
    SessionId,
    SdkName,
    SdkVersion,
    DeviceModel,
    OsName,
    OsVersion,
    /// A further device fact by name (`device.<name>`).
    DeviceExtra(String),
    Motion,
}

impl Field {
    const ENVELOPE: &'static str =
        "app_id, install_id, session_id, sdk.name, sdk.version, device.model, device.os_name, device.os_version, device.<fact>, motion";

    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "app_id" => Field::AppId,
            "install_id" => Field::InstallId,
            "session_id" => Field::SessionId,
            "sdk.name" => Field::SdkName,
            "sdk.version" => Field::SdkVersion,
            "device.model" => Field::DeviceModel,
            "device.os_name" => Field::OsName,
            "device.os_version" => Field::OsVersion,
            "motion" => Field::Motion,
            other => match other.strip_prefix("device.") {
                Some(fact) if !fact.is_empty() => Field::DeviceExtra(fact.to_owned()),
                _ => {
                    let spec = catalog().get(other)?;
                    Field::Signal {
                        index: spec.index,
                        kind: spec.kind,
                    }
                }
            },
        })
    }

    /// The type of the field's values.
    fn kind(&self) -> SignalKind {
        match self {
            Field::Signal { kind, .. } => *kind,
            Field::Motion => SignalKind::Boolean,
            _ => SignalKind::String,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Present,
    Absent,
}

impl Op {
    const NAMES: &'static str = "==, !=, <, <=, >, >=, in, not_in, present, absent";

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "==" | "=" | "eq" => Op::Eq,
            "!=" | "ne" => Op::Ne,
            "<" | "lt" => Op::Lt,
            "<=" | "le" => Op::Le,
            ">" | "gt" => Op::Gt,
            ">=" | "ge" => Op::Ge,
            "in" => Op::In,
            "not_in" | "not in" => Op::NotIn,
            "present" => Op::Present,
            "absent" => Op::Absent,
            _ => return None,
        })
    }
}

/// A constant a field is compared with.
#[derive(Debug, Clone, PartialEq)]
enum Constant {
    Number(f64),
    Bool(bool),
    Text(String),
}

#[derive(Debug, Clone)]
struct Condition {
    field: Field,
    op: Op,
    values: Vec<Constant>,
}

/// The compiled rules.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
    targets: Vec<Target>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    conditions: Vec<Condition>,
    /// Out of 10,000.
    sample: Option<u32>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Route(Vec<usize>),
    Drop(String),
}

/// A problem found in a rules file; `Display` names the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub rule: String,
    pub field: Option<String>,
    pub problem: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "rule `{}`, field `{}`: {}", self.rule, field, self.problem),
            None => write!(f, "rule `{}`: {}", self.rule, self.problem),
        }
    }
}

/// Every problem of a rules file, one per line.
#[derive(Debug, Clone)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}

/// What the rules decided for one event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Indices into [`Rules::targets`], each at most once.
    pub targets: Vec<usize>,
    /// Names of the rules that fired, in order.
    pub fired: Vec<String>,
    /// Set when the event is dropped, with the reason.
    pub dropped: Option<String>,
}

impl Rules {
    /// Reads and validates a rules file; every problem is reported.
    pub fn parse(text: &str) -> Result<Rules, RuleErrors> {
        let file: RulesFile = toml::from_str(text).map_err(|e| {
            RuleErrors(vec![RuleError {
                rule: "(file)".into(),
                field: None,
                problem: e.to_string().trim().to_owned(),
            }])
        })?;
        Rules::compile(&file)
    }

    pub fn compile(file: &RulesFile) -> Result<Rules, RuleErrors> {
        let mut errors = Vec::new();
        let mut targets: Vec<Target> = Vec::new();
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(file.rules.len());
        for (i, spec) in file.rules.iter().enumerate() {
            let rule_name = if spec.name.trim().is_empty() {
                format!("#{}", i + 1)
            } else {
                spec.name.clone()
            };
            let err = |field: Option<&str>, problem: String| RuleError {
                rule: rule_name.clone(),
                field: field.map(str::to_owned),
                problem,
            };
            if spec.name.trim().is_empty() {
                errors.push(err(None, "has no name".into()));
            } else if !names.insert(spec.name.clone()) {
                errors.push(err(None, "the name is used by an earlier rule".into()));
            }
            let mut conditions = Vec::new();
            for c in &spec.when {
                match compile_condition(c) {
                    Ok(c) => conditions.push(c),
                    Err(problem) => errors.push(err(Some(&c.field), problem)),
                }
            }
            let sample = match spec.sample_percent {
                None => None,
                Some(p) if (0.0..=100.0).contains(&p) => Some((p * 100.0).round() as u32),
                Some(p) => {
                    errors.push(err(Some("sample_percent"), format!("{p} is not between 0 and 100")));
                    None
                }
            };
            match compile_action(&spec.to, spec.drop.as_deref(), &mut targets) {
                Ok(action) => rules.push(Rule {
                    name: rule_name.clone(),
                    conditions,
                    sample,
                    action,
                }),
                Err((field, problem)) => errors.push(err(Some(field), problem)),
            }
        }
        let default = match &file.default {
            None => Action::Drop("no rule matched".into()),
            Some(a) => match compile_action(&a.to, a.drop.as_deref(), &mut targets) {
                Ok(action) => action,
                Err((field, problem)) => {
                    errors.push(RuleError {
                        rule: "[default]".into(),
                        field: Some(field.into()),
                        problem,
                    });
                    Action::Drop(String::new())
                }
            },
        };
        if errors.is_empty() {
            Ok(Rules {
                rules,
                default,
                targets,
            })
        } else {
            Err(RuleErrors(errors))
        }
    }

    /// Every distinct target the rules can route to.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The names of the rules, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Decides where `event` goes.
    pub fn evaluate(&self, event: &ContextEvent) -> Decision {
        let mut d = Decision::default();
        for rule in &self.rules {
            if !rule.conditions.iter().all(|c| c.holds(event)) {
                continue;
            }
            if let Some(share) = rule.sample {
                if sample_bucket(event.install_id.as_bytes()) >= share {
                    continue;
                }
            }
            d.fired.push(rule.name.clone());
            match &rule.action {
                Action::Drop(reason) => {
                    d.targets.clear();
                    d.dropped = Some(reason.clone());
                    return d;
                }
                Action::Route(ts) => {
                    for t in ts {
                        if !d.targets.contains(t) {
                            d.targets.push(*t);
                        }
                    }
                }
            }
        }
        if d.fired.is_empty() {
            match &self.default {
                Action::Drop(reason) => d.dropped = Some(reason.clone()),
                Action::Route(ts) => d.targets.clone_from(ts),
            }
        }
        d
    }
}

/// Where an install falls in 0..10,000: FNV-1a of its id, stable across
/// processes, replicas and releases.
pub fn sample_bucket(install_id: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in install_id {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 10_000) as u32
}

fn compile_action(
    to: &[TargetSpec],
    drop: Option<&str>,
    targets: &mut Vec<Target>,
) -> Result<Action, (&'static str, String)> {
    match (to.is_empty(), drop) {
        (false, Some(_)) => Err(("drop", "a rule either routes (`to`) or drops (`drop`), not both".into())),
        (true, None) => Err((
            "to",
            "no action: give `to = [{ topic = \"...\" }]` or `drop = \"reason\"`".into(),
        )),
        (true, Some(reason)) if reason.trim().is_empty() => Err(("drop", "the reason is empty".into())),
        (true, Some(reason)) => Ok(Action::Drop(reason.to_owned())),
        (false, None) => {
            let mut indices = Vec::new();
            for t in to {
                if !valid_topic_name(&t.topic) {
                    return Err((
                        "to.topic",
                        format!("`{}` is not a Kafka topic name (1–249 of a-z A-Z 0-9 . _ -)", t.topic),
                    ));
                }
                let Some(projection) = Projection::parse(t.project.as_deref()) else {
                    return Err((
                        "to.project",
                        format!(
                            "unknown record type `{}` (known: {})",
                            t.project.as_deref().unwrap_or_default(),
                            Projection::NAMES
                        ),
                    ));
                };
                let target = Target {
                    topic: t.topic.clone(),
                    projection,
                };
                if let Some(other) = targets
                    .iter()
                    .find(|o| o.topic == target.topic && o.projection != projection)
                {
                    return Err((
                        "to.project",
                        format!(
                            "topic `{}` already receives {} from another rule; one topic holds one record type",
                            t.topic,
                            other.projection.name()
                        ),
                    ));
                }
                let index = match targets.iter().position(|o| *o == target) {
                    Some(i) => i,
                    None => {
                        targets.push(target);
                        targets.len() - 1
                    }
                };
                if !indices.contains(&index) {
                    indices.push(index);
                }
            }
            Ok(Action::Route(indices))
        }
    }
}

fn valid_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn compile_condition(c: &ConditionSpec) -> Result<Condition, String> {
    let field = Field::parse(&c.field).ok_or_else(|| {
        format!(
            "no such field: not a signal of the catalogue (docs/signals.md) nor one of {}",
            Field::ENVELOPE
        )
    })?;
    let op = Op::parse(&c.op).ok_or_else(|| format!("unknown op `{}` (known: {})", c.op, Op::NAMES))?;
    let kind = field.kind();
    if matches!(field, Field::Motion) && !matches!(op, Op::Present | Op::Absent) {
        return Err("`motion` takes only `present` or `absent`".into());
    }
    let values = match (op, &c.value) {
        (Op::Present | Op::Absent, None) => Vec::new(),
        (Op::Present | Op::Absent, Some(_)) => return Err(format!("`{}` takes no value", c.op)),
        (_, None) => return Err(format!("`{}` needs a value", c.op)),
        (Op::In | Op::NotIn, Some(toml::Value::Array(items))) => {
            if items.is_empty() {
                return Err(format!("`{}` needs at least one value", c.op));
            }
            items.iter().map(|v| constant(kind, v)).collect::<Result<_, _>>()?
        }
        (Op::In | Op::NotIn, Some(_)) => return Err(format!("`{}` takes a list such as [\"a\", \"b\"]", c.op)),
        (_, Some(v)) => vec![constant(kind, v)?],
    };
    if matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge) && !matches!(kind, SignalKind::Double | SignalKind::Long) {
        return Err(format!(
            "`{}` compares numbers, and this field holds {}",
            c.op,
            kind_name(kind)
        ));
    }
    Ok(Condition { field, op, values })
}

fn kind_name(kind: SignalKind) -> &'static str {
    match kind {
        SignalKind::Double | SignalKind::Long => "numbers",
        SignalKind::Boolean => "true/false",
        SignalKind::String => "text",
    }
}

fn constant(kind: SignalKind, v: &toml::Value) -> Result<Constant, String> {
    match (kind, v) {
        (SignalKind::Double | SignalKind::Long, toml::Value::Integer(i)) => Ok(Constant::Number(*i as f64)),
        (SignalKind::Double | SignalKind::Long, toml::Value::Float(f)) => Ok(Constant::Number(*f)),
        (SignalKind::Boolean, toml::Value::Boolean(b)) => Ok(Constant::Bool(*b)),
        (SignalKind::String, toml::Value::String(s)) => Ok(Constant::Text(s.clone())),
        (kind, other) => Err(format!(
            "the value {other} does not fit this field, which holds {}",
            kind_name(kind)
        )),
    }
}

impl Condition {
    fn holds(&self, e: &ContextEvent) -> bool {
        let value: Option<Constant> = match &self.field {
            Field::Signal { index, .. } => e.signals.at(*index).map(|v| match v {
                SignalValue::Double(d) => Constant::Number(*d),
                SignalValue::Long(l) => Constant::Number(*l as f64),
                SignalValue::Boolean(b) => Constant::Bool(*b),
                SignalValue::String(s) => Constant::Text(s.clone()),
            }),
            Field::AppId => Some(Constant::Text(e.app_id.clone())),
            Field::InstallId => Some(Constant::Text(e.install_id.to_string())),
            Field::SessionId => Some(Constant::Text(e.session_id.to_string())),
            Field::SdkName => Some(Constant::Text(e.sdk.name.clone())),
            Field::SdkVersion => Some(Constant::Text(e.sdk.version.clone())),
            Field::DeviceModel => Some(Constant::Text(e.device.model.clone())),
            Field::OsName => Some(Constant::Text(e.device.os_name.clone())),
            Field::OsVersion => Some(Constant::Text(e.device.os_version.clone())),
            Field::DeviceExtra(name) => e.device.extra.get(name).map(|v| Constant::Text(v.clone())),
            Field::Motion => e
                .motion
                .as_ref()
                .filter(|m| !m.accelerometer.is_empty())
                .map(|_| Constant::Bool(true)),
        };
        let Some(value) = value else {
            // An absent value satisfies only `absent` and `not_in`/`!=`.
            return matches!(self.op, Op::Absent | Op::NotIn | Op::Ne);
        };
        let first = self.values.first();
        match self.op {
            Op::Present => true,
            Op::Absent => false,
            Op::Eq => first == Some(&value),
            Op::Ne => first != Some(&value),
            Op::In => self.values.contains(&value),
            Op::NotIn => !self.values.contains(&value),
            Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                let (Constant::Number(v), Some(Constant::Number(c))) = (&value, first) else {
                    return false;
                };
                match self.op {
                    Op::Lt => v < c,
                    Op::Le => v <= c,
                    Op::Gt => v > c,
                    _ => v >= c,
                }
            }
        }
    }
}

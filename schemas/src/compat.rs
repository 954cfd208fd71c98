//! Schema compatibility by Avro's reader/writer resolution rules.
//!
//! [`can_read`] answers whether data written with `writer` can be read with
//! `reader`, and when not, names the field that breaks and why. The
//! compatibility levels of the Confluent Schema Registry are built on it in
//! [`check`]: BACKWARD means the new schema reads data written with older
//! ones, FORWARD that older schemas read data written with the new one, FULL
//! both; the `_TRANSITIVE` variants check every earlier version instead of
//! only the latest.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use apache_avro::schema::{InnerDecimalSchema, Name, RecordSchema, UuidSchema};
use apache_avro::Schema;

/// A compatibility level, as named by the Confluent Schema Registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    pub const ALL: [Compatibility; 7] = [
        Compatibility::None,
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive | Compatibility::ForwardTransitive | Compatibility::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compatibility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compatibility::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown compatibility level `{s}`; expected one of {}",
                    Compatibility::ALL.map(Compatibility::as_str).join(", ")
                )
            })
    }
}

/// Checks `new` against the existing versions of a subject (oldest first)
/// under `level`. Returns one message per problem; empty means compatible.
pub fn check(level: Compatibility, new: &Schema, existing: &[&Schema]) -> Vec<String> {
    let against: &[&Schema] = match (level, existing) {
        (Compatibility::None, _) | (_, []) => return Vec::new(),
        (l, all) if l.transitive() => all,
        (_, all) => &all[all.len() - 1..],
    };
    let count = existing.len();
    let mut problems = Vec::new();
    for (i, old) in against.iter().enumerate() {
        let version = count - against.len() + i + 1;
        if level.backward() {
            if let Err(e) = can_read(old, new) {
                problems.push(format!(
                    "the new schema cannot read data written with version {version}: {e}"
                ));
            }
        }
        if level.forward() {
            if let Err(e) = can_read(new, old) {
                problems.push(format!(
                    "version {version} cannot read data written with the new schema: {e}"
                ));
            }
        }
    }
    problems
}

/// Whether data written with `writer` can be read with `reader`.
pub fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    let checker = Checker {
        writer_names: named_types(writer),
        reader_names: named_types(reader),
        seen: RefCell::new(HashSet::new()),
    };
    checker.check(writer, reader, "")
}

struct Checker<'a> {
    writer_names: HashMap<String, &'a Schema>,
    reader_names: HashMap<String, &'a Schema>,
    /// Record pairs already being checked, so recursive types terminate.
    seen: RefCell<HashSet<(String, String)>>,
}

/// Every named type (record, enum, fixed) of a schema by full name.
fn named_types(schema: &Schema) -> HashMap<String, &Schema> {
    fn walk<'a>(s: &'a Schema, out: &mut HashMap<String, &'a Schema>) {
        match s {
            Schema::Record(r) => {
                out.insert(r.name.fullname(None), s);
                for f in &r.fields {
                    walk(&f.schema, out);
                }
            }
            Schema::Enum(e) => {
                out.insert(e.name.fullname(None), s);
            }
            Schema::Fixed(f) => {
                out.insert(f.name.fullname(None), s);
            }
            Schema::Array(a) => walk(&a.items, out),
            Schema::Map(m) => walk(&m.types, out),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = HashMap::new();
    walk(schema, &mut out);
    out
}

/// The primitive an Avro logical type is stored as, for resolution purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Complex,
}

fn base(s: &Schema) -> Base {
    match s {
        Schema::Null => Base::Null,
        Schema::Boolean => Base::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Base::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Base::Long,
        Schema::Float => Base::Float,
        Schema::Double => Base::Double,
        Schema::Bytes | Schema::BigDecimal => Base::Bytes,
        Schema::String | Schema::Uuid(UuidSchema::String) => Base::String,
        Schema::Uuid(UuidSchema::Bytes) => Base::Bytes,
        Schema::Decimal(d) => match d.inner {
            InnerDecimalSchema::Bytes => Base::Bytes,
            InnerDecimalSchema::Fixed(_) => Base::Complex,
        },
        _ => Base::Complex,
    }
}

fn type_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Enum(e) => format!("enum {}", e.name.name()),
        Schema::Fixed(f) => format!("fixed {}({})", f.name.name(), f.size),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Union(_) => "union".into(),
        Schema::Ref { name } => name.name().to_string(),
        other => format!("{:?}", base(other)).to_lowercase(),
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        "at the top level".into()
    } else {
        format!("field `{path}`")
    }
}

fn promotes(writer: Base, reader: Base) -> bool {
    use Base::*;
    writer == reader
        || matches!(
            (writer, reader),
            (Int, Long)
                | (Int, Float)
                | (Int, Double)
                | (Long, Float)
                | (Long, Double)
                | (Float, Double)
                | (String, Bytes)
                | (Bytes, String)
        )
}

impl<'a> Checker<'a> {
    fn check(&self, writer: &Schema, reader: &Schema, path: &str) -> Result<(), String> {
        let writer = deref(writer, &self.writer_names);
        let reader = deref(reader, &self.reader_names);
        match (writer, reader) {
            (Schema::Union(w), _) => {
                // Every branch the writer may have used must be readable.
                for branch in w.variants() {
                    self.check(branch, reader, path)
                        .map_err(|e| format!("{e} (writer union branch {})", type_name(branch)))?;
                }
                Ok(())
            }
            (_, Schema::Union(r)) => {
                for branch in r.variants() {
                    if self.check(writer, branch, path).is_ok() {
                        return Ok(());
                    }
                }
                Err(format!(
                    "{}: the reader's union has no branch that can read the writer's {}",
                    at(path),
                    type_name(writer)
                ))
            }
            (Schema::Record(w), Schema::Record(r)) => self.records(w, r, path),
            (Schema::Enum(w), Schema::Enum(r)) => {
                if w.name.name() != r.name.name() {
                    return Err(format!(
                        "{}: enum {} cannot be read as enum {}",
                        at(path),
                        w.name.name(),
                        r.name.name()
                    ));
                }
                if r.default.is_some() {
                    return Ok(());
                }
                let missing: Vec<&str> = w
                    .symbols
                    .iter()
                    .filter(|s| !r.symbols.contains(s))
                    .map(String::as_str)
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: the reader's enum {} lacks the symbols {} and has no default",
                        at(path),
                        r.name.name(),
                        missing.join(", ")
                    ))
                }
            }
            (Schema::Fixed(w), Schema::Fixed(r)) => {
                if w.name.name() != r.name.name() || w.size != r.size {
                    Err(format!(
                        "{}: fixed {}({}) cannot be read as fixed {}({})",
                        at(path),
                        w.name.name(),
                        w.size,
                        r.name.name(),
                        r.size
                    ))
                } else {
                    Ok(())
                }
            }
            (Schema::Array(w), Schema::Array(r)) => self.check(&w.items, &r.items, &format!("{path}[]")),
            (Schema::Map(w), Schema::Map(r)) => self.check(&w.types, &r.types, &format!("{path}{{}}")),
            (w, r) => {
                let (bw, br) = (base(w), base(r));
                if bw != Base::Complex && br != Base::Complex && promotes(bw, br) {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: the reader's {} cannot read the writer's {}",
                        at(path),
                        type_name(r),
                        type_name(w)
                    ))
                }
            }
        }
    }

    fn records(&self, w: &RecordSchema, r: &RecordSchema, path: &str) -> Result<(), String> {
        let aliases_match = r
            .aliases
            .as_ref()
            .is_some_and(|a| a.iter().any(|alias| alias.name() == w.name.name()));
        if w.name.name() != r.name.name() && !aliases_match {
            return Err(format!(
                "{}: record {} cannot be read as record {}",
                at(path),
                w.name.name(),
                r.name.name()
            ));
        }
        if !self
            .seen
            .borrow_mut()
            .insert((w.name.fullname(None), format!("{}@{path}", r.name.fullname(None))))
        {
            return Ok(());
        }
        for rf in &r.fields {
            let field_path = if path.is_empty() {
                rf.name.clone()
            } else {
                format!("{path}.{}", rf.name)
            };
            let wf = w
                .fields
                .iter()
                .find(|wf| wf.name == rf.name || rf.aliases.iter().any(|alias| alias == &wf.name));
            match wf {
                Some(wf) => self.check(&wf.schema, &rf.schema, &field_path)?,
                None if rf.default.is_some() => {}
                None => {
                    return Err(format!(
                        "field `{field_path}` is missing from the writer's schema and has no default in the reader's"
                    ))
                }
            }
        }
        Ok(())
    }
}

fn deref<'s>(s: &'s Schema, names: &HashMap<String, &'s Schema>) -> &'s Schema {
    match s {
        Schema::Ref { name } => lookup(names, name).unwrap_or(s),
        other => other,
    }
}

fn lookup<'a>(names: &HashMap<String, &'a Schema>, name: &Name) -> Option<&'a Schema> {
    names
        .get(&name.fullname(None))
        .or_else(|| {
            names
                .values()
                .find(|s| matches!(s, Schema::Record(r) if r.name.name() == name.name()))
        })
        .copied()
}

//! The compatibility matrix: schema pairs under every level, decided by Avro's
//! reader/writer resolution rules.

use context_schemas::apache_avro::Schema;
use context_schemas::compat::{can_read, check, Compatibility};

fn rec(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#)
}

fn parse(s: &str) -> Schema {
    Schema::parse_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// (case, old schema, new schema, new reads old (backward), old reads new (forward))
fn pairs() -> Vec<(&'static str, String, String, bool, bool)> {
    let e = |syms: &str, default: &str| {
        rec(&format!(
            r#"{{"name":"e","type":{{"type":"enum","name":"E","symbols":[{syms}]{default}}}}}"#
        ))
    };
    vec![
        (
            "identical",
            rec(r#"{"name":"a","type":"int"}"#),
            rec(r#"{"name":"a","type":"int"}"#),
            true,
            true,
        ),
        (
            "add field with default",
            rec(r#"{"name":"a","type":"int"}"#),
            rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#),
            true,
            true,
        ),
        (
            "add field without default",
            rec(r#"{"name":"a","type":"int"}"#),
            rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#),
            false,
            true,
        ),
        (
            "remove field with default",
            rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#),
            rec(r#"{"name":"a","type":"int"}"#),
            true,
            true,
        ),
        (
            "remove field without default",
            rec(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#),
            rec(r#"{"name":"a","type":"int"}"#),
            true,
            false,
        ),
        (
            "int to long",
            rec(r#"{"name":"a","type":"int"}"#),
            rec(r#"{"name":"a","type":"long"}"#),
            true,
            false,
        ),
        (
            "long to int",
            rec(r#"{"name":"a","type":"long"}"#),
            rec(r#"{"name":"a","type":"int"}"#),
            false,
            true,
        ),
        (
            "int to float",
            rec(r#"{"name":"a","type":"int"}"#),
            rec(r#"{"name":"a","type":"float"}"#),
            true,
            false,
        ),
        (
            "long to double",
            rec(r#"{"name":"a","type":"long"}"#),
            rec(r#"{"name":"a","type":"double"}"#),
            true,
            false,
        ),
        (
            "float to double",
            rec(r#"{"name":"a","type":"float"}"#),
            rec(r#"{"name":"a","type":"double"}"#),
            true,
            false,
        ),
        (
            "double to float",
            rec(r#"{"name":"a","type":"double"}"#),
            rec(r#"{"name":"a","type":"float"}"#),
            false,
            true,
        ),
        (
            "string to bytes",
            rec(r#"{"name":"a","type":"string"}"#),
            rec(r#"{"name":"a","type":"bytes"}"#),
            true,
            true,
        ),
        (
            "bytes to string",
            rec(r#"{"name":"a","type":"bytes"}"#),
            rec(r#"{"name":"a","type":"string"}"#),
            true,
            true,
        ),
        (
            "string to int",
            rec(r#"{"name":"a","type":"string"}"#),
            rec(r#"{"name":"a","type":"int"}"#),
            false,
            false,
        ),
        (
            "enum gains a symbol",
            e(r#""A","B""#, ""),
            e(r#""A","B","C""#, ""),
            true,
            false,
        ),
        (
            "enum loses a symbol",
            e(r#""A","B","C""#, ""),
            e(r#""A","B""#, ""),
            false,
            true,
        ),
        (
            "enum loses a symbol, reader default",
            e(r#""A","B","C""#, ""),
            e(r#""A","B""#, r#","default":"A""#),
            true,
            true,
        ),
        (
            "union gains a branch",
            rec(r#"{"name":"a","type":["null","string"]}"#),
            rec(r#"{"name":"a","type":["null","string","long"]}"#),
            true,
            false,
        ),
        (
            "union loses a branch",
            rec(r#"{"name":"a","type":["null","string","long"]}"#),
            rec(r#"{"name":"a","type":["null","string"]}"#),
            false,
            true,
        ),
        (
            "plain type becomes nullable",
            rec(r#"{"name":"a","type":"string"}"#),
            rec(r#"{"name":"a","type":["null","string"],"default":null}"#),
            true,
            false,
        ),
        (
            "nullable becomes plain",
            rec(r#"{"name":"a","type":["null","string"],"default":null}"#),
            rec(r#"{"name":"a","type":"string"}"#),
            false,
            true,
        ),
        (
            "nested record field changes type",
            rec(r#"{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"count","type":"int"}]}}"#),
            rec(r#"{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"count","type":"string"}]}}"#),
            false,
            false,
        ),
        (
            "nested record gains a defaulted field",
            rec(r#"{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"c","type":"int"}]}}"#),
            rec(
                r#"{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"c","type":"int"},{"name":"d","type":"int","default":0}]}}"#,
            ),
            true,
            true,
        ),
        (
            "array items int to long",
            rec(r#"{"name":"a","type":{"type":"array","items":"int"}}"#),
            rec(r#"{"name":"a","type":{"type":"array","items":"long"}}"#),
            true,
            false,
        ),
        (
            "map values float to double",
            rec(r#"{"name":"a","type":{"type":"map","values":"float"}}"#),
            rec(r#"{"name":"a","type":{"type":"map","values":"double"}}"#),
            true,
            false,
        ),
        (
            "array becomes map",
            rec(r#"{"name":"a","type":{"type":"array","items":"int"}}"#),
            rec(r#"{"name":"a","type":{"type":"map","values":"int"}}"#),
            false,
            false,
        ),
        (
            "record renamed",
            r#"{"type":"record","name":"A","fields":[{"name":"a","type":"int"}]}"#.to_string(),
            r#"{"type":"record","name":"B","fields":[{"name":"a","type":"int"}]}"#.to_string(),
            false,
            false,
        ),
        (
            "fixed changes size",
            rec(r#"{"name":"f","type":{"type":"fixed","name":"F","size":4}}"#),
            rec(r#"{"name":"f","type":{"type":"fixed","name":"F","size":8}}"#),
            false,
            false,
        ),
        (
            "field renamed with an alias",
            rec(r#"{"name":"a","type":"int"}"#),
            rec(r#"{"name":"b","type":"int","aliases":["a"]}"#),
            true,
            false,
        ),
        (
            "timestamp-micros to long",
            rec(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}"#),
            rec(r#"{"name":"t","type":"long"}"#),
            true,
            true,
        ),
    ]
}

#[test]
fn matrix_holds_under_every_level() {
    let pairs = pairs();
    assert!(pairs.len() >= 25);
    for (case, old, new, backward, forward) in pairs {
        let (old, new) = (parse(&old), parse(&new));
        assert_eq!(can_read(&old, &new).is_ok(), backward, "{case}: backward");
        assert_eq!(can_read(&new, &old).is_ok(), forward, "{case}: forward");
        for level in Compatibility::ALL {
            let expected = match level {
                Compatibility::None => true,
                Compatibility::Backward | Compatibility::BackwardTransitive => backward,
                Compatibility::Forward | Compatibility::ForwardTransitive => forward,
                Compatibility::Full | Compatibility::FullTransitive => backward && forward,
            };
            let problems = check(level, &new, &[&old]);
            assert_eq!(problems.is_empty(), expected, "{case} under {level}: {problems:?}");
        }
    }
}

#[test]
fn transitive_levels_check_every_earlier_version() {
    let v1 = parse(&rec(r#"{"name":"f1","type":"int"}"#));
    let v2 = parse(&rec(
        r#"{"name":"f1","type":"int"},{"name":"f2","type":"string","default":"d"}"#,
    ));
    let v3 = parse(&rec(r#"{"name":"f2","type":"string"}"#));
    assert!(check(Compatibility::Backward, &v3, &[&v1, &v2]).is_empty());
    let problems = check(Compatibility::BackwardTransitive, &v3, &[&v1, &v2]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("version 1") && problems[0].contains("field `f2`"),
        "{problems:?}"
    );
    assert!(!check(Compatibility::FullTransitive, &v3, &[&v1, &v2]).is_empty());
}

#[test]
fn messages_name_the_field_that_broke() {
    let (old, new) = (
        parse(&rec(
            r#"{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"count","type":"int"}]}}"#,
        )),
        parse(&rec(
            r#"{"name":"n","type":{"type":"record","name":"N","fields":[{"name":"count","type":"string"}]}}"#,
        )),
    );
    let err = can_read(&old, &new).unwrap_err();
    assert!(
        err.contains("field `n.count`") && err.contains("string") && err.contains("int"),
        "{err}"
    );
    let added = parse(&rec(r#"{"name":"n","type":"int"},{"name":"extra","type":"long"}"#));
    let err = can_read(&parse(&rec(r#"{"name":"n","type":"int"}"#)), &added).unwrap_err();
    assert!(err.contains("field `extra`") && err.contains("no default"), "{err}");
}

#[test]
fn the_contract_evolves_compatibly_when_a_signal_is_added() {
    use context_schemas::{AvroRecord, ContextEvent};
    let current = ContextEvent::schema();
    let next = context_schemas::sample::edit_signal_groups(|groups| {
        groups[0]["type"]["fields"].as_array_mut().unwrap().push(serde_json::json!(
            {"name": "new_signal", "type": ["null", "double"], "default": null, "doc": "d", "unit": "u", "min": 0, "max": 1}
        ))
    });
    let next = Schema::parse_str(&next).unwrap();
    assert!(check(Compatibility::FullTransitive, &next, &[current]).is_empty());
}

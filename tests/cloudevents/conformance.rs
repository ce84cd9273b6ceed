//! CloudEvents 1.0 conformance of one event in the JSON format: the official JSON Schema
//! (`../shared/conformance/cloudevents.json`, draft-07) with format checks on, plus the rules the
//! schema leaves out (`../shared/conformance/README.md`). Shared by the unit tests of the mirror
//! (`src/mirror/tests.rs`) and the end-to-end test (`tests/cloudevents.rs`).

use serde_json::Value;

/// The official schema, compiled with `uri`, `uri-reference` and `date-time` checked.
pub fn validator() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/conformance/cloudevents.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::draft7::options().should_validate_formats(true).build(&schema).expect("the schema compiles")
}

/// Everything that keeps `event` from being a valid CloudEvent 1.0 (empty: it is one).
pub fn problems(validator: &jsonschema::Validator, event: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        validator.iter_errors(event).map(|e| format!("schema at {}: {e}", e.instance_path())).collect();
    let Some(object) = event.as_object() else {
        out.push("not a JSON object".into());
        return out;
    };
    if object.get("specversion") != Some(&Value::from("1.0")) {
        out.push(format!("specversion is {:?}, not \"1.0\"", object.get("specversion")));
    }
    if object.contains_key("data") && object.contains_key("data_base64") {
        out.push("both data and data_base64".into());
    }
    for (name, value) in object {
        if name == "data" || name == "data_base64" {
            continue;
        }
        if !(1..=20).contains(&name.len()) || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            out.push(format!("attribute name {name:?} is not [a-z0-9]{{1,20}}"));
        }
        // CloudEvents types in JSON: String (and the string-encoded types), Boolean, Integer.
        match value {
            Value::String(_) | Value::Bool(_) => {}
            Value::Number(n) => {
                if n.as_i64().is_none_or(|i| i32::try_from(i).is_err()) {
                    out.push(format!("{name} = {n} is not a 32-bit Integer"));
                }
            }
            // The schema allows null for optional attributes; it means absent.
            Value::Null => {}
            other => out.push(format!("{name} = {other} is not a CloudEvents attribute value")),
        }
    }
    out
}

/// Panics with every problem of every event that is not a valid CloudEvent 1.0.
pub fn assert_all_conform(validator: &jsonschema::Validator, events: &[Value]) {
    let failures: Vec<String> = events
        .iter()
        .filter_map(|e| {
            let p = problems(validator, e);
            (!p.is_empty()).then(|| format!("{e}\n  {}", p.join("\n  ")))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} events are not valid CloudEvents:\n{}",
        failures.len(),
        events.len(),
        failures.join("\n")
    );
}

//! The JSON Schema of the file, generated from the model's types and doc comments.

use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use crate::model::Spec;

/// The `$id` of the schema.
pub const SCHEMA_ID: &str = "https://aistack.invalid/schemas/aistack.schema.json";

/// The JSON Schema (draft 2020-12) of `aistack.yaml`, as `aistack schema` prints it.
pub fn schema() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<Spec>();
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        object.insert("$id".to_owned(), json!(SCHEMA_ID));
        object.insert("title".to_owned(), json!("aistack.yaml"));
        object.insert(
            "description".to_owned(),
            json!("An aistack file: the models, engines, sandboxes and network policies of one project."),
        );
        object.insert("patternProperties".to_owned(), json!({ "^x-": {} }));
    }
    allow_null_for_optional(&mut value, 0);
    value
}

/// `key:` with nothing after it means "not set" (or empty, for lists and maps) to `parse`,
/// so every optional property also accepts `null`.
fn allow_null_for_optional(value: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    match value {
        Value::Object(object) => {
            let required: Vec<String> = object
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(Value::Object(properties)) = object.get_mut("properties") {
                for (name, property) in properties.iter_mut() {
                    if !required.contains(name) {
                        make_nullable(property);
                    }
                }
            }
            for child in object.values_mut() {
                allow_null_for_optional(child, depth + 1);
            }
        }
        Value::Array(items) => {
            for child in items {
                allow_null_for_optional(child, depth + 1);
            }
        }
        _ => {}
    }
}

fn make_nullable(property: &mut Value) {
    let Some(object) = property.as_object_mut() else {
        return;
    };
    let null_schema = json!({ "type": "null" });
    match object.get_mut("type") {
        Some(Value::String(t)) => {
            if t != "null" {
                let t = t.clone();
                object.insert("type".to_owned(), json!([t, "null"]));
            }
            return;
        }
        Some(Value::Array(types)) => {
            if !types.iter().any(|t| t == "null") {
                types.push(json!("null"));
            }
            return;
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = object.get_mut(key) {
            if !branches.contains(&null_schema) {
                branches.push(null_schema);
            }
            return;
        }
    }
    if let Some(reference) = object.remove("$ref") {
        object.insert(
            "anyOf".to_owned(),
            json!([{ "$ref": reference }, null_schema]),
        );
    }
}

//! Resources: what a plan creates, changes and removes, and what apply records.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::payload::{Kind, Payload, Settings};

/// A resource's identity within a project: its kind and the name from the spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceId {
    /// The kind.
    pub kind: Kind,
    /// The key in the spec (`chat` for `models.chat`).
    pub name: String,
}

impl ResourceId {
    /// A resource id.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceId {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// A resource as the spec wants it, with every decision already made.
///
/// Its settings (the part apply records) and their hash are derived from the payload, so
/// they cannot disagree with what the executor carries out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    /// Which resource.
    pub id: ResourceId,
    /// What the executor needs to carry the step out.
    pub payload: Payload,
    /// sha256 over the payload's settings: divergence is detected by comparing it with the
    /// applied hash.
    pub hash: String,
    /// Resources that must exist first.
    pub depends_on: Vec<ResourceId>,
}

impl Desired {
    /// The desired resource `name` of the payload's kind; `depends_on` is sorted and
    /// deduplicated.
    pub fn new(name: impl Into<String>, payload: Payload, mut depends_on: Vec<ResourceId>) -> Self {
        depends_on.sort();
        depends_on.dedup();
        let hash = fields_hash(&fields_of(&payload));
        Desired {
            id: ResourceId::new(payload.kind(), name),
            payload,
            hash,
            depends_on,
        }
    }

    /// The settings apply records, by name: what a record's fields are compared with.
    pub fn fields(&self) -> BTreeMap<String, serde_json::Value> {
        fields_of(&self.payload)
    }
}

/// The wire form of [`Desired`]: the hash is computed again, never taken from the JSON.
#[derive(Deserialize)]
struct DesiredIn {
    id: ResourceId,
    payload: Payload,
    depends_on: Vec<ResourceId>,
}

impl<'de> Deserialize<'de> for Desired {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let input = DesiredIn::deserialize(deserializer)?;
        if input.id.kind != input.payload.kind() {
            return Err(D::Error::custom(format!(
                "the desired `{}` carries a {} payload",
                input.id,
                input.payload.kind()
            )));
        }
        Ok(Desired::new(input.id.name, input.payload, input.depends_on))
    }
}

fn fields_of(payload: &Payload) -> BTreeMap<String, serde_json::Value> {
    match payload.settings() {
        serde_json::Value::Object(map) => map.into_iter().collect(),
        _ => BTreeMap::new(),
    }
}

/// sha256 (lower-case hex) over the canonical JSON of `fields`: object keys sorted at every
/// level, no whitespace. Independent of serde_json's `preserve_order` feature.
fn fields_hash(fields: &BTreeMap<String, serde_json::Value>) -> String {
    let object: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    canonical_hash(&serde_json::Value::Object(object))
}

/// sha256 (lower-case hex) over the canonical JSON of `value`.
pub(crate) fn canonical_hash(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    write_canonical(value, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Output of a model resource: the manifest digest of its artifact in the store.
pub const MANIFEST_OUTPUT: &str = "manifest";

/// A record whose settings are not those of its kind: written by another version of
/// aistack, or edited by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("The record of `{id}` is not one this version of aistack reads: {reason}")]
pub struct RecordError {
    /// The resource.
    pub id: ResourceId,
    /// What does not fit, as serde says it.
    pub reason: String,
}

impl RecordError {
    /// What to do about it.
    pub fn help(&self) -> Option<String> {
        Some("Run `aistack up`: the plan replaces it with a record of this version".to_owned())
    }
}

/// What apply recorded for a resource: the applied fields and what the host reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// Which resource.
    pub id: ResourceId,
    /// The fields as applied.
    pub fields: BTreeMap<String, serde_json::Value>,
    /// The hash of `fields` as applied.
    pub hash: String,
    /// What it depended on when applied; removals run in the reverse order.
    pub depends_on: Vec<ResourceId>,
    /// What the host reported (a manifest digest, an endpoint, a pid).
    pub outputs: BTreeMap<String, String>,
}

impl Applied {
    /// The record apply keeps after carrying out `desired`: its id, fields, hash and
    /// dependencies, plus what the host reported.
    pub fn from_desired(desired: &Desired, outputs: BTreeMap<String, String>) -> Self {
        Applied {
            id: desired.id.clone(),
            fields: desired.fields(),
            hash: desired.hash.clone(),
            depends_on: desired.depends_on.clone(),
            outputs,
        }
    }

    /// The recorded settings, typed: the same structs the planner made the payload with.
    pub fn settings<T: Settings>(&self) -> Result<T, RecordError> {
        let error = |reason: String| RecordError {
            id: self.id.clone(),
            reason,
        };
        if self.id.kind != T::KIND {
            return Err(error(format!(
                "it is a {}, not a {}",
                self.id.kind,
                T::KIND
            )));
        }
        let object = self.fields.iter().map(|(k, v)| (k.clone(), v.clone()));
        serde_json::from_value(serde_json::Value::Object(object.collect()))
            .map_err(|e| error(e.to_string()))
    }
}

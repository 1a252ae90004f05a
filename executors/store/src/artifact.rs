//! Docker Model Runner's artifact format: the OCI manifest and model config of a GGUF model.
//!
//! The JSON is written as Go's `encoding/json` writes DMR's structs (field order, omitted
//! empty fields, sorted map keys, `<`, `>` and `&` escaped), and the human-readable fields
//! as DMR formats them, so a model imported here reads the same as one DMR built. See
//! docker/model-runner `pkg/distribution/format/gguf.go`, `types/config.go`,
//! `internal/partial/layer.go` and `internal/partial/partial.go`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::gguf::Summary;

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of DMR's model config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.ai.model.config.v0.1+json";
/// Media type of a GGUF layer.
pub const GGUF_MEDIA_TYPE: &str = "application/vnd.docker.ai.gguf.v3";
/// Media type of a license layer.
pub const LICENSE_MEDIA_TYPE: &str = "application/vnd.docker.ai.license";
/// Media type of a chat template layer.
pub const CHAT_TEMPLATE_MEDIA_TYPE: &str = "application/vnd.docker.ai.chat.template.jinja";
/// Media type of a multimodal projector layer.
pub const MMPROJ_MEDIA_TYPE: &str = "application/vnd.docker.ai.mmproj";
/// Media type of a safetensors layer.
pub const SAFETENSORS_MEDIA_TYPE: &str = "application/vnd.docker.ai.safetensors";
/// Media type of a DDUF (Diffusers) layer.
pub const DDUF_MEDIA_TYPE: &str = "application/vnd.docker.ai.dduf";
/// Media type of a Docker image manifest (schema 2), which a model may also be pushed as.
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list.
pub const DOCKER_MANIFEST_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Whether `media_type` is a layer of a Docker Model Runner artifact: one of the types
/// above, or another `application/vnd.docker.ai.` type that a newer DMR may add.
pub fn is_model_layer(media_type: &str) -> bool {
    [
        GGUF_MEDIA_TYPE,
        LICENSE_MEDIA_TYPE,
        CHAT_TEMPLATE_MEDIA_TYPE,
        MMPROJ_MEDIA_TYPE,
        SAFETENSORS_MEDIA_TYPE,
        DDUF_MEDIA_TYPE,
    ]
    .contains(&media_type)
        || (media_type.starts_with("application/vnd.docker.ai.")
            && !media_type.starts_with("application/vnd.docker.ai.model.config"))
}

/// Media types of a container image's config (OCI, Docker).
pub const IMAGE_CONFIG_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];
/// Media type of a container image's uncompressed filesystem layer (OCI).
pub const IMAGE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media types of a container image's gzip-compressed filesystem layer (OCI, Docker);
/// [`Store::put_image`](crate::Store::put_image) writes the first.
pub const IMAGE_LAYER_GZIP: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// Whether `media_type` is a container image layer aistack can apply (tar, gzip).
pub fn is_image_layer(media_type: &str) -> bool {
    media_type == IMAGE_LAYER_TAR || IMAGE_LAYER_GZIP.contains(&media_type)
}

/// Layer annotation: the file's name.
pub const ANNOTATION_FILEPATH: &str = "org.cncf.model.filepath";
/// Layer annotation: the file's metadata, as JSON.
pub const ANNOTATION_FILE_METADATA: &str = "org.cncf.model.file.metadata+json";
/// Layer annotation: whether the media type was guessed.
pub const ANNOTATION_MEDIATYPE_UNTESTED: &str = "org.cncf.model.file.mediatype.untested";
/// Index annotation: the reference a manifest was tagged with.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Index annotation: the local file a model was imported from.
pub const ANNOTATION_SOURCE: &str = "io.aistack.source";

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// What the content is: one of the media types above, or another OCI or Docker type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The content's size in bytes.
    pub size: u64,
    /// The content's `sha256:<hex>` digest, which names its blob under `blobs/sha256/`.
    pub digest: String,
    /// Key/value metadata, left out of the JSON when empty: the `ANNOTATION_*` keys above, among
    /// others.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `schemaVersion`: 2, in OCI manifests and Docker schema 2 manifests alike.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`MANIFEST_MEDIA_TYPE`] in the manifests written here, or [`DOCKER_MANIFEST_MEDIA_TYPE`];
    /// empty when a manifest leaves it out, as OCI allows.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The config blob: DMR's model config ([`CONFIG_MEDIA_TYPE`]) for a model, an image config for
    /// a template image.
    pub config: Descriptor,
    /// The layers in order: a model's GGUF shards, then its licenses and chat template; an image's
    /// filesystem layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An OCI image index (`index.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// `schemaVersion`: 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`INDEX_MEDIA_TYPE`]; empty when an index leaves it out, as OCI allows.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// One entry per name a manifest has, each naming it in the [`ANNOTATION_REF_NAME`]
    /// annotation, or one entry without a name for a manifest that has none.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE.to_owned(),
            manifests: Vec::new(),
        }
    }
}

/// DMR's config blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    /// What the model is.
    pub config: ModelConfig,
    /// When the model was made (DMR's `descriptor`).
    #[serde(default)]
    pub descriptor: Provenance,
    /// The digests of the model's layers.
    #[serde(default)]
    pub rootfs: RootFs,
}

/// What a model is, as DMR describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The weights' file format: `gguf` for the models made here; DMR also writes `safetensors` and
    /// `diffusers`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// The quantization, e.g. `Q4_K_M`: llama.cpp's name for `general.file_type`, else the most
    /// common type of the model's matrices.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub quantization: String,
    /// The parameter count, e.g. `134.52M`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parameters: String,
    /// The model architecture, from `general.architecture`, e.g. `llama`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub architecture: String,
    /// The weights' size, e.g. `93.80MiB`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub size: String,
    /// The GGUF header's metadata, each value written as DMR writes it
    /// ([`Value::to_dmr_string`](crate::gguf::Value::to_dmr_string)).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gguf: BTreeMap<String, String>,
    /// The metadata of a safetensors model; kept so that a config DMR wrote reads back unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub safetensors: BTreeMap<String, String>,
    /// The metadata of a Diffusers model; kept so that a config DMR wrote reads back unchanged.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub diffusers: BTreeMap<String, String>,
    /// The context length in tokens the model runs with: `<arch>.context_length` from the GGUF
    /// header, or what the model was packaged with. DMR's field is an `int32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_size: Option<u32>,
}

/// The provenance of a model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// RFC 3339 time of creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
}

/// The layer digests of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// `type`: always `rootfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The `sha256:<hex>` digest of each layer, in manifest order (the layers are uncompressed, so
    /// these are also their diff ids).
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "rootfs".to_owned(),
            diff_ids: Vec::new(),
        }
    }
}

impl ModelConfig {
    /// The config of a GGUF model summarised by `summary`, as DMR's `GGUFFormat.ExtractConfig`
    /// fills it.
    pub fn from_gguf(summary: &Summary) -> ModelConfig {
        ModelConfig {
            format: "gguf".to_owned(),
            quantization: summary.quantization.clone().unwrap_or_default(),
            parameters: format_parameters(summary.parameters),
            architecture: summary.architecture.clone().unwrap_or_default(),
            size: format_bytes(summary.model_size),
            gguf: summary.metadata.clone(),
            context_size: summary
                .context_length
                .filter(|&c| c > 0)
                .and_then(|c| i32::try_from(c).ok())
                .map(|c| c as u32),
            ..ModelConfig::default()
        }
    }
}

/// The metadata annotation DMR puts on a layer (`types.FileMetadata`).
#[derive(Serialize)]
pub struct FileMetadata<'a> {
    /// The file's name, without its directory.
    pub name: &'a str,
    /// Its permission bits.
    pub mode: u32,
    /// The owner's user id; always 0, as DMR writes it.
    pub uid: u32,
    /// The owner's group id; always 0, as DMR writes it.
    pub gid: u32,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, as [`rfc3339`] writes it.
    pub mtime: String,
    /// Its tar type flag; 0, a regular file.
    pub typeflag: u8,
}

/// `value` as compact JSON, the way Go's `json.Marshal` writes it.
pub fn to_go_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value.serialize(&mut serializer)?;
    Ok(out)
}

/// Compact JSON with Go's HTML-safe string escapes.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// A parameter count as DMR writes it: gguf-parser-go's `GGUFParametersScalar` (base 1000,
/// two decimals, `.00` dropped) with the space before the unit removed: `134.52M`, `183`.
pub fn format_parameters(n: u64) -> String {
    const UNITS: [(f64, &str); 5] = [(1e15, "Q"), (1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")];
    scaled(n, &UNITS, "", "0")
}

/// A byte count as DMR writes a model's size: gguf-parser-go's `GGUFBytesScalar` (the first
/// of Pi, P, Ti, T, Gi, G, Mi, M, Ki, K the size reaches) without the space: `93.80MiB`.
pub fn format_bytes(n: u64) -> String {
    const KI: f64 = 1024.0;
    const UNITS: [(f64, &str); 10] = [
        (KI * KI * KI * KI * KI, "Pi"),
        (1e15, "P"),
        (KI * KI * KI * KI, "Ti"),
        (1e12, "T"),
        (KI * KI * KI, "Gi"),
        (1e9, "G"),
        (KI * KI, "Mi"),
        (1e6, "M"),
        (KI, "Ki"),
        (1e3, "K"),
    ];
    scaled(n, &UNITS, "B", "0B")
}

fn scaled(n: u64, units: &[(f64, &str)], suffix: &str, zero: &str) -> String {
    if n == 0 {
        return zero.to_owned();
    }
    let value = n as f64;
    let (base, unit) = units
        .iter()
        .find(|(base, _)| value >= *base)
        .copied()
        .unwrap_or((1.0, ""));
    let number = format!("{:.2}", value / base);
    let number = number.strip_suffix(".00").unwrap_or(&number);
    format!("{number}{unit}{suffix}")
}

/// `time` in RFC 3339 UTC with nanoseconds, trailing zeros dropped, as Go's `time.Time`
/// marshals to JSON: `2025-02-07T10:11:12.5Z`. A time outside the years RFC 3339 can write
/// (0000 to 9999; a file's mtime can be anything) is written as the nearest one it can.
pub fn rfc3339(time: SystemTime) -> String {
    // Nanoseconds since the epoch of 0000-01-01T00:00:00Z and of 9999-12-31T23:59:59.999999999Z.
    const FIRST: i128 = -62_167_219_200 * 1_000_000_000;
    const LAST: i128 = 253_402_300_800 * 1_000_000_000 - 1;
    // A `SystemTime` is at most 2^64 seconds from the epoch: its nanoseconds fit an i128.
    let nanos = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos.clamp(FIRST, LAST))
        .ok()
        .and_then(|utc| utc.format(&Rfc3339).ok())
        .expect("years 0000 to 9999 are RFC 3339 times")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parameters_match_dmr() {
        assert_eq!(format_parameters(134_515_008), "134.52M");
        assert_eq!(format_parameters(183), "183");
        assert_eq!(format_parameters(1_500_000_000), "1.50B");
        assert_eq!(format_parameters(2_000_000), "2M");
        assert_eq!(format_parameters(0), "0");
    }

    #[test]
    fn sizes_match_dmr() {
        assert_eq!(format_bytes(864), "864B");
        assert_eq!(format_bytes(98_362_432 - 1_709_440), "92.18MiB");
        assert_eq!(format_bytes(1_000_000), "1MB");
        assert_eq!(format_bytes(1024), "1KiB");
        assert_eq!(format_bytes(0), "0B");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_738_923_072, 500_000_000);
        assert_eq!(rfc3339(t), "2025-02-07T10:11:12.5Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(951_782_400, 1)),
            "2000-02-29T00:00:00.000000001Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::new(1, 500_000_000)),
            "1969-12-31T23:59:58.5Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1 << 40)),
            "9999-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn json_escapes_like_go() {
        let json = to_go_json(&BTreeMap::from([("t", "<a & b>\n\u{2028}")])).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"t":"\u003ca \u0026 b\u003e\n\u2028"}"#
        );
    }

    #[test]
    fn config_omits_empty_fields() {
        let config = ConfigFile {
            config: ModelConfig {
                format: "gguf".into(),
                ..ModelConfig::default()
            },
            descriptor: Provenance::default(),
            rootfs: RootFs::default(),
        };
        assert_eq!(
            String::from_utf8(to_go_json(&config).unwrap()).unwrap(),
            r#"{"config":{"format":"gguf"},"descriptor":{},"rootfs":{"type":"rootfs","diff_ids":[]}}"#
        );
    }
}

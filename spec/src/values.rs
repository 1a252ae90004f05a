//! Scalar value types of the file format: sizes, durations, host rules, references.
//!
//! Each is written as one string (or number) in YAML, parsed here once, and serialised back
//! in a canonical form so that the planner's hashes do not change with spelling.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

/// A size in bytes, written `512MiB`, `2GiB`, `2G` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A size: a byte count or a number with a unit (`512MiB`, `2GiB`, `2G`, `100KB`).",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*([KMGTkmgt]i?[Bb]?|[Bb])?\\s*$" }
            ]
        })
    }
}

/// How long an idle model stays loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeepAlive {
    /// Unload after this long idle; zero unloads after each request.
    After(Duration),
    /// Never unload (`-1`).
    Forever,
}

impl Serialize for KeepAlive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeepAlive::After(d) => s.serialize_str(&format_duration(*d)),
            KeepAlive::Forever => s.serialize_i64(-1),
        }
    }
}

impl JsonSchema for KeepAlive {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KeepAlive".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration (`30s`, `5m`, `1h`, `1h30m`), `0` to unload after each request, or `-1` to never unload.",
            "oneOf": [
                { "type": "integer", "enum": [0, -1] },
                { "type": "string", "pattern": "^(-1|0|([0-9]+(ms|s|m|h))+)$" }
            ]
        })
    }
}

/// Formats a duration the way the file writes it (`1h30m`, `45s`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, JsonSchema)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }
        impl $name {
            /// Every spelling the file accepts, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            /// The value for `text`, if it is one of [`Self::NAMES`].
            pub fn from_name(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
            /// The spelling used in the file.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// An inference engine.
    EngineKind {
        /// llama.cpp, for GGUF models.
        #[default] LlamaCpp = "llama.cpp",
        /// vLLM, for safetensors models.
        Vllm = "vllm",
        /// Diffusers, for DDUF image models.
        Diffusers = "diffusers",
    }
}

string_enum! {
    /// What a model serves.
    ModelMode {
        /// Chat and text completions.
        #[default] Chat = "chat",
        /// Embeddings.
        Embedding = "embedding",
        /// Image generation.
        Image = "image",
    }
}

string_enum! {
    /// The decision for destinations no rule matches.
    PolicyDefault {
        /// Allow them.
        Allow = "allow",
        /// Deny them.
        #[default] Deny = "deny",
    }
}

string_enum! {
    /// The agent a sandbox runs.
    Agent {
        /// Claude Code.
        Claude = "claude",
        /// OpenAI Codex CLI.
        Codex = "codex",
        /// GitHub Copilot CLI.
        Copilot = "copilot",
        /// Gemini CLI.
        Gemini = "gemini",
        /// opencode.
        Opencode = "opencode",
        /// Kiro CLI.
        Kiro = "kiro",
        /// Docker's cagent.
        DockerAgent = "docker-agent",
        /// A plain shell.
        #[default] Shell = "shell",
    }
}

string_enum! {
    /// The sandbox backend.
    Isolation {
        /// `microvm` where KVM runs guests at native speed, else `namespace`.
        #[default] Auto = "auto",
        /// A KVM microVM.
        Microvm = "microvm",
        /// Linux namespaces.
        Namespace = "namespace",
    }
}

/// Layers offloaded to the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GpuLayers {
    /// As many as fit.
    #[default]
    Auto,
    /// Exactly this many.
    Count(u32),
}

impl Serialize for GpuLayers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuLayers::Auto => s.serialize_str("auto"),
            GpuLayers::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl JsonSchema for GpuLayers {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GpuLayers".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Layers offloaded to the GPU: a count, or `auto` for as many as fit.",
            "oneOf": [ { "type": "integer", "minimum": 0 }, { "const": "auto" } ]
        })
    }
}

/// An OCI reference, normalised as Docker does (`ai/smollm2` is
/// `docker.io/ai/smollm2:latest`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OciRef {
    /// Registry host and optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `ai/smollm2`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was written.
    pub tag: Option<String>,
    /// Digest, `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Serialize for OciRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// A registry artifact.
    Oci(OciRef),
    /// A local file, as written (relative to the spec file's directory unless absolute).
    Local(String),
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Source::Oci(r) => s.collect_str(r),
            Source::Local(p) => s.serialize_str(p),
        }
    }
}

impl JsonSchema for Source {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ModelSource".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "An OCI reference (`ai/smollm2:135M-Q4_1`, `127.0.0.1:5000/ai/smollm2@sha256:…`) or a local GGUF file starting with `./`, `../` or `/`."
        })
    }
}

/// The base of a template, resolved as DESIGN §4 says: a template of this file if one has
/// that name, else a path if it starts with `./`, `../` or `/`, else an OCI reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TemplateFrom {
    /// Another template of the same file.
    Template(String),
    /// A root filesystem directory, as written.
    Path(String),
    /// An OCI image.
    Image(OciRef),
}

impl Serialize for TemplateFrom {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TemplateFrom::Template(n) | TemplateFrom::Path(n) => s.serialize_str(n),
            TemplateFrom::Image(r) => s.collect_str(r),
        }
    }
}

impl JsonSchema for TemplateFrom {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TemplateFrom".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "Another template of this file, a root filesystem directory (`./rootfs`), or an OCI image reference."
        })
    }
}

/// A destination rule of a network policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostRule {
    /// What the rule matches.
    pub target: RuleTarget,
    /// Port restriction; any port when `None`.
    pub port: Option<u16>,
}

/// The address part of a [`HostRule`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RuleTarget {
    /// An exact host name, lower-case, without trailing dot, IDNA-encoded.
    Host(String),
    /// `*.suffix`: strict subdomains of the suffix.
    Wildcard(String),
    /// An IP address.
    Ip(IpAddr),
    /// A CIDR block.
    Cidr(IpNet),
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.target, self.port) {
            (RuleTarget::Ip(IpAddr::V6(ip)), Some(port)) => return write!(f, "[{ip}]:{port}"),
            (RuleTarget::Host(h), _) => f.write_str(h)?,
            (RuleTarget::Wildcard(s), _) => write!(f, "*.{s}")?,
            (RuleTarget::Ip(ip), _) => write!(f, "{ip}")?,
            (RuleTarget::Cidr(net), _) => write!(f, "{net}")?,
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl Serialize for HostRule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for HostRule {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HostRule".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "description": "A host (`api.anthropic.com`), a wildcard for its strict subdomains (`*.npmjs.org`), an IP (`10.1.2.3`, `[::1]`) or a CIDR (`203.0.113.0/24`), each optionally with `:PORT`."
        })
    }
}

/// A published port: `[HOST_IP:]HOST_PORT:SANDBOX_PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// Host address to bind; `127.0.0.1` when not written.
    pub host_ip: IpAddr,
    /// Host port.
    pub host_port: u16,
    /// Port inside the sandbox.
    pub sandbox_port: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}:{}", self.host_port, self.sandbox_port),
            IpAddr::V4(ip) => write!(f, "{ip}:{}:{}", self.host_port, self.sandbox_port),
        }
    }
}

impl Serialize for PortMapping {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for PortMapping {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PortMapping".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(([0-9.]+|\\[[0-9a-fA-F:.]+\\]):)?[0-9]{1,5}:[0-9]{1,5}$",
            "description": "A sandbox port published on the host: `[HOST_IP:]HOST_PORT:SANDBOX_PORT`, e.g. `127.0.0.1:8080:3000`."
        })
    }
}

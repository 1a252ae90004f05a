//! Scalar value types of the file format: sizes, durations, host rules, references.
//!
//! Each is written as one string (or number) in YAML, parsed here once, and serialised back
//! in a canonical form so that the planner's hashes do not change with spelling.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes, written `512MiB`, `2GiB`, `2G` or a plain byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    if !ms.is_multiple_of(1000) {
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
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, JsonSchema)]
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

impl Agent {
    /// Whether aistack can point the agent at a project model (its API is one the gateway
    /// serves, and the agent reads a base URL and a model name).
    pub fn runs_on_local_models(self) -> bool {
        matches!(
            self,
            Agent::Claude | Agent::Codex | Agent::Copilot | Agent::Gemini | Agent::Opencode
        )
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

/// Reading back what these types serialise to: plans and state records carry them in their
/// canonical form, and they are read with the same parsers as the file, so one spelling has
/// one meaning everywhere. Integers are accepted where the file accepts them (`keep_alive:
/// -1`, `gpu_layers: 20`).
trait FromText: Sized {
    /// What the value is, for the error (`a keep-alive`).
    const EXPECTED: &'static str;
    fn from_text(text: &str) -> Result<Self, InvalidValue>;
    fn from_integer(n: i128) -> Result<Self, InvalidValue> {
        Self::from_text(&n.to_string())
    }
}

struct TextVisitor<T>(std::marker::PhantomData<T>);

impl<T: FromText> Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        T::from_text(text).map_err(|e| E::custom(format!("`{text}`: {}", e.reason)))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        T::from_integer(n.into()).map_err(|e| E::custom(format!("`{n}`: {}", e.reason)))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        T::from_integer(n.into()).map_err(|e| E::custom(format!("`{n}`: {}", e.reason)))
    }
}

macro_rules! deserialize_from_text {
    ($($name:ident),+ $(,)?) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextVisitor::<$name>(std::marker::PhantomData))
            }
        }
    )+};
}

impl FromText for KeepAlive {
    const EXPECTED: &'static str = "a keep-alive: a duration, `0` or `-1`";
    fn from_text(text: &str) -> Result<Self, InvalidValue> {
        KeepAlive::parse(text)
    }
    fn from_integer(n: i128) -> Result<Self, InvalidValue> {
        KeepAlive::from_integer(n)
    }
}

impl FromText for GpuLayers {
    const EXPECTED: &'static str = "a layer count or `auto`";
    fn from_text(text: &str) -> Result<Self, InvalidValue> {
        GpuLayers::parse(text)
    }
}

impl FromText for HostRule {
    const EXPECTED: &'static str = "a host rule";
    fn from_text(text: &str) -> Result<Self, InvalidValue> {
        HostRule::parse(text)
    }
}

impl FromText for PortMapping {
    const EXPECTED: &'static str = "a port mapping `[HOST_IP:]HOST_PORT:SANDBOX_PORT`";
    fn from_text(text: &str) -> Result<Self, InvalidValue> {
        PortMapping::parse(text)
    }
}

deserialize_from_text!(KeepAlive, GpuLayers, HostRule, PortMapping);

/// Why a value could not be parsed: a short label for the span and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue {
    /// What is wrong, lower-case, shown under the span.
    pub reason: String,
    /// How to write it.
    pub help: String,
}

impl InvalidValue {
    fn new(reason: impl Into<String>, help: impl Into<String>) -> Self {
        InvalidValue {
            reason: reason.into(),
            help: help.into(),
        }
    }
}

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for InvalidValue {}

const SIZE_HELP: &str = "Write a byte count or a number with a unit, e.g. `512MiB`, `2GiB` or `2G`";

impl ByteSize {
    /// Parses `512MiB`, `2GiB`, `2G`, `100KB`, `1.5GiB` or a plain byte count. As in Docker,
    /// every unit is binary: `K`, `KB` and `KiB` all mean 1024 bytes.
    pub fn parse(text: &str) -> Result<ByteSize, InvalidValue> {
        let t = text.trim();
        let number_end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (&t[..number_end], t[number_end..].trim_start());
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        let valid_number = !int.is_empty()
            && int.chars().all(|c| c.is_ascii_digit())
            && frac.chars().all(|c| c.is_ascii_digit())
            && !(number.contains('.') && frac.is_empty());
        if !valid_number {
            return Err(InvalidValue::new("not a size", SIZE_HELP));
        }
        let mut chars = unit.chars();
        let exponent = match chars.next() {
            None | Some('B' | 'b') if unit.len() <= 1 => 0,
            Some('K' | 'k') => 1,
            Some('M' | 'm') => 2,
            Some('G' | 'g') => 3,
            Some('T' | 't') => 4,
            _ => {
                return Err(InvalidValue::new(
                    format!("unknown unit `{unit}`"),
                    SIZE_HELP,
                ));
            }
        };
        if exponent > 0 {
            let suffix = chars.as_str();
            if !matches!(suffix, "" | "i" | "B" | "b" | "iB" | "ib") {
                return Err(InvalidValue::new(
                    format!("unknown unit `{unit}`"),
                    SIZE_HELP,
                ));
            }
        }
        let multiplier = 1024u128.pow(exponent);
        let too_large = || InvalidValue::new("too large", "Write a size below 16EiB");
        let whole = int
            .parse::<u128>()
            .map_err(|_| too_large())?
            .checked_mul(multiplier)
            .ok_or_else(too_large)?;
        let frac_digits = &frac[..frac.len().min(12)];
        let fraction = if frac_digits.is_empty() {
            0
        } else {
            let scale = 10u128.pow(frac_digits.len() as u32);
            frac_digits.parse::<u128>().map_err(|_| too_large())? * multiplier / scale
        };
        whole
            .checked_add(fraction)
            .and_then(|total| u64::try_from(total).ok())
            .map(ByteSize)
            .ok_or_else(too_large)
    }

    /// `n` bytes as an integer written in the file, which must not be negative.
    pub fn from_integer(n: i128) -> Result<ByteSize, InvalidValue> {
        u64::try_from(n)
            .map(ByteSize)
            .map_err(|_| InvalidValue::new("not a size", SIZE_HELP))
    }
}

impl std::str::FromStr for ByteSize {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

/// A byte count as people read it, for display only: below 1 KiB in bytes (`1023 B`), else
/// in the largest binary unit that keeps the number at least 1, with one decimal below 100
/// (`93.8 MiB`, `8.0 GiB`) and none from 100 (`300 MiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{:.1} {}", (value * 10.0).round() / 10.0, UNITS[unit])
    }
}

const DURATION_HELP: &str = "Write a duration such as `30s`, `5m`, `1h`, `1h30m` or `250ms`";

/// Parses a duration: one or more `<integer><unit>` with units `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    if text.is_empty() {
        return Err(InvalidValue::new("empty duration", DURATION_HELP));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(InvalidValue::new("not a duration", DURATION_HELP));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| InvalidValue::new("too long", DURATION_HELP))?;
        rest = &rest[digits..];
        let (unit, millis) = if rest.starts_with("ms") {
            ("ms", 1)
        } else if rest.starts_with('s') {
            ("s", 1000)
        } else if rest.starts_with('m') {
            ("m", 60_000)
        } else if rest.starts_with('h') {
            ("h", 3_600_000)
        } else if rest.is_empty() {
            return Err(InvalidValue::new(
                "missing unit",
                format!("Add a unit, e.g. `{text}s`"),
            ));
        } else {
            return Err(InvalidValue::new("unknown unit", DURATION_HELP));
        };
        rest = &rest[unit.len()..];
        let part = number
            .checked_mul(millis)
            .map(Duration::from_millis)
            .ok_or_else(|| InvalidValue::new("too long", DURATION_HELP))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| InvalidValue::new("too long", DURATION_HELP))?;
    }
    Ok(total)
}

impl KeepAlive {
    /// Parses a keep-alive string: a duration, `0` or `-1`.
    pub fn parse(text: &str) -> Result<KeepAlive, InvalidValue> {
        match text {
            "-1" => Ok(KeepAlive::Forever),
            "0" => Ok(KeepAlive::After(Duration::ZERO)),
            _ => parse_duration(text).map(KeepAlive::After).map_err(|e| {
                InvalidValue::new(
                    e.reason,
                    "Write a duration (`30s`, `5m`, `1h`), `0` to unload after each request, or `-1` to keep the model loaded",
                )
            }),
        }
    }

    /// A keep-alive written as an integer: only `0` and `-1` are.
    pub fn from_integer(n: i128) -> Result<KeepAlive, InvalidValue> {
        match n {
            0 => Ok(KeepAlive::After(Duration::ZERO)),
            -1 => Ok(KeepAlive::Forever),
            n => Err(InvalidValue::new(
                "only `0` and `-1` may be written without a unit",
                format!("Write a duration with a unit, e.g. `{n}s`"),
            )),
        }
    }
}

impl std::str::FromStr for KeepAlive {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeepAlive::parse(s)
    }
}

fn parse_port(text: &str) -> Result<u16, InvalidValue> {
    let help = "Write a port between 1 and 65535";
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(InvalidValue::new(format!("`{text}` is not a port"), help));
    }
    match text.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(InvalidValue::new(
            format!("port `{text}` is out of range"),
            help,
        )),
    }
}

/// Parses a listen address `HOST:PORT`, where HOST is an IP literal (`[::1]` for IPv6) or
/// `localhost` (`127.0.0.1`).
pub fn parse_listen(text: &str) -> Result<std::net::SocketAddr, InvalidValue> {
    let help = "Write `HOST:PORT` with an IP address or `localhost`, e.g. `127.0.0.1:12434`";
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((ip, port)) = rest.split_once("]:") else {
            return Err(InvalidValue::new("not `[IPv6]:PORT`", help));
        };
        let ip: std::net::Ipv6Addr = ip
            .parse()
            .map_err(|_| InvalidValue::new(format!("`{ip}` is not an IPv6 address"), help))?;
        (IpAddr::V6(ip), port)
    } else {
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(InvalidValue::new("no port", help));
        };
        let ip = if host == "localhost" {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse::<std::net::Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| {
                    InvalidValue::new(
                        format!("`{host}` is not an IP address or `localhost`"),
                        help,
                    )
                })?
        };
        (ip, port)
    };
    Ok(std::net::SocketAddr::new(host, parse_port(port)?))
}

impl PortMapping {
    /// Parses `[HOST_IP:]HOST_PORT:SANDBOX_PORT` (`[::1]:8080:3000` for IPv6).
    pub fn parse(text: &str) -> Result<PortMapping, InvalidValue> {
        let help =
            "Write `[HOST_IP:]HOST_PORT:SANDBOX_PORT`, e.g. `127.0.0.1:8080:3000` or `8080:3000`";
        let (ip, ports) = if let Some(rest) = text.strip_prefix('[') {
            let Some((ip, ports)) = rest.split_once("]:") else {
                return Err(InvalidValue::new("not a port mapping", help));
            };
            let ip: std::net::Ipv6Addr = ip
                .parse()
                .map_err(|_| InvalidValue::new(format!("`{ip}` is not an IPv6 address"), help))?;
            (Some(IpAddr::V6(ip)), ports)
        } else {
            match text.matches(':').count() {
                1 => (None, text),
                2 => {
                    let (ip, ports) = text.split_once(':').unwrap_or((text, ""));
                    let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
                        InvalidValue::new(format!("`{ip}` is not an IP address"), help)
                    })?;
                    (Some(IpAddr::V4(ip)), ports)
                }
                _ => return Err(InvalidValue::new("not a port mapping", help)),
            }
        };
        let Some((host, sandbox)) = ports.split_once(':') else {
            return Err(InvalidValue::new("not a port mapping", help));
        };
        Ok(PortMapping {
            host_ip: ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            host_port: parse_port(host)?,
            sandbox_port: parse_port(sandbox)?,
        })
    }
}

impl std::str::FromStr for PortMapping {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortMapping::parse(s)
    }
}

/// Normalises a host name: lower-case, no trailing dot, IDNA (punycode) for non-ASCII.
pub fn normalize_hostname(text: &str) -> Result<String, InvalidValue> {
    let help = "Write a host name such as `api.example.com`";
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.is_empty() {
        return Err(InvalidValue::new("empty host name", help));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed)
            .map_err(|_| InvalidValue::new("not a valid international host name", help))?
    };
    if ascii.len() > 253 {
        return Err(InvalidValue::new(
            "host name longer than 253 characters",
            help,
        ));
    }
    for label in ascii.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(InvalidValue::new(
                format!("`{label}` is not a valid host name label"),
                help,
            ));
        }
    }
    Ok(ascii)
}

const RULE_HELP: &str = "Write a host (`api.example.com`), a wildcard (`*.example.com`), an IP (`10.1.2.3`, `[::1]`) or a CIDR (`203.0.113.0/24`), each optionally with `:PORT`";

fn parse_cidr(text: &str) -> Result<IpNet, InvalidValue> {
    let net: IpNet = text
        .parse()
        .map_err(|_| InvalidValue::new(format!("`{text}` is not a CIDR block"), RULE_HELP))?;
    if net.trunc() != net {
        return Err(InvalidValue::new(
            "host bits are set",
            format!(
                "The network is `{}`; write that, or a single IP",
                net.trunc()
            ),
        ));
    }
    Ok(net)
}

impl HostRule {
    /// Parses a rule: host, `*.suffix`, IPv4, `[IPv6]`, bare IPv6, or CIDR, each (except a
    /// bare IPv6 address or IPv6 CIDR) optionally followed by `:PORT`.
    pub fn parse(text: &str) -> Result<HostRule, InvalidValue> {
        if text.is_empty() {
            return Err(InvalidValue::new("empty rule", RULE_HELP));
        }
        if let Some(rest) = text.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err(InvalidValue::new("unclosed `[`", RULE_HELP));
            };
            let (prefix, port) = match after.split_once(':') {
                Some((prefix, port)) => (prefix, Some(parse_port(port)?)),
                None => (after, None),
            };
            let target = if let Some(bits) = prefix.strip_prefix('/') {
                RuleTarget::Cidr(parse_cidr(&format!("{inside}/{bits}"))?)
            } else if prefix.is_empty() {
                let ip: std::net::Ipv6Addr = inside.parse().map_err(|_| {
                    InvalidValue::new(format!("`{inside}` is not an IPv6 address"), RULE_HELP)
                })?;
                RuleTarget::Ip(IpAddr::V6(ip))
            } else {
                return Err(InvalidValue::new("unexpected text after `]`", RULE_HELP));
            };
            return Ok(HostRule { target, port });
        }
        if let Ok(ip) = text.parse::<std::net::Ipv6Addr>() {
            return Ok(HostRule {
                target: RuleTarget::Ip(IpAddr::V6(ip)),
                port: None,
            });
        }
        if text.contains('/') && text.contains("::") || text.matches(':').count() > 1 {
            // An IPv6 CIDR without port.
            return Ok(HostRule {
                target: RuleTarget::Cidr(parse_cidr(text)?),
                port: None,
            });
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(parse_port(port)?)),
            None => (text, None),
        };
        let target = if host.contains('/') {
            RuleTarget::Cidr(parse_cidr(host)?)
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            RuleTarget::Ip(IpAddr::V4(ip))
        } else if let Some(suffix) = host.strip_prefix("*.") {
            RuleTarget::Wildcard(normalize_hostname(suffix)?)
        } else if host.contains('*') {
            return Err(InvalidValue::new(
                "`*` may only start a rule, as `*.`",
                "Write a wildcard as `*.example.com`",
            ));
        } else if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(InvalidValue::new(
                format!("`{host}` is not an IP address"),
                RULE_HELP,
            ));
        } else {
            RuleTarget::Host(normalize_hostname(host)?)
        };
        Ok(HostRule { target, port })
    }

    /// Whether the rule matches the host name `host` (already normalised), on any port.
    pub fn matches_host(&self, host: &str) -> bool {
        match &self.target {
            RuleTarget::Host(h) => h == host,
            RuleTarget::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            _ => false,
        }
    }
}

impl std::str::FromStr for HostRule {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostRule::parse(s)
    }
}

impl GpuLayers {
    /// Parses `auto` or a layer count.
    pub fn parse(text: &str) -> Result<GpuLayers, InvalidValue> {
        if text == "auto" {
            return Ok(GpuLayers::Auto);
        }
        text.parse::<u32>().map(GpuLayers::Count).map_err(|_| {
            InvalidValue::new("not a layer count", "Write a number of layers or `auto`")
        })
    }
}

impl std::str::FromStr for GpuLayers {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GpuLayers::parse(s)
    }
}

/// Whether `text` starts like a path: `./`, `../` or `/`.
pub fn is_path(text: &str) -> bool {
    text.starts_with("./") || text.starts_with("../") || text.starts_with('/')
}

fn is_repo_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let bytes = c.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut prev_sep: Option<u8> = None;
    let mut run = 0;
    for &b in bytes {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            prev_sep = None;
            run = 0;
        } else if matches!(b, b'.' | b'_' | b'-') {
            run += 1;
            let ok = match (prev_sep, b) {
                (None, _) => true,
                (Some(b'_'), b'_') => run <= 2,
                (Some(b'-'), b'-') => true,
                _ => false,
            };
            if !ok {
                return false;
            }
            prev_sep = Some(b);
        } else {
            return false;
        }
    }
    true
}

fn is_registry(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

impl OciRef {
    /// Parses a model reference as Docker Model Runner does: a bare name is `ai/NAME` on
    /// Docker Hub (`smollm2` is `docker.io/ai/smollm2:latest`).
    pub fn parse_model(text: &str) -> Result<OciRef, InvalidValue> {
        OciRef::parse(text, "ai")
    }

    /// Parses an image reference as Docker does: a bare name is `library/NAME` on Docker
    /// Hub (`debian` is `docker.io/library/debian:latest`).
    pub fn parse_image(text: &str) -> Result<OciRef, InvalidValue> {
        OciRef::parse(text, "library")
    }

    /// Parses `[REGISTRY/]REPOSITORY[:TAG][@sha256:DIGEST]`, putting a one-component
    /// repository on Docker Hub under `namespace`.
    pub fn parse(text: &str, namespace: &str) -> Result<OciRef, InvalidValue> {
        let help = "Write an OCI reference such as `ai/smollm2:135M-Q4_1` or `127.0.0.1:5000/ai/smollm2@sha256:<64 hex digits>`, or a path starting with `./`";
        if text.is_empty() {
            return Err(InvalidValue::new("empty reference", help));
        }
        if text.len() > 255 + 80 {
            return Err(InvalidValue::new("reference too long", help));
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => {
                let hex = digest.strip_prefix("sha256:").unwrap_or("");
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
                {
                    return Err(InvalidValue::new(
                        "invalid digest",
                        "Write a digest as `sha256:` followed by 64 lower-case hex digits",
                    ));
                }
                (name, Some(digest.to_owned()))
            }
            None => (text, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                let valid = !tag.is_empty()
                    && tag.len() <= 128
                    && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                    && tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                if !valid {
                    return Err(InvalidValue::new(format!("invalid tag `{tag}`"), help));
                }
                (&name[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1 {
            let first = parts[0];
            if first.contains('.') || first.contains(':') || first == "localhost" {
                if !is_registry(first) {
                    return Err(InvalidValue::new(
                        format!("invalid registry `{first}`"),
                        help,
                    ));
                }
                parts.remove(0);
                Some(first)
            } else {
                None
            }
        } else {
            None
        };
        for part in &parts {
            if !is_repo_component(part) {
                let reason = if part.chars().any(|c| c.is_ascii_uppercase()) {
                    format!("repository names must be lower-case, found `{part}`")
                } else {
                    format!("`{part}` is not a valid repository name component")
                };
                return Err(InvalidValue::new(reason, help));
            }
        }
        let registry = match registry {
            None | Some("index.docker.io" | "registry-1.docker.io") => "docker.io",
            Some(r) => r,
        };
        let mut repository = parts.join("/");
        if registry == "docker.io" && parts.len() == 1 {
            repository = format!("{namespace}/{repository}");
        }
        if repository.len() > 255 {
            return Err(InvalidValue::new("repository name too long", help));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(OciRef {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

impl Source {
    /// Parses a model source: a path (`./`, `../`, `/`) or an OCI reference.
    pub fn parse(text: &str) -> Result<Source, InvalidValue> {
        if is_path(text) {
            return Ok(Source::Local(text.to_owned()));
        }
        OciRef::parse_model(text).map(Source::Oci)
    }
}

impl std::str::FromStr for Source {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let p = |t: &str| ByteSize::parse(t).map(|b| b.0);
        assert_eq!(p("512MiB"), Ok(512 << 20));
        assert_eq!(p("2GiB"), Ok(2 << 30));
        assert_eq!(p("2G"), Ok(2 << 30));
        assert_eq!(p("100KB"), Ok(102_400));
        assert_eq!(p("1.5GiB"), Ok(3 << 29));
        assert_eq!(p("4096"), Ok(4096));
        assert_eq!(p(" 2 gb "), Ok(2 << 30));
        assert_eq!(p("10b"), Ok(10));
        assert!(p("2XB").is_err());
        assert!(p("GiB").is_err());
        assert!(p("1.GiB").is_err());
        assert!(p("2GIB").is_err());
        assert!(p("99999999999T").is_err());
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(98_362_432), "93.8 MiB");
        assert_eq!(human_size(300 << 20), "300 MiB");
        assert_eq!(human_size(1_288_490_189), "1.2 GiB");
        assert_eq!(human_size(8 << 30), "8.0 GiB");
        assert_eq!(human_size(3 << 50), "3.0 PiB");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert!(KeepAlive::from_integer(300).is_err());
    }

    #[test]
    fn listen_and_ports() {
        assert_eq!(
            parse_listen("localhost:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_listen("example.com:80").is_err());
        assert!(parse_listen("127.0.0.1:0").is_err());
        assert!(parse_listen("127.0.0.1:65536").is_err());
        let m = PortMapping::parse("8080:3000").unwrap();
        assert_eq!(m.to_string(), "127.0.0.1:8080:3000");
        assert_eq!(
            PortMapping::parse("[::1]:1:2").unwrap().to_string(),
            "[::1]:1:2"
        );
        assert!(PortMapping::parse("1:2:3:4").is_err());
        assert!(PortMapping::parse("8080").is_err());
    }

    #[test]
    fn host_rules() {
        let r = |t: &str| HostRule::parse(t).map(|r| r.to_string());
        assert_eq!(r("API.Example.COM."), Ok("api.example.com".into()));
        assert_eq!(r("*.npmjs.org"), Ok("*.npmjs.org".into()));
        assert_eq!(r("10.1.2.3:22"), Ok("10.1.2.3:22".into()));
        assert_eq!(r("203.0.113.0/24"), Ok("203.0.113.0/24".into()));
        assert_eq!(r("[::1]:443"), Ok("[::1]:443".into()));
        assert_eq!(r("::1"), Ok("::1".into()));
        assert_eq!(r("2001:db8::/32"), Ok("2001:db8::/32".into()));
        assert_eq!(r("bücher.example"), Ok("xn--bcher-kva.example".into()));
        assert_eq!(
            HostRule::parse("203.0.113.1/24").unwrap_err().reason,
            "host bits are set"
        );
        assert!(r("a*.b").is_err());
        assert!(r("host:0").is_err());
        assert!(r("-bad.com").is_err());
        assert!(r("999.1.1.1").is_err());
        let w = HostRule::parse("*.example.com").unwrap();
        assert!(w.matches_host("a.example.com"));
        assert!(!w.matches_host("example.com"));
        assert!(!w.matches_host("badexample.com"));
    }

    #[test]
    fn references() {
        let m = |t: &str| OciRef::parse_model(t).map(|r| r.to_string());
        assert_eq!(m("ai/smollm2"), Ok("docker.io/ai/smollm2:latest".into()));
        assert_eq!(m("smollm2"), Ok("docker.io/ai/smollm2:latest".into()));
        assert_eq!(
            m("127.0.0.1:5000/ai/smollm2:135M-Q4_1"),
            Ok("127.0.0.1:5000/ai/smollm2:135M-Q4_1".into())
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            m(&format!("ai/x@{digest}")),
            Ok(format!("docker.io/ai/x@{digest}"))
        );
        assert!(m("ai/x@sha256:abc").is_err());
        assert!(m("AI/x").unwrap_err().reason.contains("lower-case"));
        assert!(m("ai/x:").is_err());
        assert!(m("ai//x").is_err());
        assert_eq!(
            OciRef::parse_image("debian:bookworm").unwrap().to_string(),
            "docker.io/library/debian:bookworm"
        );
        assert_eq!(
            Source::parse("./m.gguf"),
            Ok(Source::Local("./m.gguf".into()))
        );
    }
}

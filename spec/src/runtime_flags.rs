//! `runtime_flags` of a llama.cpp model: the llama-server flags the engine understands,
//! parsed once into typed settings.
//!
//! Docker Model Runner passes `runtime_flags` to llama-server through an allowlist; our
//! engine is not llama-server, so the allowlist is the set of flags it implements, spelled
//! as llama-server spells them so a Compose or DMR file carries over. A flag and its value
//! are one entry (`--temp=0.7`), so every entry is checked on its own and the JSON Schema
//! can say the same. Paths are never accepted: no flag here names a file. Request fields
//! (`temperature`, `max_tokens`, ...) override the sampling defaults set here.

use std::fmt;

use serde::Serialize;

/// A KV cache element type (`--cache-type-k`, `--cache-type-v`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats, llama.cpp's default.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit blocks of 32.
    Q8_0,
    /// 4-bit blocks of 32.
    Q4_0,
    /// 4-bit blocks of 32 with a minimum.
    Q4_1,
    /// Non-linear 4-bit blocks of 32.
    Iq4Nl,
    /// 5-bit blocks of 32.
    Q5_0,
    /// 5-bit blocks of 32 with a minimum.
    Q5_1,
}

impl CacheType {
    const ALL: [(&'static str, CacheType); 9] = [
        ("f32", CacheType::F32),
        ("f16", CacheType::F16),
        ("bf16", CacheType::Bf16),
        ("q8_0", CacheType::Q8_0),
        ("q4_0", CacheType::Q4_0),
        ("q4_1", CacheType::Q4_1),
        ("iq4_nl", CacheType::Iq4Nl),
        ("q5_0", CacheType::Q5_0),
        ("q5_1", CacheType::Q5_1),
    ];

    /// Bytes that `elements` values of this type take (ggml's block sizes).
    #[must_use]
    pub fn bytes(self, elements: u64) -> u64 {
        let (block_bytes, block) = match self {
            CacheType::F32 => (4, 1),
            CacheType::F16 | CacheType::Bf16 => (2, 1),
            CacheType::Q8_0 => (34, 32),
            CacheType::Q4_0 | CacheType::Iq4Nl => (18, 32),
            CacheType::Q4_1 => (20, 32),
            CacheType::Q5_0 => (22, 32),
            CacheType::Q5_1 => (24, 32),
        };
        elements.div_ceil(block).saturating_mul(block_bytes)
    }

    /// llama.cpp's name, as the flag takes it.
    #[must_use]
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("f16", |(name, _)| name)
    }
}

/// `--flash-attn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlashAttention {
    /// llama.cpp decides per device (on for CPUs), as llama-server does by default.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: results then do not depend on how a prompt was split into batches, so a
    /// reply after a cached prefix is bit-for-bit the reply without it.
    Off,
}

impl fmt::Display for FlashAttention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlashAttention::Auto => "auto",
            FlashAttention::On => "on",
            FlashAttention::Off => "off",
        })
    }
}

/// Sampling defaults for requests that do not set their own.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SamplingDefaults {
    /// `--temp`.
    pub temperature: Option<f32>,
    /// `--top-k`.
    pub top_k: Option<i32>,
    /// `--top-p`.
    pub top_p: Option<f32>,
    /// `--min-p`.
    pub min_p: Option<f32>,
    /// `--repeat-penalty`.
    pub repeat_penalty: Option<f32>,
    /// `--repeat-last-n`; -1: the whole context.
    pub repeat_last_n: Option<i32>,
    /// `--presence-penalty`.
    pub presence_penalty: Option<f32>,
    /// `--frequency-penalty`.
    pub frequency_penalty: Option<f32>,
    /// `--seed`; `None` or -1: random.
    pub seed: Option<u32>,
    /// `--n-predict`: the most tokens a reply may have; `None` or -1: until the context is
    /// full.
    pub max_tokens: Option<u32>,
}

/// What a llama.cpp model's `runtime_flags` set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LlamaFlags {
    /// `--batch-size`: the most tokens decoded in one step.
    pub batch_size: Option<u32>,
    /// `--ubatch-size`: the most tokens in one compute graph.
    pub ubatch_size: Option<u32>,
    /// `--threads-batch`: threads for prompt evaluation; default: `threads`.
    pub threads_batch: Option<u32>,
    /// `--flash-attn`.
    pub flash_attention: FlashAttention,
    /// `--cache-type-k`; default f16.
    pub cache_type_k: Option<CacheType>,
    /// `--cache-type-v`; default f16.
    pub cache_type_v: Option<CacheType>,
    /// `--mlock`: keep the weights in RAM.
    pub mlock: bool,
    /// `--no-mmap`: read the weights instead of mapping them.
    pub no_mmap: bool,
    /// `--rope-freq-base`.
    pub rope_freq_base: Option<f32>,
    /// `--rope-freq-scale`.
    pub rope_freq_scale: Option<f32>,
    /// Defaults for requests.
    pub sampling: SamplingDefaults,
}

impl LlamaFlags {
    /// Bytes a KV cache of `elements` values each for K and V takes, in the cache types
    /// these flags name (f16 by default).
    #[must_use]
    pub fn kv_cache_bytes(&self, elements: u64) -> u64 {
        let of = |t: Option<CacheType>| t.unwrap_or(CacheType::F16).bytes(elements);
        of(self.cache_type_k).saturating_add(of(self.cache_type_v))
    }
}

/// One entry of `runtime_flags` that is not allowed or not well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    /// Which entry.
    pub index: usize,
    /// The message, naming the flag.
    pub message: String,
    /// What is wrong, lower-case, shown under the entry.
    pub label: String,
    /// How to fix it.
    pub help: String,
}

type Setter = fn(&mut LlamaFlags, &str) -> Result<(), String>;

/// An allowed flag: its names (llama-server's long name first), an example value (`None`
/// for a switch) and what it sets.
struct Flag {
    names: &'static [&'static str],
    example: Option<&'static str>,
    set: Setter,
}

fn count(text: &str, min: u32) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("not an integer of at least {min}")),
    }
}

fn number(text: &str, min: f32, max: f32) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(x) if x.is_finite() && (min..=max).contains(&x) => Ok(x),
        _ => Err(format!("not a number from {min} to {max}")),
    }
}

/// `-1` for "none", else a non-negative integer.
fn optional_count(text: &str) -> Result<Option<u32>, String> {
    if text == "-1" {
        return Ok(None);
    }
    text.parse::<u32>()
        .map(Some)
        .map_err(|_| "not -1 or a non-negative integer".to_owned())
}

fn cache_type(text: &str) -> Result<CacheType, String> {
    CacheType::ALL
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            let names: Vec<&str> = CacheType::ALL.iter().map(|(name, _)| *name).collect();
            format!("not one of {}", names.join(", "))
        })
}

const FLAGS: &[Flag] = &[
    Flag {
        names: &["--batch-size", "-b"],
        example: Some("512"),
        set: |f, v| {
            f.batch_size = Some(count(v, 1)?);
            Ok(())
        },
    },
    Flag {
        names: &["--ubatch-size", "-ub"],
        example: Some("512"),
        set: |f, v| {
            f.ubatch_size = Some(count(v, 1)?);
            Ok(())
        },
    },
    Flag {
        names: &["--threads-batch", "-tb"],
        example: Some("2"),
        set: |f, v| {
            f.threads_batch = Some(count(v, 1)?);
            Ok(())
        },
    },
    Flag {
        names: &["--flash-attn", "-fa"],
        example: Some("on"),
        set: |f, v| {
            f.flash_attention = match v {
                "on" => FlashAttention::On,
                "off" => FlashAttention::Off,
                "auto" => FlashAttention::Auto,
                _ => return Err("not one of on, off, auto".to_owned()),
            };
            Ok(())
        },
    },
    Flag {
        names: &["--cache-type-k", "-ctk"],
        example: Some("q8_0"),
        set: |f, v| {
            f.cache_type_k = Some(cache_type(v)?);
            Ok(())
        },
    },
    Flag {
        names: &["--cache-type-v", "-ctv"],
        example: Some("q8_0"),
        set: |f, v| {
            f.cache_type_v = Some(cache_type(v)?);
            Ok(())
        },
    },
    Flag {
        names: &["--mlock"],
        example: None,
        set: |f, _| {
            f.mlock = true;
            Ok(())
        },
    },
    Flag {
        names: &["--no-mmap"],
        example: None,
        set: |f, _| {
            f.no_mmap = true;
            Ok(())
        },
    },
    Flag {
        names: &["--rope-freq-base"],
        example: Some("10000"),
        set: |f, v| {
            f.rope_freq_base = Some(number(v, f32::MIN_POSITIVE, f32::MAX)?);
            Ok(())
        },
    },
    Flag {
        names: &["--rope-freq-scale"],
        example: Some("0.5"),
        set: |f, v| {
            f.rope_freq_scale = Some(number(v, f32::MIN_POSITIVE, f32::MAX)?);
            Ok(())
        },
    },
    Flag {
        names: &["--temp"],
        example: Some("0.7"),
        set: |f, v| {
            f.sampling.temperature = Some(number(v, 0.0, 100.0)?);
            Ok(())
        },
    },
    Flag {
        names: &["--top-k"],
        example: Some("40"),
        set: |f, v| {
            f.sampling.top_k = Some(i32::try_from(count(v, 0)?).unwrap_or(i32::MAX));
            Ok(())
        },
    },
    Flag {
        names: &["--top-p"],
        example: Some("0.95"),
        set: |f, v| {
            f.sampling.top_p = Some(number(v, 0.0, 1.0)?);
            Ok(())
        },
    },
    Flag {
        names: &["--min-p"],
        example: Some("0.05"),
        set: |f, v| {
            f.sampling.min_p = Some(number(v, 0.0, 1.0)?);
            Ok(())
        },
    },
    Flag {
        names: &["--repeat-penalty"],
        example: Some("1.1"),
        set: |f, v| {
            f.sampling.repeat_penalty = Some(number(v, 0.0, 100.0)?);
            Ok(())
        },
    },
    Flag {
        names: &["--repeat-last-n"],
        example: Some("64"),
        set: |f, v| {
            let n = optional_count(v)?.map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
            f.sampling.repeat_last_n = Some(n);
            Ok(())
        },
    },
    Flag {
        names: &["--presence-penalty"],
        example: Some("0.5"),
        set: |f, v| {
            f.sampling.presence_penalty = Some(number(v, -2.0, 2.0)?);
            Ok(())
        },
    },
    Flag {
        names: &["--frequency-penalty"],
        example: Some("0.5"),
        set: |f, v| {
            f.sampling.frequency_penalty = Some(number(v, -2.0, 2.0)?);
            Ok(())
        },
    },
    Flag {
        names: &["--seed", "-s"],
        example: Some("42"),
        set: |f, v| {
            f.sampling.seed = optional_count(v)?;
            Ok(())
        },
    },
    Flag {
        names: &["--n-predict", "-n"],
        example: Some("256"),
        set: |f, v| {
            f.sampling.max_tokens = optional_count(v)?;
            Ok(())
        },
    },
];

/// Every allowed spelling, long names first, for the JSON Schema and help texts.
pub fn allowed() -> impl Iterator<Item = &'static str> {
    FLAGS.iter().flat_map(|f| f.names.iter().copied())
}

/// Tells `flags` apart into typed settings, reporting every entry that is not allowed or not
/// well formed. A flag given twice keeps its last value, as llama-server does.
///
/// # Errors
///
/// One [`FlagError`] per bad entry.
pub fn parse(flags: &[String]) -> Result<LlamaFlags, Vec<FlagError>> {
    let mut parsed = LlamaFlags::default();
    let mut errors = Vec::new();
    for (index, entry) in flags.iter().enumerate() {
        if let Err(e) = apply(&mut parsed, entry, flags[..index].last()) {
            errors.push(FlagError { index, ..e });
        }
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(errors)
    }
}

fn find(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.names.contains(&name))
}

fn apply(parsed: &mut LlamaFlags, entry: &str, previous: Option<&String>) -> Result<(), FlagError> {
    let error = |message: String, label: &str, help: String| FlagError {
        index: 0,
        message,
        label: label.to_owned(),
        help,
    };
    let (name, value) = match entry.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (entry, None),
    };
    if !name.starts_with('-') {
        let help = match previous
            .and_then(|p| find(p))
            .filter(|f| f.example.is_some())
        {
            Some(flag) => format!(
                "Write a flag and its value as one entry: `{}={entry}`",
                flag.names[0]
            ),
            None => "Flags start with `-`, e.g. `--temp=0.7`".to_owned(),
        };
        return Err(error(
            format!("Invalid runtime flag `{entry}`"),
            "not a flag",
            help,
        ));
    }
    let Some(flag) = find(name) else {
        let help = match crate::did_you_mean(name, allowed()) {
            Some(close) => format!("Did you mean `{close}`?"),
            None => format!(
                "The engine understands {}",
                FLAGS
                    .iter()
                    .map(|f| format!("`{}`", f.names[0]))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(error(
            format!("Runtime flag `{name}` is not allowed for `llama.cpp`"),
            "not allowed",
            help,
        ));
    };
    let long = flag.names[0];
    match (flag.example, value) {
        (Some(example), None) => Err(error(
            format!("Runtime flag `{long}` needs a value"),
            "no value",
            format!("Write the flag and its value as one entry, e.g. `{long}={example}`"),
        )),
        (None, Some(_)) => Err(error(
            format!("Runtime flag `{long}` takes no value"),
            "a switch",
            format!("Write `{long}` alone"),
        )),
        (example, value) => (flag.set)(parsed, value.unwrap_or_default()).map_err(|reason| {
            error(
                format!("Invalid value for runtime flag `{long}`"),
                &reason,
                format!("Write e.g. `{long}={}`", example.unwrap_or_default()),
            )
        }),
    }
}

/// The JSON Schema pattern an entry must match.
#[must_use]
pub fn entry_pattern() -> String {
    let switches: Vec<&str> = FLAGS
        .iter()
        .filter(|f| f.example.is_none())
        .flat_map(|f| f.names.iter().copied())
        .collect();
    let valued: Vec<&str> = FLAGS
        .iter()
        .filter(|f| f.example.is_some())
        .flat_map(|f| f.names.iter().copied())
        .collect();
    format!("^(({})|({})=.+)$", switches.join("|"), valued.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn llama_server_spellings_set_typed_settings() {
        let parsed = parse(&flags(&[
            "--temp=0.2",
            "-b=256",
            "--ubatch-size=128",
            "-fa=off",
            "-ctk=q8_0",
            "--cache-type-v=F16",
            "--mlock",
            "--seed=-1",
            "-n=64",
            "--repeat-last-n=-1",
            "--temp=0.3",
        ]))
        .unwrap();
        assert_eq!(parsed.sampling.temperature, Some(0.3), "the last one wins");
        assert_eq!(parsed.batch_size, Some(256));
        assert_eq!(parsed.ubatch_size, Some(128));
        assert_eq!(parsed.flash_attention, FlashAttention::Off);
        assert_eq!(parsed.cache_type_k, Some(CacheType::Q8_0));
        assert_eq!(parsed.cache_type_v, Some(CacheType::F16));
        assert!(parsed.mlock && !parsed.no_mmap);
        assert_eq!(parsed.sampling.seed, None);
        assert_eq!(parsed.sampling.max_tokens, Some(64));
        assert_eq!(parsed.sampling.repeat_last_n, Some(-1));
        assert_eq!(parse(&[]).unwrap(), LlamaFlags::default());
    }

    #[test]
    fn every_bad_entry_is_reported_with_its_fix() {
        let errors = parse(&flags(&[
            "--temp",
            "0.7",
            "--log-file=/etc/passwd",
            "--tmep=1",
            "--mlock=yes",
            "--top-p=2",
            "-ctk=q2",
        ]))
        .unwrap_err();
        let got: Vec<(usize, &str, &str)> = errors
            .iter()
            .map(|e| (e.index, e.message.as_str(), e.help.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    0,
                    "Runtime flag `--temp` needs a value",
                    "Write the flag and its value as one entry, e.g. `--temp=0.7`"
                ),
                (
                    1,
                    "Invalid runtime flag `0.7`",
                    "Write a flag and its value as one entry: `--temp=0.7`"
                ),
                (
                    2,
                    "Runtime flag `--log-file` is not allowed for `llama.cpp`",
                    got[2].2
                ),
                (
                    3,
                    "Runtime flag `--tmep` is not allowed for `llama.cpp`",
                    "Did you mean `--temp`?"
                ),
                (
                    4,
                    "Runtime flag `--mlock` takes no value",
                    "Write `--mlock` alone"
                ),
                (
                    5,
                    "Invalid value for runtime flag `--top-p`",
                    "Write e.g. `--top-p=0.95`"
                ),
                (
                    6,
                    "Invalid value for runtime flag `--cache-type-k`",
                    "Write e.g. `--cache-type-k=q8_0`"
                ),
            ]
        );
        assert!(
            got[2]
                .2
                .starts_with("The engine understands `--batch-size`")
        );
        assert_eq!(errors[5].label, "not a number from 0 to 1");
    }

    #[test]
    fn cache_types_take_ggml_block_sizes() {
        assert_eq!(CacheType::F16.bytes(64), 128);
        assert_eq!(CacheType::Q8_0.bytes(64), 68);
        assert_eq!(CacheType::Q4_0.bytes(64), 36);
        assert_eq!(CacheType::F32.bytes(3), 12);
        assert_eq!(CacheType::Q8_0.name(), "q8_0");
    }

    #[test]
    fn the_schema_pattern_names_every_flag() {
        let pattern = entry_pattern();
        for name in allowed() {
            assert!(pattern.contains(name), "{name}");
        }
        assert!(pattern.starts_with("^((--mlock|--no-mmap)|(--batch-size|-b|"));
    }
}

//! `/metrics` in Prometheus' text format, written by hand: a few counters, one histogram and
//! gauges read from the models at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use aistack_engine_api::Usage;

use crate::models::Models;

/// Upper bounds of the time-to-first-token buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Data {
    requests: BTreeMap<(String, &'static str, u16), u64>,
    prompt_tokens: BTreeMap<String, u64>,
    cached_tokens: BTreeMap<String, u64>,
    completion_tokens: BTreeMap<String, u64>,
    first_token: BTreeMap<String, Histogram>,
    tokens_per_second: BTreeMap<String, f64>,
}

/// The gateway's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    data: Mutex<Data>,
}

/// Marks a response with the model it was for, so the request counter can label it.
#[derive(Debug, Clone)]
pub(crate) struct ModelLabel(pub(crate) String);

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn request(&self, model: &str, api: &'static str, code: u16) {
        *self
            .lock()
            .requests
            .entry((model.to_owned(), api, code))
            .or_default() += 1;
    }

    /// A finished generation's counts and speed.
    pub(crate) fn generation(&self, model: &str, usage: &Usage) {
        let mut data = self.lock();
        *data.prompt_tokens.entry(model.to_owned()).or_default() += u64::from(usage.prompt_tokens);
        *data.cached_tokens.entry(model.to_owned()).or_default() += u64::from(usage.cached_tokens);
        *data.completion_tokens.entry(model.to_owned()).or_default() +=
            u64::from(usage.completion_tokens);
        let seconds = usage.time_to_first_token_ms / 1e3;
        let histogram = data.first_token.entry(model.to_owned()).or_default();
        for (count, bound) in histogram.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.sum += seconds;
        histogram.count += 1;
        if usage.decode_ms > 0.0 && usage.completion_tokens > 1 {
            let rate = f64::from(usage.completion_tokens - 1) * 1e3 / usage.decode_ms;
            data.tokens_per_second.insert(model.to_owned(), rate);
        }
    }

    /// Embedding requests count their input tokens too.
    pub(crate) fn prompt_tokens(&self, model: &str, tokens: u32) {
        *self
            .lock()
            .prompt_tokens
            .entry(model.to_owned())
            .or_default() += u64::from(tokens);
    }

    pub(crate) fn render(&self, models: &Models) -> String {
        let data = self.lock();
        let mut text = String::from(
            "# HELP aistack_requests_total Requests answered, by model, API and status code.\n\
             # TYPE aistack_requests_total counter\n",
        );
        for ((model, api, code), n) in &data.requests {
            let _ = writeln!(
                text,
                "aistack_requests_total{{model=\"{}\",api=\"{api}\",code=\"{code}\"}} {n}",
                escape(model)
            );
        }
        let counter =
            |text: &mut String, name: &str, help: &str, values: &BTreeMap<String, u64>| {
                let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} counter");
                for (model, n) in values {
                    let _ = writeln!(text, "{name}{{model=\"{}\"}} {n}", escape(model));
                }
            };
        counter(
            &mut text,
            "aistack_prompt_tokens_total",
            "Prompt tokens received.",
            &data.prompt_tokens,
        );
        counter(
            &mut text,
            "aistack_prompt_cached_tokens_total",
            "Prompt tokens found in the engine's cache, not evaluated again.",
            &data.cached_tokens,
        );
        counter(
            &mut text,
            "aistack_completion_tokens_total",
            "Tokens generated.",
            &data.completion_tokens,
        );
        let name = "aistack_time_to_first_token_seconds";
        let _ = writeln!(
            text,
            "# HELP {name} Time from a request reaching the engine to its first token.\n# TYPE {name} histogram"
        );
        for (model, h) in &data.first_token {
            let model = escape(model);
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    text,
                    "{name}_bucket{{model=\"{model}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                text,
                "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(text, "{name}_sum{{model=\"{model}\"}} {}", h.sum);
            let _ = writeln!(text, "{name}_count{{model=\"{model}\"}} {}", h.count);
        }
        let name = "aistack_decode_tokens_per_second";
        let _ = writeln!(
            text,
            "# HELP {name} Decode speed of the last generation.\n# TYPE {name} gauge"
        );
        for (model, rate) in &data.tokens_per_second {
            let _ = writeln!(text, "{name}{{model=\"{}\"}} {rate:.3}", escape(model));
        }
        drop(data);
        let entries = models.configs();
        let _ = writeln!(
            text,
            "# HELP aistack_queue_depth Requests waiting for a sequence.\n# TYPE aistack_queue_depth gauge"
        );
        for e in &entries {
            let _ = writeln!(
                text,
                "aistack_queue_depth{{model=\"{}\"}} {}",
                escape(&e.config.name),
                e.queue_depth()
            );
        }
        let loaded: Vec<_> = entries
            .iter()
            .filter_map(|e| e.loaded_info().map(|i| (e, i)))
            .collect();
        let _ = writeln!(
            text,
            "# HELP aistack_models_loaded Models with a running engine.\n# TYPE aistack_models_loaded gauge\naistack_models_loaded {}",
            loaded.len()
        );
        let _ = writeln!(
            text,
            "# HELP aistack_model_memory_bytes Memory a loaded model takes, as its engine estimates.\n# TYPE aistack_model_memory_bytes gauge"
        );
        for (e, info) in loaded {
            let _ = writeln!(
                text,
                "aistack_model_memory_bytes{{model=\"{}\"}} {}",
                escape(&e.config.name),
                info.memory_bytes
            );
        }
        text
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        let usage = |ms| Usage {
            prompt_tokens: 10,
            cached_tokens: 4,
            completion_tokens: 5,
            time_to_first_token_ms: ms,
            prompt_ms: 1.0,
            decode_ms: 40.0,
        };
        metrics.generation("chat", &usage(7.0));
        metrics.generation("chat", &usage(300.0));
        let data = metrics.lock();
        let h = &data.first_token["chat"];
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[1], 1, "7 ms is within 10 ms");
        assert_eq!(h.counts[6], 2, "both within 0.5 s");
        assert_eq!(data.prompt_tokens["chat"], 20);
        assert_eq!(data.cached_tokens["chat"], 8);
        assert_eq!(data.tokens_per_second["chat"], 100.0);
    }
}

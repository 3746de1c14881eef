//! Prometheus metrics in the text exposition format (version 0.0.4), written by hand: a few
//! gauges, counters and two histograms do not need a metrics framework.
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds in seconds (latencies from sub-millisecond GPU steps to slow CPUs).
const BUCKETS: [f64; 19] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// A cumulative histogram.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (c, &b) in self.counts.iter_mut().zip(&BUCKETS) {
            if s <= b {
                *c += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.write_series(out, name, "");
    }

    /// The series of one histogram; `label` (`key="value"` or empty) is added to each.
    fn write_series(&self, out: &mut String, name: &str, label: &str) {
        let sep = if label.is_empty() { "" } else { "," };
        for (c, b) in self.counts.iter().zip(&BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{label}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(label), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", braces(label), self.count);
    }
}

/// Why a request left the engine (a label of `ferrinfer_requests_finished_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A stop token or a stop sequence.
    Stop,
    /// `max_tokens` or the context.
    Length,
    /// The client went away or a stop sequence ended it early.
    Cancelled,
    /// The engine could not run it.
    Error,
}

const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Stop, "stop"),
    (Outcome::Length, "length"),
    (Outcome::Cancelled, "cancelled"),
    (Outcome::Error, "error"),
];

/// The server's metrics: gauges set by the engine thread after every step, counters, and the
/// latency histograms.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests running in the engine.
    pub running: AtomicU64,
    /// Requests waiting for admission (in the engine's queue).
    pub waiting: AtomicU64,
    /// Requests accepted and not yet finished (running + waiting + in the channel).
    pub in_flight: AtomicU64,
    /// KV pages held by sequences.
    pub kv_pages_used: AtomicU64,
    /// KV pages free.
    pub kv_pages_free: AtomicU64,
    /// KV pages held by kept prefixes (prefix cache; running requests may share them).
    pub kv_pages_cached: AtomicU64,
    /// Requests admitted with a cached prefix.
    pub prefix_hits: AtomicU64,
    /// Prompt tokens not recomputed thanks to cached prefixes.
    pub prefix_tokens: AtomicU64,
    /// Tokens per KV page.
    pub kv_page_size: AtomicU64,
    /// Generated tokens.
    pub generated_tokens: AtomicU64,
    /// Prompt tokens of accepted requests.
    pub prompt_tokens: AtomicU64,
    /// Engine steps.
    pub steps: AtomicU64,
    /// Preemptions (pages freed, request recomputed later).
    pub preemptions: AtomicU64,
    /// Generated tokens per second over the last second or so (f64 bits).
    pub tokens_per_second: AtomicU64,
    /// Requests refused with 429.
    pub rejected_queue_full: AtomicU64,
    /// Requests refused with another 4xx.
    pub rejected_invalid: AtomicU64,
    finished: [AtomicU64; 4],
    hist: Mutex<(Histogram, Histogram, Histogram)>,
    /// Engine step durations: decode-only steps, and steps with prompt chunks.
    steps_hist: Mutex<[Histogram; 2]>,
}

/// What an engine step carried (a label of `ferrinfer_engine_step_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Every sequence brought one token.
    Decode,
    /// Prompt chunks, alone or with decode tokens.
    Mixed,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// Counts a finished request.
    pub fn finished(&self, o: Outcome) {
        if let Some(i) = OUTCOMES.iter().position(|(x, _)| *x == o) {
            self.finished[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests finished with outcome `o`.
    pub fn finished_count(&self, o: Outcome) -> u64 {
        OUTCOMES
            .iter()
            .position(|(x, _)| *x == o)
            .map_or(0, |i| get(&self.finished[i]))
    }

    /// Records a time to first token.
    pub fn ttft(&self, d: Duration) {
        if let Ok(mut h) = self.hist.lock() {
            h.0.observe(d);
        }
    }

    /// Records the time between two tokens of a request.
    pub fn itl(&self, d: Duration) {
        if let Ok(mut h) = self.hist.lock() {
            h.1.observe(d);
        }
    }

    /// Records a request's time from arrival to its last token.
    pub fn e2e(&self, d: Duration) {
        if let Ok(mut h) = self.hist.lock() {
            h.2.observe(d);
        }
    }

    /// Records an engine step's wall time (scheduling, the forward pass, the tokens' routing).
    pub fn step(&self, kind: StepKind, d: Duration) {
        if let Ok(mut h) = self.steps_hist.lock() {
            h[kind as usize].observe(d);
        }
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "ferrinfer_num_requests_running",
            "Requests running in the engine.",
            get(&self.running).to_string(),
        );
        gauge(
            "ferrinfer_num_requests_waiting",
            "Requests waiting for admission.",
            get(&self.waiting).to_string(),
        );
        gauge(
            "ferrinfer_num_requests_in_flight",
            "Requests accepted and not finished.",
            get(&self.in_flight).to_string(),
        );
        gauge(
            "ferrinfer_kv_pages_used",
            "KV cache pages held by sequences.",
            get(&self.kv_pages_used).to_string(),
        );
        gauge(
            "ferrinfer_kv_pages_free",
            "KV cache pages free.",
            get(&self.kv_pages_free).to_string(),
        );
        gauge(
            "ferrinfer_kv_pages_cached",
            "KV cache pages held by kept prefixes (running requests may share some).",
            get(&self.kv_pages_cached).to_string(),
        );
        gauge(
            "ferrinfer_kv_page_size_tokens",
            "Tokens per KV cache page.",
            get(&self.kv_page_size).to_string(),
        );
        gauge(
            "ferrinfer_generation_tokens_per_second",
            "Generated tokens per second over the last second.",
            f64::from_bits(get(&self.tokens_per_second)).to_string(),
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "ferrinfer_generation_tokens_total",
            "Tokens generated.",
            get(&self.generated_tokens),
        );
        counter(
            "ferrinfer_prompt_tokens_total",
            "Prompt tokens of accepted requests.",
            get(&self.prompt_tokens),
        );
        counter(
            "ferrinfer_engine_steps_total",
            "Engine steps run.",
            get(&self.steps),
        );
        counter(
            "ferrinfer_preemptions_total",
            "Requests preempted (KV pages freed, recomputed later).",
            get(&self.preemptions),
        );
        counter(
            "ferrinfer_prefix_cache_hits_total",
            "Requests admitted with a cached prompt prefix.",
            get(&self.prefix_hits),
        );
        counter(
            "ferrinfer_prefix_cache_tokens_total",
            "Prompt tokens not recomputed thanks to cached prefixes.",
            get(&self.prefix_tokens),
        );
        let _ = writeln!(
            o,
            "# HELP ferrinfer_requests_finished_total Requests that left the engine, by reason.\n\
             # TYPE ferrinfer_requests_finished_total counter"
        );
        for (i, (_, label)) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "ferrinfer_requests_finished_total{{reason=\"{label}\"}} {}",
                get(&self.finished[i])
            );
        }
        let _ = writeln!(
            o,
            "# HELP ferrinfer_requests_rejected_total Requests refused before reaching the engine.\n\
             # TYPE ferrinfer_requests_rejected_total counter\n\
             ferrinfer_requests_rejected_total{{reason=\"queue_full\"}} {}\n\
             ferrinfer_requests_rejected_total{{reason=\"invalid\"}} {}",
            get(&self.rejected_queue_full),
            get(&self.rejected_invalid)
        );
        if let Ok(h) = self.hist.lock() {
            h.0.write(
                &mut o,
                "ferrinfer_time_to_first_token_seconds",
                "Time from a request's arrival to its first token.",
            );
            h.1.write(
                &mut o,
                "ferrinfer_inter_token_latency_seconds",
                "Time between consecutive tokens of a request.",
            );
            h.2.write(
                &mut o,
                "ferrinfer_request_latency_seconds",
                "Time from a request's arrival to its end.",
            );
        }
        if let Ok(h) = self.steps_hist.lock() {
            let name = "ferrinfer_engine_step_seconds";
            let _ = writeln!(
                o,
                "# HELP {name} Wall time of an engine step, by what it carried.\n\
                 # TYPE {name} histogram"
            );
            h[StepKind::Decode as usize].write_series(&mut o, name, "kind=\"decode\"");
            h[StepKind::Mixed as usize].write_series(&mut o, name, "kind=\"mixed\"");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(70));
        let mut s = String::new();
        h.write(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.001\"} 0\n"));
        assert!(s.contains("x_bucket{le=\"0.005\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"0.08\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 2\n"));
        assert!(s.contains("x_count 2\n"));
        let mut s = String::new();
        h.write_series(&mut s, "y", "kind=\"a\"");
        assert!(s.contains("y_bucket{kind=\"a\",le=\"0.005\"} 1\n"), "{s}");
        assert!(s.contains("y_count{kind=\"a\"} 2\n"), "{s}");
    }

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.finished(Outcome::Stop);
        m.ttft(Duration::from_millis(5));
        m.step(StepKind::Mixed, Duration::from_millis(2));
        let s = m.render();
        for name in [
            "ferrinfer_num_requests_running 0",
            "ferrinfer_num_requests_waiting 0",
            "ferrinfer_kv_pages_used 0",
            "ferrinfer_kv_pages_free 0",
            "ferrinfer_kv_pages_cached 0",
            "ferrinfer_prefix_cache_hits_total 0",
            "ferrinfer_generation_tokens_total 0",
            "ferrinfer_requests_finished_total{reason=\"stop\"} 1",
            "ferrinfer_time_to_first_token_seconds_count 1",
            "ferrinfer_inter_token_latency_seconds_count 0",
            "ferrinfer_engine_step_seconds_count{kind=\"decode\"} 0",
            "ferrinfer_engine_step_seconds_count{kind=\"mixed\"} 1",
        ] {
            assert!(s.contains(name), "{name} missing from\n{s}");
        }
    }
}

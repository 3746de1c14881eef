//! A small bounded load generator for an OpenAI-compatible server on loopback: open-loop
//! arrivals at a fixed rate (request i starts at i / rate seconds, whether or not earlier ones
//! finished) or closed-loop streams (`concurrency` clients, each sending its next request when
//! the last one ends), a fixed number of streaming requests, a fixed deadline; reports
//! requests/s, time to first token and inter-token latency percentiles, tokens/s, the mean
//! prompt and completion lengths the server counted, and errors.
//!
//! Open loop, the generator must not hide its own lateness (coordinated omission): time to
//! first token counts from the request's *scheduled* arrival, and the report gives the arrival
//! rate actually achieved and how late requests started, so a client that cannot keep up is
//! seen as such rather than as a slow server.
#![allow(dead_code)]
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One load level.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://127.0.0.1:PORT` (loopback only: anything else is refused).
    pub base: String,
    /// Arrivals per second (open loop; ignored with `concurrency`).
    pub rate: f64,
    /// Closed loop: this many streams, each sending its next request when the last ends.
    pub concurrency: Option<usize>,
    /// Ask the server to run every request to `max_tokens` (vLLM's `ignore_eos`).
    pub ignore_eos: bool,
    /// Requests sent.
    pub requests: usize,
    /// `max_tokens` of each request (cycled).
    pub max_tokens: Vec<usize>,
    /// User messages (cycled); every request shares `system`.
    pub prompts: Vec<String>,
    /// The shared system prompt.
    pub system: String,
    /// Bearer token.
    pub api_key: Option<String>,
    /// Give up on a request after this long.
    pub timeout: Duration,
}

/// What one level measured.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Arrival rate asked for (open loop).
    pub rate: f64,
    /// Streams (closed loop).
    pub concurrency: Option<usize>,
    /// Requests sent.
    pub requests: usize,
    /// Requests that streamed to `[DONE]`.
    pub ok: usize,
    /// Requests answered 429.
    pub rejected_429: usize,
    /// Any other failure.
    pub errors: usize,
    /// First error message seen.
    pub first_error: Option<String>,
    /// Wall time from the first arrival to the last completion.
    pub elapsed: Duration,
    /// Completed requests per second.
    pub requests_per_s: f64,
    /// Open loop: requests started per second, first to last start (the rate really offered).
    pub arrivals_per_s: f64,
    /// Open loop: how late a request started after its scheduled arrival, 99th percentile.
    pub start_lag_p99: Duration,
    /// Text chunks received per second (≈ tokens/s).
    pub tokens_per_s: f64,
    /// Time to first token.
    pub ttft_p50: Duration,
    /// Time to first token, 99th percentile.
    pub ttft_p99: Duration,
    /// Inter-token latency, median.
    pub itl_p50: Duration,
    /// Inter-token latency, 99th percentile.
    pub itl_p99: Duration,
    /// Mean prompt tokens per completed request (the server's usage counts).
    pub prompt_tokens: f64,
    /// Mean completion tokens per completed request (the server's usage counts).
    pub completion_tokens: f64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let level = match self.concurrency {
            Some(c) => format!("{c:>4} streams"),
            None => format!(
                "rate {:>6.1}/s (started {:.1}/s, start lag p99 {:.1} ms)",
                self.rate,
                self.arrivals_per_s,
                ms(self.start_lag_p99)
            ),
        };
        write!(
            f,
            "{level}: {} sent, {} ok, {} × 429, {} errors in {:.2} s → {:.2} req/s, \
             {:.1} tok/s, TTFT p50 {:.1} ms p99 {:.1} ms, ITL p50 {:.1} ms p99 {:.1} ms, \
             mean {:.0} prompt / {:.1} completion tokens",
            self.requests,
            self.ok,
            self.rejected_429,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.requests_per_s,
            self.tokens_per_s,
            ms(self.ttft_p50),
            ms(self.ttft_p99),
            ms(self.itl_p50),
            ms(self.itl_p99),
            self.prompt_tokens,
            self.completion_tokens,
        )
    }
}

/// Whether `base` names a loopback host.
pub fn is_loopback(base: &str) -> bool {
    let rest = base.strip_prefix("http://").unwrap_or("");
    let host = rest.split('/').next().unwrap_or("");
    let host = if let Some(h) = host.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// A request's outcome, with when it really started and how late that was (every request,
/// refused or failed ones included: they were offered too).
struct Sent {
    started: Instant,
    lag: Duration,
    outcome: Outcome,
}

enum Outcome {
    Ok {
        /// From the scheduled arrival (open loop) or the send (closed loop).
        ttft: Duration,
        itl: Vec<Duration>,
        chunks: usize,
        usage: Option<(u64, u64)>,
    },
    TooMany,
    Failed(String),
}

/// Sends request `i`, scheduled at `due` (open loop; closed loop: now).
async fn one(client: reqwest::Client, cfg: Arc<LoadConfig>, i: usize, due: Instant) -> Sent {
    let started = Instant::now();
    Sent {
        started,
        lag: started.saturating_duration_since(due),
        outcome: send(client, cfg, i, due.min(started)).await,
    }
}

/// Streams request `i`; time to first token counts from `from`.
async fn send(client: reqwest::Client, cfg: Arc<LoadConfig>, i: usize, from: Instant) -> Outcome {
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": cfg.system},
            {"role": "user", "content": cfg.prompts[i % cfg.prompts.len()]},
        ],
        "max_tokens": cfg.max_tokens[i % cfg.max_tokens.len()],
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "ignore_eos": cfg.ignore_eos,
    });
    let t0 = Instant::now();
    let mut req = client
        .post(format!("{}/v1/chat/completions", cfg.base))
        .json(&body)
        .timeout(cfg.timeout);
    if let Some(k) = &cfg.api_key {
        req = req.bearer_auth(k);
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("send: {e}")),
    };
    if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Outcome::TooMany;
    }
    if !resp.status().is_success() {
        let s = resp.status();
        return Outcome::Failed(format!("{s}: {}", resp.text().await.unwrap_or_default()));
    }
    let mut buf = String::new();
    let mut first = None;
    let mut last = t0;
    let mut itl = Vec::new();
    let mut chunks = 0;
    let mut done = false;
    let mut usage = None;
    loop {
        let c = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Outcome::Failed(format!("read: {e}")),
        };
        buf.push_str(&String::from_utf8_lossy(&c));
        while let Some(p) = buf.find("\n\n") {
            let ev: String = buf.drain(..p + 2).collect();
            let data = ev.trim().strip_prefix("data: ").unwrap_or("").to_string();
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: serde_json::Value = match serde_json::from_str(&data) {
                Ok(v) => v,
                Err(e) => return Outcome::Failed(format!("bad chunk {data:?}: {e}")),
            };
            if v.get("error").is_some() {
                return Outcome::Failed(format!("error event: {data}"));
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                let n = |k: &str| u[k].as_u64().unwrap_or(0);
                usage = Some((n("prompt_tokens"), n("completion_tokens")));
            }
            let has_text = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match first {
                    None => first = Some(now - from),
                    Some(_) => itl.push(now - last),
                }
                last = now;
                chunks += 1;
            }
        }
    }
    if !done {
        return Outcome::Failed("stream ended without [DONE]".into());
    }
    Outcome::Ok {
        ttft: first.unwrap_or(last - from),
        itl,
        chunks,
        usage,
    }
}

/// Runs one level; every request is bounded by `cfg.timeout`, so this ends by itself.
pub async fn run(client: &reqwest::Client, cfg: &LoadConfig) -> LoadReport {
    assert!(
        is_loopback(&cfg.base),
        "the load test only targets loopback, not {}",
        cfg.base
    );
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(cfg.requests);
    // Shared, not cloned per request: at thousands of arrivals per second a per-request copy
    // of every prompt would make the generator itself the bottleneck.
    let cfg = Arc::new(cfg.clone());
    match cfg.concurrency {
        None => {
            for i in 0..cfg.requests {
                let at = t0 + Duration::from_secs_f64(i as f64 / cfg.rate);
                tokio::time::sleep_until(at.into()).await;
                tasks.push(tokio::spawn(one(client.clone(), cfg.clone(), i, at)));
            }
        }
        Some(streams) => {
            // Each stream takes the next request index until all are sent.
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..streams.max(1) {
                let (client, cfg, next) = (client.clone(), cfg.clone(), next.clone());
                workers.push(tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= cfg.requests {
                            return done;
                        }
                        done.push(one(client.clone(), cfg.clone(), i, Instant::now()).await);
                    }
                }));
            }
            for w in workers {
                let outcomes = w.await.unwrap_or_default();
                tasks.extend(outcomes.into_iter().map(|o| tokio::spawn(async move { o })));
            }
        }
    }
    let mut r = LoadReport {
        rate: cfg.rate,
        concurrency: cfg.concurrency,
        requests: cfg.requests,
        ..Default::default()
    };
    let (mut ttft, mut itl, mut chunks) = (Vec::new(), Vec::new(), 0);
    let (mut lags, mut starts) = (Vec::new(), Vec::new());
    let (mut counted, mut prompt, mut completion) = (0u64, 0u64, 0u64);
    for t in tasks {
        let t = t.await.map(|sent| {
            lags.push(sent.lag);
            starts.push(sent.started);
            sent.outcome
        });
        match t {
            Ok(Outcome::Ok {
                ttft: a,
                itl: b,
                chunks: c,
                usage,
            }) => {
                r.ok += 1;
                if let Some((p, c)) = usage {
                    counted += 1;
                    prompt += p;
                    completion += c;
                }
                ttft.push(a);
                itl.extend(b);
                chunks += c;
            }
            Ok(Outcome::TooMany) => r.rejected_429 += 1,
            Ok(Outcome::Failed(m)) => {
                r.errors += 1;
                r.first_error.get_or_insert(m);
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e.to_string());
            }
        }
    }
    r.elapsed = t0.elapsed();
    let s = r.elapsed.as_secs_f64().max(1e-9);
    r.requests_per_s = r.ok as f64 / s;
    r.tokens_per_s = chunks as f64 / s;
    r.ttft_p50 = pct(&mut ttft, 0.5);
    r.ttft_p99 = pct(&mut ttft, 0.99);
    r.itl_p50 = pct(&mut itl, 0.5);
    r.itl_p99 = pct(&mut itl, 0.99);
    r.start_lag_p99 = pct(&mut lags, 0.99);
    if let (Some(a), Some(b)) = (starts.iter().min(), starts.iter().max()) {
        let span = (*b - *a).as_secs_f64();
        if span > 0.0 {
            r.arrivals_per_s = (starts.len() - 1) as f64 / span;
        }
    }
    if counted > 0 {
        r.prompt_tokens = prompt as f64 / counted as f64;
        r.completion_tokens = completion as f64 / counted as f64;
    }
    r
}

//! A small bounded load generator for an OpenAI-compatible server on loopback: open-loop
//! arrivals at a fixed rate (request i starts at i / rate seconds, whether or not earlier ones
//! finished), a fixed number of streaming requests, a fixed deadline; reports requests/s,
//! time to first token and inter-token latency percentiles, tokens/s and errors.
#![allow(dead_code)]
use std::time::{Duration, Instant};

/// One load level.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://127.0.0.1:PORT` (loopback only: anything else is refused).
    pub base: String,
    /// Arrivals per second.
    pub rate: f64,
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
    /// Arrival rate asked for.
    pub rate: f64,
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
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "rate {:>6.1}/s: {} sent, {} ok, {} × 429, {} errors in {:.2} s → {:.2} req/s, \
             {:.1} tok/s, TTFT p50 {:.1} ms p99 {:.1} ms, ITL p50 {:.1} ms p99 {:.1} ms",
            self.rate,
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

enum Outcome {
    Ok {
        ttft: Duration,
        itl: Vec<Duration>,
        chunks: usize,
    },
    TooMany,
    Failed(String),
}

async fn one(client: reqwest::Client, cfg: LoadConfig, i: usize) -> Outcome {
    let body = serde_json::json!({
        "messages": [
            {"role": "system", "content": cfg.system},
            {"role": "user", "content": cfg.prompts[i % cfg.prompts.len()]},
        ],
        "max_tokens": cfg.max_tokens[i % cfg.max_tokens.len()],
        "temperature": 0,
        "stream": true,
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
            let has_text = v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty());
            if has_text {
                let now = Instant::now();
                match first {
                    None => first = Some(now - t0),
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
        ttft: first.unwrap_or(last - t0),
        itl,
        chunks,
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
    for i in 0..cfg.requests {
        let at = t0 + Duration::from_secs_f64(i as f64 / cfg.rate);
        tokio::time::sleep_until(at.into()).await;
        tasks.push(tokio::spawn(one(client.clone(), cfg.clone(), i)));
    }
    let mut r = LoadReport {
        rate: cfg.rate,
        requests: cfg.requests,
        ..Default::default()
    };
    let (mut ttft, mut itl, mut chunks) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok(Outcome::Ok {
                ttft: a,
                itl: b,
                chunks: c,
            }) => {
                r.ok += 1;
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
    r
}

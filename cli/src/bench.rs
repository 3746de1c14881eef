//! `ferrinfer bench-generate`: `requests` concurrent requests of `prompt_len` random tokens,
//! `gen_len` greedy tokens each (stop tokens ignored, so every request generates them all). With
//! `shared_prefix = n`, every prompt begins with the same `n` tokens (a system prompt): what the
//! prefix cache saves shows against a run with `--no-prefix-cache`.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use ferrinfer_engine::{EngineError, Event, Request, Result, SamplingParams};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::ModelArgs;

#[derive(Serialize)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn quantiles(mut v: Vec<f64>) -> Quantiles {
    if v.is_empty() {
        return Quantiles {
            p50: 0.0,
            p90: 0.0,
            p99: 0.0,
            mean: 0.0,
        };
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Quantiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

#[derive(Serialize)]
struct Record {
    command: String,
    model: String,
    backend: String,
    requests: usize,
    prompt_len: usize,
    shared_prefix: usize,
    prefix_cache: bool,
    gen_len: usize,
    total_s: f64,
    generated_tokens: usize,
    tokens_per_s: f64,
    ttft_ms: Quantiles,
    inter_token_ms: Quantiles,
    steps: u64,
    preemptions: u64,
    prefix_hits: u64,
    prefix_tokens: u64,
}

pub fn run(
    args: &ModelArgs,
    requests: usize,
    prompt_len: usize,
    shared_prefix: usize,
    gen_len: usize,
    seed: u64,
    json: &Path,
) -> Result<bool> {
    if requests == 0 || prompt_len == 0 || gen_len == 0 {
        return Err(EngineError::Request(
            "requests, prompt-len and gen-len must be positive".into(),
        ));
    }
    if shared_prefix > prompt_len {
        return Err(EngineError::Request(format!(
            "shared-prefix {shared_prefix} is longer than prompt-len {prompt_len}"
        )));
    }
    let mut l = crate::load::load(args)?;
    // Measured warm, as a server runs (which warms up before it reports ready): the backend's
    // first-use work (a GPU's lazily loaded kernels, cuBLAS set-up) is not a request's latency.
    l.engine.warm_up()?;
    let vocab = l.tokenizer.vocab_size() as u64;
    // Prompts of ordinary tokens (past the first 256 ids, where special tokens live).
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (256 + state % (vocab - 256)) as u32
    };
    let prefix: Vec<u32> = (0..shared_prefix).map(|_| next()).collect();
    let t0 = Instant::now();
    let mut started = HashMap::new();
    for _ in 0..requests {
        let mut prompt = prefix.clone();
        prompt.extend((shared_prefix..prompt_len).map(|_| next()));
        let id = l.engine.add(Request {
            prompt,
            max_tokens: gen_len,
            sampling: SamplingParams::greedy(),
            seed: 0,
            stop_ids: Vec::new(),
        })?;
        started.insert(id, Vec::<f64>::new());
    }
    let bar = ProgressBar::new((requests * gen_len) as u64).with_style(
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} tokens {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut generated = 0;
    while l.engine.has_work() {
        let events = l.engine.step()?;
        let now = t0.elapsed().as_secs_f64();
        for e in events {
            if let Event::Token { id, .. } = e {
                if let Some(times) = started.get_mut(&id) {
                    times.push(now);
                }
                generated += 1;
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let total = t0.elapsed().as_secs_f64();
    let ttft: Vec<f64> = started
        .values()
        .filter_map(|t| t.first().map(|x| x * 1e3))
        .collect();
    let itl: Vec<f64> = started
        .values()
        .flat_map(|t| {
            t.windows(2)
                .map(|w| (w[1] - w[0]) * 1e3)
                .collect::<Vec<_>>()
        })
        .collect();
    let stats = l.engine.stats();
    let rec = Record {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: crate::load::model_path(args).display().to_string(),
        backend: l.backend.clone(),
        requests,
        prompt_len,
        shared_prefix,
        prefix_cache: !args.no_prefix_cache,
        gen_len,
        total_s: total,
        generated_tokens: generated,
        tokens_per_s: generated as f64 / total,
        ttft_ms: quantiles(ttft),
        inter_token_ms: quantiles(itl),
        steps: stats.steps,
        preemptions: stats.preemptions,
        prefix_hits: stats.prefix_hits,
        prefix_tokens: stats.prefix_tokens,
    };
    println!(
        "{requests} requests × ({prompt_len} prompt + {gen_len} generated) on {}: {:.2} s, {:.1} tokens/s; \
         TTFT p50 {:.1} ms p99 {:.1} ms; inter-token p50 {:.2} ms p99 {:.2} ms; {} steps, {} preemptions; \
         shared prefix {shared_prefix}: {} prefix-cache hits, {} prompt tokens reused",
        rec.backend,
        rec.total_s,
        rec.tokens_per_s,
        rec.ttft_ms.p50,
        rec.ttft_ms.p99,
        rec.inter_token_ms.p50,
        rec.inter_token_ms.p99,
        rec.steps,
        rec.preemptions,
        rec.prefix_hits,
        rec.prefix_tokens
    );
    let text =
        serde_json::to_string_pretty(&rec).map_err(|e| EngineError::Request(e.to_string()))?;
    std::fs::write(json, text).map_err(|e| EngineError::Io {
        path: json.display().to_string(),
        source: e,
    })?;
    println!("record written to {}", json.display());
    Ok(true)
}

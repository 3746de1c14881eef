//! The bounded load test at benchmark size: open-loop arrivals at rising rates (or closed-loop
//! streams) against a server on loopback (an in-process CPU server over the default model, or
//! `--url` of a running `ferrinfer serve`), a fixed number of streaming chat requests per level
//! sharing a system prompt, mixed output lengths; prints requests/s, TTFT and ITL p50/p99,
//! tokens/s, mean prompt/completion tokens and errors per level. Every request has a deadline,
//! so it ends by itself.
//!
//! ```text
//! cargo run --release -p ferrinfer-server --example load -- [--url http://127.0.0.1:8000]
//!     [--rates 1,2,4,8 | --streams 16,64] [--requests 32] [--max-tokens 8,16,32]
//!     [--system-words N] [--user-words N] [--ignore-eos] [--api-key KEY]
//! ```
//! `--system-words`/`--user-words` replace the short default prompts with generated text of
//! about that many tokens (one common word is about one token); user messages differ from
//! request to request, the system prompt is shared (what prefix caching shares).
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use support::load::{is_loopback, run, LoadConfig};

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad list item {x:?}"))
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let mut url = None;
    let mut rates = vec![1.0, 2.0, 4.0, 8.0];
    let mut requests = 32;
    let mut max_tokens = vec![8, 16, 32];
    let mut api_key = None;
    let mut streams: Vec<usize> = Vec::new();
    let mut system_words = 0usize;
    let mut user_words = 0usize;
    let mut ignore_eos = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(v()),
            "--rates" => rates = list(&v()),
            "--requests" => requests = v().parse().expect("--requests N"),
            "--max-tokens" => max_tokens = list(&v()),
            "--api-key" => api_key = Some(v()),
            "--streams" => streams = list(&v()),
            "--system-words" => system_words = v().parse().expect("--system-words N"),
            "--user-words" => user_words = v().parse().expect("--user-words N"),
            "--ignore-eos" => ignore_eos = true,
            other => panic!("unknown argument {other}"),
        }
    }
    let local;
    let base = match url {
        Some(u) => {
            assert!(
                is_loopback(&u),
                "--url must be a loopback address (127.0.0.0/8, ::1, localhost)"
            );
            u.trim_end_matches('/').to_string()
        }
        None => {
            eprintln!("starting an in-process server (CPU backend, default model)…");
            local = support::TestServer::start(ferrinfer_server::ServerConfig::default(), 16384);
            local.base.clone()
        }
    };
    let client = reqwest::Client::new();
    let short = [
        "Name a colour.",
        "What is 2 + 2?",
        "Say hello in French.",
        "Give me a word that rhymes with cat.",
        "Write one sentence about the sea.",
        "List three fruits.",
    ];
    let prompts: Vec<String> = if user_words > 0 {
        // Distinct per request (a number first), so only the system prompt is shared.
        (0..requests)
            .map(|i| format!("Request {i}. {}", words(user_words, i + 1)))
            .collect()
    } else {
        short.iter().map(|s| s.to_string()).collect()
    };
    let system = if system_words > 0 {
        words(system_words, 0)
    } else {
        "You are a concise assistant. Answer in a few words.".into()
    };
    let levels: Vec<(f64, Option<usize>)> = if streams.is_empty() {
        rates.iter().map(|&r| (r, None)).collect()
    } else {
        streams.iter().map(|&c| (0.0, Some(c))).collect()
    };
    for (rate, concurrency) in levels {
        let cfg = LoadConfig {
            base: base.clone(),
            rate,
            concurrency,
            ignore_eos,
            requests,
            max_tokens: max_tokens.clone(),
            prompts: prompts.clone(),
            system: system.clone(),
            api_key: api_key.clone(),
            timeout: Duration::from_secs(120),
        };
        let r = run(&client, &cfg).await;
        println!("{r}");
        if let Some(e) = &r.first_error {
            println!("  first error: {e}");
        }
    }
}

/// About `n` tokens of plain English (common words, mostly one token each), varied by `seed`.
fn words(n: usize, seed: usize) -> String {
    const W: [&str; 16] = [
        "the", "river", "runs", "past", "old", "stone", "houses", "and", "green", "fields",
        "where", "people", "walk", "in", "the", "morning",
    ];
    (0..n)
        .map(|i| W[(i * 7 + seed * 3) % W.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

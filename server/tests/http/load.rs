//! The bounded load test and a burst over the KV capacity with a slow reader.
use super::*;

/// The bounded load test, CI-sized: open-loop arrivals at two rates, then closed-loop streams
/// with `ignore_eos` (every request runs to its `max_tokens`, which the usage counts confirm);
/// a shared system prompt, mixed output lengths, streaming; every request must finish without
/// error.
#[tokio::test]
async fn load_test_bounded() {
    let srv = TestServer::start(ServerConfig::default(), 4096);
    let c = client();
    let mut cfg = support::load::LoadConfig {
        base: srv.base.clone(),
        rate: 2.0,
        concurrency: None,
        ignore_eos: false,
        requests: 6,
        max_tokens: vec![4, 6, 8],
        prompts: vec![
            "Name a colour.".into(),
            "What is 2 + 2?".into(),
            "Say hello in French.".into(),
            "Give me a word that rhymes with cat.".into(),
        ],
        system: "You are a concise assistant. Answer in a few words.".into(),
        api_key: None,
        timeout: Duration::from_secs(60),
    };
    for rate in [2.0, 8.0] {
        cfg.rate = rate;
        let r = support::load::run(&c, &cfg).await;
        eprintln!("load: {r}");
        assert_eq!(r.errors, 0, "{r}: {:?}", r.first_error);
        assert_eq!(r.rejected_429, 0, "{r}");
        assert_eq!(r.ok, cfg.requests);
        assert!(r.prompt_tokens > 20.0, "{r}");
        // The generator offered the rate it claims (it reports its own lateness).
        assert!(r.arrivals_per_s > 0.5 * rate, "{r}");
    }
    cfg.concurrency = Some(3);
    cfg.ignore_eos = true;
    let r = support::load::run(&c, &cfg).await;
    eprintln!("load: {r}");
    assert_eq!(
        (r.ok, r.errors, r.rejected_429),
        (cfg.requests, 0, 0),
        "{r}"
    );
    let want: usize = (0..cfg.requests)
        .map(|i| cfg.max_tokens[i % cfg.max_tokens.len()])
        .sum();
    assert_eq!(
        r.completion_tokens,
        want as f64 / cfg.requests as f64,
        "{r}"
    );
    support::wait_idle(&c, &srv.base).await;
    srv.stop();
}

/// A burst larger than the KV cache (6 pages of 16 tokens; five requests of 2 pages each):
/// the engine preempts, and every request still finishes with the text it has alone; a slow
/// reader that reads nothing for a while still gets its whole answer; afterwards every page is
/// free.
#[tokio::test]
async fn a_burst_over_the_kv_capacity_and_a_slow_reader_lose_nothing() {
    let srv = TestServer::start(ServerConfig::default(), 96);
    let c = client();
    let prompts = [
        "The sun is",
        "Water boils at",
        "Paris is the capital of",
        "Cats and dogs",
        "In 1969,",
    ];
    let max_tokens = 16;
    let want: Vec<String> = prompts
        .iter()
        .map(|p| direct(support::text_ids(p), max_tokens).1)
        .collect();
    let body = |p: &str, stream: bool| {
        completion_body(
            p,
            json!({"max_tokens": max_tokens, "temperature": 0, "stream": stream}),
        )
    };
    // The slow reader: its stream is opened first and left unread while the burst runs.
    let slow = c
        .post(format!("{}/v1/completions", srv.base))
        .json(&body(prompts[0], true))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let burst: Vec<_> = prompts[1..]
        .iter()
        .map(|p| {
            let (c, url, b) = (
                c.clone(),
                format!("{}/v1/completions", srv.base),
                body(p, false),
            );
            tokio::spawn(async move {
                c.post(url)
                    .json(&b)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            })
        })
        .collect();
    for (i, t) in burst.into_iter().enumerate() {
        let v = t.await.unwrap();
        assert_eq!(
            v["choices"][0]["text"],
            want[i + 1],
            "{:?}: {v}",
            prompts[i + 1]
        );
    }
    let (text, _, _) = streamed(&sse(slow).await, false);
    assert_eq!(text, want[0]);
    let m = support::wait_idle(&c, &srv.base).await;
    assert!(
        support::metric(&m, "ferrinfer_preemptions_total") >= 1.0,
        "no preemption:\n{m}"
    );
    assert_eq!(
        support::metric(&m, "ferrinfer_requests_finished_total{reason=\"error\"}"),
        0.0
    );
    srv.stop();
}

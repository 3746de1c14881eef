//! Both endpoints whole and streamed, stop sequences, seeds, concurrency and disconnects.
use super::*;

#[tokio::test]
async fn chat_whole_and_streamed_equal_the_engine_driven_directly() {
    let s = shared();
    let (ids, want) = direct(support::chat_ids(CHAT), 8);
    let (st, v) = post(
        &s.base,
        "/v1/chat/completions",
        chat_body(CHAT, json!({"max_tokens": 8, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], s.model);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want);
    let prompt_tokens = support::chat_ids(CHAT).len();
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], ids.len());
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + ids.len());
    let tok = &support::model().tokenizer;
    let finish = if ids.last().is_some_and(|&t| tok.is_stop(t)) {
        "stop"
    } else {
        "length"
    };
    assert_eq!(v["choices"][0]["finish_reason"], finish);

    let r = client()
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&chat_body(CHAT, json!({"max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = sse(r).await;
    let (text, f, usage) = streamed(&events, true);
    assert_eq!(text, want);
    assert_eq!(f, finish);
    let usage = usage.expect("a usage chunk");
    assert_eq!(usage["completion_tokens"], ids.len());
    // One chunk per token that completes text (the role chunk, the finish chunk and the usage
    // chunk besides).
    assert!(events.len() >= 4, "{events:?}");
}

#[tokio::test]
async fn completion_whole_and_streamed_equal_the_engine_driven_directly() {
    let s = shared();
    let (ids, want) = direct(support::text_ids(PROMPT), 6);
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        completion_body(PROMPT, json!({"max_tokens": 6, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want);
    assert_eq!(v["usage"]["prompt_tokens"], support::text_ids(PROMPT).len());
    assert_eq!(v["usage"]["completion_tokens"], ids.len());

    let r = client()
        .post(format!("{}/v1/completions", s.base))
        .json(&completion_body(
            PROMPT,
            json!({"max_tokens": 6, "temperature": 0, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let events = sse(r).await;
    let (text, f, usage) = streamed(&events, false);
    assert_eq!(text, want);
    assert_eq!(f, v["choices"][0]["finish_reason"].as_str().unwrap());
    assert!(usage.is_none());
    // Token ids are a prompt too.
    let ids: Vec<u32> = support::text_ids(PROMPT);
    let (st, v2) = post(
        &s.base,
        "/v1/completions",
        json!({"prompt": ids, "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v2["choices"][0]["text"], want);
}

#[tokio::test]
async fn stop_sequences_cut_the_text_and_end_the_request() {
    let s = shared();
    let (_, full) = direct(support::text_ids(PROMPT), 8);
    // A stop sequence from the middle of the greedy text: the answer is the text before it.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() >= 6, "greedy text too short: {full:?}");
    let (a, _) = chars[chars.len() / 2];
    let (b, _) = chars[chars.len() / 2 + 2];
    let stop = &full[a..b];
    let cut = &full[..full.find(stop).unwrap()];
    for stream in [false, true] {
        for stop_field in [json!(stop), json!(["never-appears", stop])] {
            let body = completion_body(
                PROMPT,
                json!({"max_tokens": 8, "temperature": 0, "stop": stop_field, "stream": stream}),
            );
            let r = client()
                .post(format!("{}/v1/completions", s.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let (text, finish) = if stream {
                let (t, f, _) = streamed(&sse(r).await, false);
                (t, f)
            } else {
                let v: Value = r.json().await.unwrap();
                (
                    v["choices"][0]["text"].as_str().unwrap().to_string(),
                    v["choices"][0]["finish_reason"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            };
            assert_eq!(text, cut, "stop {stop:?} in {full:?} (stream: {stream})");
            assert_eq!(finish, "stop");
        }
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_text() {
    let s = shared();
    let body = |seed: u64| {
        completion_body(
            "Once upon a time",
            json!({"max_tokens": 8, "temperature": 1.0, "top_p": 0.95, "seed": seed}),
        )
    };
    let c = client();
    // Concurrently, so the two also share engine steps.
    let (a, b) = tokio::join!(
        c.post(format!("{}/v1/completions", s.base))
            .json(&body(7))
            .send(),
        c.post(format!("{}/v1/completions", s.base))
            .json(&body(7))
            .send(),
    );
    let a: Value = a.unwrap().json().await.unwrap();
    let b: Value = b.unwrap().json().await.unwrap();
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let again: Value = c
        .post(format!("{}/v1/completions", s.base))
        .json(&body(7))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["choices"][0]["text"], again["choices"][0]["text"]);
    assert!(!a["choices"][0]["text"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_requests_give_the_same_tokens_as_alone() {
    let s = shared();
    let prompts = [
        "The sun is",
        "def add(a, b):",
        "Paris is the capital of",
        "1, 2, 3,",
    ];
    let c = client();
    let body = |p: &str| completion_body(p, json!({"max_tokens": 6, "temperature": 0}));
    let mut alone = Vec::new();
    for p in prompts {
        let v: Value = c
            .post(format!("{}/v1/completions", s.base))
            .json(&body(p))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        alone.push(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let futs = prompts.map(|p| {
        let c = c.clone();
        let url = format!("{}/v1/completions", s.base);
        let b = body(p);
        async move {
            c.post(url)
                .json(&b)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    let [a, b, cc, d] = futs;
    let together = tokio::join!(a, b, cc, d);
    let together = [together.0, together.1, together.2, together.3];
    for (i, v) in together.iter().enumerate() {
        assert_eq!(v["choices"][0]["text"], alone[i], "prompt {:?}", prompts[i]);
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_pages() {
    let srv = TestServer::start(ServerConfig::default(), 1024);
    let c = client();
    for _ in 0..2 {
        let mut r = c
            .post(format!("{}/v1/completions", srv.base))
            .json(&completion_body(
                PROMPT,
                json!({"max_tokens": 400, "temperature": 0, "stream": true}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Read a few chunks, then hang up.
        let mut got = 0;
        while got < 3 {
            let chunk = r.chunk().await.unwrap().expect("the stream goes on");
            got += String::from_utf8_lossy(&chunk).matches("data: ").count();
        }
        let m = c
            .get(format!("{}/metrics", srv.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(support::metric(&m, "ferrinfer_kv_pages_used") > 0.0, "{m}");
        drop(r);
        let m = support::wait_idle(&c, &srv.base).await;
        assert!(
            support::metric(
                &m,
                "ferrinfer_requests_finished_total{reason=\"cancelled\"}"
            ) >= 1.0
        );
        assert!(
            support::metric(&m, "ferrinfer_generation_tokens_total") < 400.0,
            "{m}"
        );
    }
    // A non-streamed request whose client gives up is cancelled too.
    let r = c
        .post(format!("{}/v1/completions", srv.base))
        .json(&completion_body(
            PROMPT,
            json!({"max_tokens": 400, "temperature": 0}),
        ))
        .timeout(Duration::from_millis(1500))
        .send()
        .await;
    assert!(r.is_err(), "400 tokens in 1.5 s on the CPU backend?");
    let m = support::wait_idle(&c, &srv.base).await;
    assert!(
        support::metric(
            &m,
            "ferrinfer_requests_finished_total{reason=\"cancelled\"}"
        ) >= 3.0,
        "{m}"
    );
    // A request that cannot fit the (small) KV cache is refused up front.
    let (st, v) = post(
        &srv.base,
        "/v1/completions",
        completion_body(PROMPT, json!({"max_tokens": 2000})),
    )
    .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("KV pages"),
        "{v}"
    );
    // Still serving.
    let (st, _) = post(
        &srv.base,
        "/v1/completions",
        completion_body(PROMPT, json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(st, 200);
    srv.stop();
}

#[tokio::test]
async fn ignore_eos_generates_exactly_max_tokens() {
    let s = shared();
    let body = |extra: Value| chat_body(CHAT, extra);
    // Greedy, the model answers this in a few tokens and ends with its end-of-turn token.
    let (st, v) = post(
        &s.base,
        "/v1/chat/completions",
        body(json!({"max_tokens": 24, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let natural = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(natural < 24, "{v}");
    // With the extension it runs to the limit, and its first tokens are the same answer.
    let (st, w) = post(
        &s.base,
        "/v1/chat/completions",
        body(json!({"max_tokens": 24, "temperature": 0, "ignore_eos": true})),
    )
    .await;
    assert_eq!(st, 200, "{w}");
    assert_eq!(w["choices"][0]["finish_reason"], "length", "{w}");
    assert_eq!(w["usage"]["completion_tokens"], 24, "{w}");
    let short = v["choices"][0]["message"]["content"].as_str().unwrap();
    let long = w["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(long.starts_with(short), "{short:?} vs {long:?}");
    // A wrong type is a 400 naming the field, like every other field.
    let (st, e) = post(
        &s.base,
        "/v1/chat/completions",
        body(json!({"max_tokens": 4, "ignore_eos": "yes"})),
    )
    .await;
    assert_eq!(st, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ignore_eos"),
        "{e}"
    );
}

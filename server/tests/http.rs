//! The server over real HTTP on loopback (reqwest), with the real model on the CPU backend:
//! both endpoints streamed and whole, stop sequences, seeds, greedy text equal to the engine
//! driven directly, concurrency invisible in the output, a client that disconnects mid-stream
//! (its KV pages come back), every kind of bad input (a clear error, and the server keeps
//! serving), bearer auth and the bind policy, and a short bounded load test.
mod support;

use std::time::Duration;

use ferrinfer_server::{resolve, ServerConfig};
use serde_json::{json, Value};
use support::{client, direct, shared, sse, TestServer};

const CHAT: &[(&str, &str)] = &[("user", "What is the capital of France?")];
const PROMPT: &str = "The three primary colours are";

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, v)
}

fn chat_body(messages: &[(&str, &str)], extra: Value) -> Value {
    let mut b = json!({
        "messages": messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect::<Vec<_>>(),
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

fn completion_body(prompt: &str, extra: Value) -> Value {
    let mut b = json!({ "prompt": prompt });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// Text and finish reason of a streamed answer, after checking the chunks' shape.
fn streamed(events: &[String], chat: bool) -> (String, String, Option<Value>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], object, "{c}");
        assert!(c["id"]
            .as_str()
            .unwrap()
            .starts_with(if chat { "chatcmpl-" } else { "cmpl-" }));
        if c["choices"].as_array().unwrap().is_empty() {
            usage = Some(c["usage"].clone());
            continue;
        }
        assert!(finish.is_none(), "a chunk after the finish reason: {c}");
        let ch = &c["choices"][0];
        if chat {
            if i == 0 {
                assert_eq!(ch["delta"]["role"], "assistant", "{c}");
            }
            text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
        } else {
            text.push_str(ch["text"].as_str().unwrap());
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (
        text,
        finish.expect("a chunk carries the finish reason"),
        usage,
    )
}

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

fn assert_error(status: u16, v: &Value, want: u16, param: Option<&str>, says: &str) {
    assert_eq!(status, want, "{v}");
    let e = &v["error"];
    assert!(
        e["message"].as_str().unwrap().contains(says),
        "expected {says:?} in {v}"
    );
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{v}");
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_the_server_keeps_serving() {
    let s = shared();
    let c = client();
    let raw = |path: &'static str, body: Vec<u8>| {
        let c = c.clone();
        let url = format!("{}{path}", s.base);
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            (st, v, retry)
        }
    };
    // Malformed JSON.
    let (st, v, _) = raw(
        "/v1/completions",
        br#"{"prompt": "hi", "max_tokens": "#.to_vec(),
    )
    .await;
    assert_error(st, &v, 400, None, "not valid JSON");
    // Not an object.
    let (st, v, _) = raw("/v1/chat/completions", b"[1, 2]".to_vec()).await;
    assert_error(st, &v, 400, None, "JSON object");
    // Invalid UTF-8.
    let (st, v, _) = raw("/v1/completions", b"{\"prompt\": \"caf\xe9\"}".to_vec()).await;
    assert_error(st, &v, 400, None, "UTF-8");
    // Wrong types, each naming its field.
    for (body, param) in [
        (json!({"prompt": "hi", "temperature": "hot"}), "temperature"),
        (json!({"prompt": "hi", "max_tokens": 1.5}), "max_tokens"),
        (json!({"prompt": 42}), "prompt"),
        (json!({"prompt": "hi", "stop": 3}), "stop"),
        (json!({"prompt": "hi", "stream": "yes"}), "stream"),
    ] {
        let (st, v) = post(&s.base, "/v1/completions", body).await;
        assert_error(st, &v, 400, Some(param), "invalid value");
    }
    let (st, v) = post(
        &s.base,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": 5}]}),
    )
    .await;
    assert_error(st, &v, 400, Some("messages[0].content"), "invalid value");
    // Empty prompts.
    let (st, v) = post(&s.base, "/v1/completions", json!({"prompt": ""})).await;
    assert_error(st, &v, 400, Some("prompt"), "empty");
    let (st, v) = post(&s.base, "/v1/completions", json!({"max_tokens": 3})).await;
    assert_error(st, &v, 400, Some("prompt"), "required");
    let (st, v) = post(&s.base, "/v1/chat/completions", json!({"messages": []})).await;
    assert_error(st, &v, 400, Some("messages"), "empty");
    // A prompt longer than the context (8192 tokens).
    let long = "hello ".repeat(9000);
    let (st, v) = post(&s.base, "/v1/completions", json!({"prompt": long})).await;
    assert_error(st, &v, 400, Some("prompt"), "context");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // max_tokens out of range.
    for mt in [0, -5] {
        let (st, v) = post(
            &s.base,
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": mt}),
        )
        .await;
        assert_error(st, &v, 400, Some("max_tokens"), "at least 1");
    }
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 100000}),
    )
    .await;
    assert_error(st, &v, 400, Some("max_tokens"), "too large");
    // Sampling out of range.
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        json!({"prompt": "hi", "temperature": -0.5}),
    )
    .await;
    assert_error(st, &v, 400, Some("temperature"), "between 0 and 2");
    for p in [0.0, 1.5, -1.0] {
        let (st, v) = post(
            &s.base,
            "/v1/chat/completions",
            chat_body(CHAT, json!({"top_p": p})),
        )
        .await;
        assert_error(st, &v, 400, Some("top_p"), "top_p");
    }
    // n must be 1.
    let (st, v) = post(&s.base, "/v1/completions", json!({"prompt": "hi", "n": 2})).await;
    assert_error(st, &v, 400, Some("n"), "n must be 1");
    // Stop lists.
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        json!({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
    )
    .await;
    assert_error(st, &v, 400, Some("stop"), "at most 4");
    // Unknown model, unknown route.
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        json!({"prompt": "hi", "model": "gpt-9"}),
    )
    .await;
    assert_error(st, &v, 404, Some("model"), "does not exist");
    let (st, v) = post(&s.base, "/v1/nothing", json!({})).await;
    assert_error(st, &v, 404, None, "no route");
    // A body over the size limit (1 MiB by default).
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(2 << 20));
    let (st, v, _) = raw("/v1/completions", big.into_bytes()).await;
    assert_error(st, &v, 413, None, "larger than the limit");
    // And the server still serves.
    let (st, v) = post(
        &s.base,
        "/v1/completions",
        json!({"prompt": "hi", "max_tokens": 2, "model": s.model}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let m = c
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(support::metric(&m, "ferrinfer_requests_rejected_total{reason=\"invalid\"}") >= 20.0);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after() {
    let srv = TestServer::start(
        ServerConfig {
            max_queued: 1,
            retry_after_s: 2,
            ..ServerConfig::default()
        },
        1024,
    );
    let c = client();
    let mut first = c
        .post(format!("{}/v1/completions", srv.base))
        .json(&completion_body(
            PROMPT,
            json!({"max_tokens": 300, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let r = c
        .post(format!("{}/v1/chat/completions", srv.base))
        .json(&chat_body(CHAT, json!({"max_tokens": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    let _ = first.chunk().await.unwrap();
    drop(first);
    support::wait_idle(&c, &srv.base).await;
    let (st, _) = post(
        &srv.base,
        "/v1/chat/completions",
        chat_body(CHAT, json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(st, 200);
    let m = c
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        support::metric(
            &m,
            "ferrinfer_requests_rejected_total{reason=\"queue_full\"}"
        ),
        1.0
    );
    srv.stop();
}

#[tokio::test]
async fn bearer_auth_guards_the_api() {
    let srv = TestServer::start(
        ServerConfig {
            api_key: Some("sekrit-key".into()),
            ..ServerConfig::default()
        },
        512,
    );
    let c = client();
    let models = format!("{}/v1/models", srv.base);
    let r = c.get(&models).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    assert_eq!(
        c.get(&models)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(&models)
            .bearer_auth("sekrit-ke")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.post(format!("{}/v1/completions", srv.base))
            .json(&json!({"prompt": "hi", "max_tokens": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .get(&models)
        .bearer_auth("sekrit-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"][0]["id"], srv.model);
    let r = c
        .post(format!("{}/v1/completions", srv.base))
        .bearer_auth("sekrit-key")
        .json(&json!({"prompt": "hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health and metrics stay open (for load balancers and scrapers).
    assert_eq!(
        c.get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{}/metrics", srv.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    srv.stop();
}

#[tokio::test]
async fn no_api_key_means_loopback_only() {
    let cfg = |host: &str, key: Option<&str>, allow: bool| ServerConfig {
        host: host.into(),
        port: 0,
        api_key: key.map(Into::into),
        allow_unauthenticated_remote: allow,
        ..ServerConfig::default()
    };
    for host in ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"] {
        assert!(resolve(&cfg(host, None, false)).await.is_ok(), "{host}");
    }
    for host in ["0.0.0.0", "::", "192.0.2.1"] {
        let e = resolve(&cfg(host, None, false))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--api-key") && e.contains("--allow-unauthenticated-remote"),
            "{e}"
        );
        assert!(resolve(&cfg(host, Some("k"), false)).await.is_ok());
        assert!(resolve(&cfg(host, None, true)).await.is_ok());
    }
}

#[tokio::test]
async fn models_health_and_metrics() {
    let s = shared();
    let c = client();
    let v: Value = c
        .get(format!("{}/v1/models", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["max_model_len"], 8192);
    let v: Value = c
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
    let (st, _) = post(
        &s.base,
        "/v1/chat/completions",
        chat_body(CHAT, json!({"max_tokens": 3})),
    )
    .await;
    assert_eq!(st, 200);
    let r = c.get(format!("{}/metrics", s.base)).send().await.unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text().await.unwrap();
    for name in [
        "ferrinfer_num_requests_running",
        "ferrinfer_num_requests_waiting",
        "ferrinfer_kv_pages_used",
        "ferrinfer_kv_pages_free",
        "ferrinfer_generation_tokens_total",
        "ferrinfer_generation_tokens_per_second",
        "ferrinfer_time_to_first_token_seconds_count",
        "ferrinfer_inter_token_latency_seconds_count",
    ] {
        support::metric(&m, name);
    }
    assert!(support::metric(&m, "ferrinfer_generation_tokens_total") >= 1.0);
    assert!(support::metric(&m, "ferrinfer_time_to_first_token_seconds_count") >= 1.0);
    assert!(support::metric(&m, "ferrinfer_kv_pages_free") > 0.0);
}

/// The bounded load test, CI-sized: open-loop arrivals at two rates, a shared system prompt,
/// mixed output lengths, streaming; every request must finish without error.
#[tokio::test]
async fn load_test_bounded() {
    let srv = TestServer::start(ServerConfig::default(), 4096);
    let c = client();
    let mut cfg = support::load::LoadConfig {
        base: srv.base.clone(),
        rate: 2.0,
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
    }
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
        "My favourite food",
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

//! Every kind of bad input gets a clear error, a full queue a 429, and the server keeps serving.
use super::*;

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

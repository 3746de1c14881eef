//! Bearer auth, the bind policy, and the model list, health and metrics endpoints.
use super::*;

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

//! The server over real HTTP on loopback (reqwest), with the real model on the CPU backend:
//! both endpoints streamed and whole, stop sequences, seeds, greedy text equal to the engine
//! driven directly, concurrency invisible in the output, a client that disconnects mid-stream
//! (its KV pages come back), every kind of bad input (a clear error, and the server keeps
//! serving), bearer auth and the bind policy, and a short bounded load test.
#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod completions;
mod load;
mod security;

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

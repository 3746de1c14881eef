//! OpenAI's response bodies: whole responses, streamed chunks and the usage counts.
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// `usage`.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/completions`.
    Completion,
    /// `/v1/chat/completions`.
    Chat,
}

/// What every chunk and response of one request shares.
#[derive(Clone, Debug)]
pub struct Head {
    /// The endpoint.
    pub kind: Kind,
    /// `cmpl-…` / `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model's name.
    pub model: Arc<str>,
}

impl Head {
    /// A streamed chunk: `text` (or the assistant role opening a chat when `role`), and the
    /// finish reason on the last one.
    pub fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Completion => serde_json::json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": &*self.model,
                "choices": [{
                    "index": 0,
                    "text": text.unwrap_or(""),
                    "logprobs": null,
                    "finish_reason": finish,
                }],
            }),
            Kind::Chat => {
                let delta = match (role, text) {
                    (true, _) => serde_json::json!({"role": "assistant", "content": ""}),
                    (false, Some(t)) => serde_json::json!({"content": t}),
                    (false, None) => serde_json::json!({}),
                };
                serde_json::json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": &*self.model,
                    "choices": [{
                        "index": 0,
                        "delta": delta,
                        "logprobs": null,
                        "finish_reason": finish,
                    }],
                })
            }
        }
    }

    /// The usage chunk at the end of a stream (`stream_options.include_usage`).
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        serde_json::json!({
            "id": self.id,
            "object": match self.kind {
                Kind::Completion => "text_completion",
                Kind::Chat => "chat.completion.chunk",
            },
            "created": self.created,
            "model": &*self.model,
            "choices": [],
            "usage": usage,
        })
    }

    /// A whole (non-streamed) response.
    pub fn response(&self, text: &str, finish: &str, usage: Usage) -> Value {
        match self.kind {
            Kind::Completion => serde_json::json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": &*self.model,
                "choices": [{
                    "index": 0,
                    "text": text,
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage,
            }),
            Kind::Chat => serde_json::json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": &*self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": finish,
                }],
                "usage": usage,
            }),
        }
    }
}

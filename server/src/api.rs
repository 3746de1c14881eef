//! OpenAI's request bodies and their validation (the response bodies: [`crate::response`]).

use ferrinfer_engine::{Message, SamplingParams, Tokenizer};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Stop sequences at most (OpenAI's limit).
pub const MAX_STOPS: usize = 4;

/// `prompt`: a string, a list of one string, or a list of token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Tokens(Vec<i64>),
    /// Several texts (only one is served: `n` and batched prompts are not supported).
    Texts(Vec<String>),
}

/// `stop`: a string or a list of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the usage counts.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and length fields both endpoints share.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Common {
    /// Model name (must be the served model's, when given).
    pub model: Option<String>,
    /// Tokens to generate at most.
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Softmax temperature, 0..=2 (0: greedy).
    pub temperature: Option<f64>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f64>,
    /// Keep the k most likely tokens (0 or -1: all; vLLM's extension).
    pub top_k: Option<i64>,
    /// Seed of the request's random stream.
    pub seed: Option<i64>,
    /// Choices per request (1 only).
    pub n: Option<i64>,
    /// Stop sequences.
    pub stop: Option<Stop>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Not supported (non-zero refused).
    pub presence_penalty: Option<f64>,
    /// Not supported (non-zero refused).
    pub frequency_penalty: Option<f64>,
    /// Keep generating past the end-of-sequence tokens until `max_tokens` (vLLM's extension;
    /// benchmarks use it for fixed output lengths). Stop sequences still apply.
    pub ignore_eos: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Option<Prompt>,
    /// Not supported (`true` refused).
    pub echo: Option<bool>,
    /// Not supported (a value refused).
    pub logprobs: Option<Value>,
    /// Not supported (above 1 refused).
    pub best_of: Option<i64>,
    /// Not supported (appended text).
    pub suffix: Option<String>,
}

/// A chat message's content: a string or a list of text parts.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    /// Text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}` only).
    Parts(Vec<Part>),
}

/// One part of a message.
#[derive(Deserialize, Debug, Clone)]
pub struct Part {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: Option<String>,
}

/// A chat message.
#[derive(Deserialize, Debug, Clone)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (`developer` is read as `system`).
    pub role: String,
    /// The text.
    pub content: Option<Content>,
}

/// `POST /v1/chat/completions`.
#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Option<Vec<ChatMessage>>,
    /// Not supported (`true` refused).
    pub logprobs: Option<bool>,
    /// Not supported (a non-empty list refused).
    pub tools: Option<Vec<Value>>,
}

/// Parses a request body: invalid UTF-8 and malformed JSON are 400s that say what and where.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request(format!("request body is not valid UTF-8: {e}")).code("invalid_utf8")
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "request body is empty (expected a JSON object)",
        ));
    }
    // First as a JSON value: syntax errors and type errors get different messages.
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(format!("request body is not valid JSON: {e}")).code("invalid_json")
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

/// Reads `T` from a request's JSON: a wrong field type is a 400 naming the field.
pub fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = if inner.starts_with("data did not match any variant") {
            match path.as_str() {
                "prompt" => "expected a string, a list of one string or a list of token ids".into(),
                "stop" => "expected a string or a list of strings".into(),
                p if p.ends_with("content") => "expected a string or a list of text parts".into(),
                _ => inner,
            }
        } else {
            inner
        };
        ApiError::bad_param(&path, format!("invalid value for `{path}`: {inner}"))
            .code("invalid_type")
    })
}

/// A validated request, ready for the engine.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Seed.
    pub seed: u64,
    /// Stop sequences.
    pub stops: Vec<String>,
    /// Server-sent events.
    pub stream: bool,
    /// A usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Do not stop at the model's end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// What validation needs to know about the server.
pub struct Limits<'a> {
    /// The served model's name.
    pub model: &'a str,
    /// Context length in tokens.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// `max_tokens` when the request has none.
    pub default_max_tokens: usize,
}

fn unsupported(param: &str, what: &str) -> ApiError {
    ApiError::bad_param(param, format!("{what} is not supported by this server"))
        .code("unsupported_parameter")
}

/// Validates the shared fields for a prompt of `prompt_len` tokens.
fn common(
    c: &Common,
    prompt: Vec<u32>,
    prompt_param: &str,
    lim: &Limits<'_>,
    seed: u64,
) -> Result<Generation, ApiError> {
    if let Some(m) = c.model.as_deref() {
        if !m.is_empty() && m != lim.model {
            return Err(ApiError::not_found(format!(
                "the model `{m}` does not exist (this server serves `{}`)",
                lim.model
            ))
            .param("model")
            .code("model_not_found"));
        }
    }
    if prompt.is_empty() {
        return Err(ApiError::bad_param(prompt_param, "the prompt is empty"));
    }
    let p = prompt.len();
    if p >= lim.context {
        return Err(ApiError::bad_param(
            prompt_param,
            format!(
                "the prompt has {p} tokens; the model's context is {} tokens (the prompt must \
                 leave room for at least one generated token)",
                lim.context
            ),
        )
        .code("context_length_exceeded"));
    }
    let (mt_param, mt) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, v) => ("max_tokens", v),
    };
    let max_tokens = match mt {
        None => lim.default_max_tokens.min(lim.context - p),
        Some(v) if v <= 0 => {
            return Err(ApiError::bad_param(
                mt_param,
                format!("{mt_param} must be at least 1, got {v}"),
            ))
        }
        Some(v) if v as u64 > (lim.context - p) as u64 => {
            return Err(ApiError::bad_param(
                mt_param,
                format!(
                    "{mt_param} = {v} is too large: the prompt has {p} tokens and the model's \
                     context is {} tokens, so at most {} can be generated",
                    lim.context,
                    lim.context - p
                ),
            )
            .code("context_length_exceeded"))
        }
        Some(v) => v as usize,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_param(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_param(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match c.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => (k as u64).min(lim.vocab as u64) as usize,
        k => {
            return Err(ApiError::bad_param(
                "top_k",
                format!("top_k must be -1, 0 (all tokens) or positive, got {k}"),
            ))
        }
    };
    match c.n {
        None | Some(1) => {}
        Some(n) => {
            return Err(ApiError::bad_param(
                "n",
                format!("n must be 1 (one choice per request), got {n}"),
            ))
        }
    }
    for (name, v) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if v.is_some_and(|v| v != 0.0) {
            return Err(unsupported(name, name));
        }
    }
    let stops = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::bad_param(
            "stop",
            format!("at most {MAX_STOPS} stop sequences, got {}", stops.len()),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::bad_param("stop", "a stop sequence is empty"));
    }
    let stream = c.stream.unwrap_or(false);
    Ok(Generation {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
        },
        seed: c.seed.map_or(seed, |s| s as u64),
        stops,
        stream,
        include_usage: stream && c.stream_options.as_ref().is_some_and(|o| o.include_usage),
        ignore_eos: c.ignore_eos.unwrap_or(false),
    })
}

fn tokenizer_error(param: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_param(param, format!("{e}"))
}

/// Validates a completion request; `seed` is used when it has none.
pub fn completion(
    r: &CompletionRequest,
    c: &Common,
    tok: &Tokenizer,
    lim: &Limits<'_>,
    seed: u64,
) -> Result<Generation, ApiError> {
    if r.echo == Some(true) {
        return Err(unsupported("echo", "echo"));
    }
    if r.logprobs.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(unsupported("logprobs", "logprobs"));
    }
    if r.best_of.is_some_and(|b| b != 1) {
        return Err(unsupported("best_of", "best_of above 1"));
    }
    if r.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(unsupported("suffix", "suffix"));
    }
    let prompt = match &r.prompt {
        None => return Err(ApiError::bad_param("prompt", "`prompt` is required")),
        Some(Prompt::Text(t)) => text_prompt(t, tok)?,
        Some(Prompt::Texts(v)) => match v.as_slice() {
            [t] => text_prompt(t, tok)?,
            _ => {
                return Err(ApiError::bad_param(
                    "prompt",
                    format!(
                        "exactly one prompt per request is supported, got a list of {}",
                        v.len()
                    ),
                ))
            }
        },
        Some(Prompt::Tokens(ids)) => ids
            .iter()
            .map(|&i| {
                u32::try_from(i)
                    .ok()
                    .filter(|&i| (i as usize) < lim.vocab)
                    .ok_or_else(|| {
                        ApiError::bad_param(
                            "prompt",
                            format!("token id {i} is outside the vocabulary of {}", lim.vocab),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    common(c, prompt, "prompt", lim, seed)
}

fn text_prompt(t: &str, tok: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    if t.is_empty() {
        return Err(ApiError::bad_param("prompt", "the prompt is empty"));
    }
    tok.encode(t, tok.add_bos)
        .map_err(|e| tokenizer_error("prompt", e))
}

/// Validates a chat request; `seed` is used when it has none.
pub fn chat(
    r: &ChatRequest,
    c: &Common,
    tok: &Tokenizer,
    lim: &Limits<'_>,
    seed: u64,
) -> Result<Generation, ApiError> {
    if r.logprobs == Some(true) {
        return Err(unsupported("logprobs", "logprobs"));
    }
    if r.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(unsupported("tools", "tool calling"));
    }
    let Some(messages) = &r.messages else {
        return Err(ApiError::bad_param("messages", "`messages` is required"));
    };
    if messages.is_empty() {
        return Err(ApiError::bad_param("messages", "`messages` is empty"));
    }
    let mut msgs = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_param(
                    &format!("messages[{i}].role"),
                    format!("role `{other}` is not supported (system, user, assistant)"),
                ))
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        (k, _) => {
                            return Err(ApiError::bad_param(
                                &format!("messages[{i}].content"),
                                format!("content part of type `{k}` is not supported (text only)"),
                            ))
                        }
                    }
                }
                s
            }
        };
        msgs.push(Message::new(role, &content));
    }
    if msgs.iter().all(|m| m.content.is_empty()) {
        return Err(ApiError::bad_param("messages", "every message is empty"));
    }
    let text = tok
        .apply_chat_template(&msgs, true)
        .map_err(|e| tokenizer_error("messages", e))?;
    let prompt = tok
        .encode(&text, tok.add_bos)
        .map_err(|e| tokenizer_error("messages", e))?;
    common(c, prompt, "messages", lim, seed)
}

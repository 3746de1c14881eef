//! The HTTP side: routes, authentication, request validation, and the answer (a JSON body or
//! a stream of server-sent events) built from the engine thread's events.
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferrinfer_engine::{FinishReason, Request, Tokenizer};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{self, ChatRequest, Common, CompletionRequest, Generation, Limits};
use crate::engine_loop::{EngineInfo, Out, Submit};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::response::{Head, Kind, Usage};
use crate::text::Assembler;
use crate::ServerConfig;

/// What every handler shares.
pub struct AppState {
    pub(crate) submit: SyncSender<Submit>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) info: EngineInfo,
    pub(crate) cfg: ServerConfig,
    pub(crate) model: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) alive: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) next_id: AtomicU64,
    pub(crate) stop_ids: Vec<u32>,
}

type St = State<Arc<AppState>>;

/// The router: `/v1/*` behind the API key when one is set; `/health` and `/metrics` open.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.cfg.body_limit))
        .with_state(state)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): St, req: HttpRequest, next: Next) -> Response {
    if let Some(key) = &s.cfg.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

async fn not_found(req: HttpRequest) -> ApiError {
    ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn health(State(s): St) -> Response {
    if s.alive.load(Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ok"})).into_response()
    } else {
        ApiError::unavailable("the engine thread has stopped").into_response()
    }
}

async fn metrics(State(s): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn models(State(s): St) -> Response {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": &*s.model,
            "object": "model",
            "created": unix_now(),
            "owned_by": "ferrinfer",
            "max_model_len": s.info.context,
        }],
    }))
    .into_response()
}

fn body_bytes(s: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(s.cfg.body_limit)
        } else {
            ApiError::bad_request(format!(
                "could not read the request body: {}",
                r.body_text()
            ))
        }
    })
}

impl AppState {
    fn limits(&self) -> Limits<'_> {
        Limits {
            model: &self.model,
            context: self.info.context,
            vocab: self.info.vocab,
            default_max_tokens: self.cfg.default_max_tokens,
        }
    }

    /// A seed for requests without one: different for every request.
    fn fresh_seed(&self, n: u64) -> u64 {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left(17)
    }

    /// Hands a request to the engine thread and waits for it to be queued.
    async fn submit(
        &self,
        g: &Generation,
        arrived: Instant,
    ) -> Result<UnboundedReceiver<Out>, ApiError> {
        let cap = self.cfg.max_queued as u64;
        if self
            .metrics
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_err()
        {
            self.metrics
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::queue_full(
                self.cfg.max_queued,
                self.cfg.retry_after_s,
            ));
        }
        let (tx, mut rx) = unbounded_channel();
        let sub = Submit {
            request: Request {
                prompt: g.prompt.clone(),
                max_tokens: g.max_tokens,
                sampling: g.sampling,
                seed: g.seed,
                stop_ids: if g.ignore_eos {
                    Vec::new()
                } else {
                    self.stop_ids.clone()
                },
            },
            events: tx,
            arrived,
        };
        match self.submit.try_send(sub) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
                self.metrics
                    .rejected_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::queue_full(
                    self.cfg.max_queued,
                    self.cfg.retry_after_s,
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(ApiError::unavailable("the engine thread has stopped"));
            }
        }
        match rx.recv().await {
            Some(Out::Accepted) => Ok(rx),
            Some(Out::Rejected(m)) => Err(ApiError::bad_request(m)),
            Some(other) => Err(ApiError::internal(format!(
                "unexpected engine event {other:?}"
            ))),
            None => Err(ApiError::unavailable("the engine thread has stopped")),
        }
    }

    fn head(&self, kind: Kind) -> Head {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        Head {
            kind,
            id: match kind {
                Kind::Completion => format!("cmpl-{n:x}{:08x}", unix_now() as u32),
                Kind::Chat => format!("chatcmpl-{n:x}{:08x}", unix_now() as u32),
            },
            created: unix_now(),
            model: self.model.clone(),
        }
    }
}

async fn completions(State(s): St, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    let r = async {
        let body = body_bytes(&s, body)?;
        let v = api::parse_json(&body)?;
        let c: Common = api::typed(&v)?;
        let req: CompletionRequest = api::typed(&v)?;
        let n = s.next_id.load(Ordering::Relaxed);
        api::completion(&req, &c, &s.tokenizer, &s.limits(), s.fresh_seed(n))
    }
    .await;
    run(s, Kind::Completion, r, arrived).await
}

async fn chat_completions(State(s): St, body: Result<Bytes, BytesRejection>) -> Response {
    let arrived = Instant::now();
    let r = async {
        let body = body_bytes(&s, body)?;
        let v = api::parse_json(&body)?;
        let c: Common = api::typed(&v)?;
        let req: ChatRequest = api::typed(&v)?;
        let n = s.next_id.load(Ordering::Relaxed);
        api::chat(&req, &c, &s.tokenizer, &s.limits(), s.fresh_seed(n))
    }
    .await;
    run(s, Kind::Chat, r, arrived).await
}

async fn run(
    s: Arc<AppState>,
    kind: Kind,
    g: Result<Generation, ApiError>,
    arrived: Instant,
) -> Response {
    let g = match g {
        Ok(g) => g,
        Err(e) => {
            if e.status != StatusCode::TOO_MANY_REQUESTS {
                s.metrics.rejected_invalid.fetch_add(1, Ordering::Relaxed);
            }
            return e.into_response();
        }
    };
    let rx = match s.submit(&g, arrived).await {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let head = s.head(kind);
    let gen = Gen {
        rx: Some(rx),
        asm: Assembler::new(s.tokenizer.clone(), g.stops.clone()),
        tok: s.tokenizer.clone(),
        prompt_tokens: g.prompt.len(),
        end: None,
    };
    if g.stream {
        stream(head, gen, g.include_usage)
    } else {
        collect(head, gen).await
    }
}

/// A request being generated: the engine's events turned into text.
struct Gen {
    rx: Option<UnboundedReceiver<Out>>,
    asm: Assembler,
    tok: Arc<Tokenizer>,
    prompt_tokens: usize,
    /// The end, known while the last text is being sent.
    end: Option<(&'static str, Usage)>,
}

/// One step of a request's output.
enum Piece {
    Text(String),
    End { finish: &'static str, usage: Usage },
    Failed(ApiError),
}

fn finish_name(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
        FinishReason::Error(_) => "error",
    }
}

impl Gen {
    /// The next piece of text, or the end.
    async fn next(&mut self) -> Piece {
        if let Some((finish, usage)) = self.end.take() {
            return Piece::End { finish, usage };
        }
        loop {
            let Some(rx) = self.rx.as_mut() else {
                return Piece::Failed(ApiError::internal("the request is over"));
            };
            let ev = rx.recv().await;
            match ev {
                Some(Out::Token(t)) => {
                    if self.tok.is_stop(t) {
                        continue;
                    }
                    let p = match self.asm.push(t) {
                        Ok(p) => p,
                        Err(m) => {
                            self.rx = None;
                            return Piece::Failed(ApiError::internal(m));
                        }
                    };
                    if p.stopped {
                        // A stop sequence: dropping the receiver makes the engine thread
                        // cancel the request (its pages are freed before its next step).
                        self.rx = None;
                        let usage = Usage::new(self.prompt_tokens, self.asm.tokens());
                        if p.text.is_empty() {
                            return Piece::End {
                                finish: "stop",
                                usage,
                            };
                        }
                        self.end = Some(("stop", usage));
                        return Piece::Text(p.text);
                    }
                    if !p.text.is_empty() {
                        return Piece::Text(p.text);
                    }
                }
                Some(Out::Finished {
                    reason,
                    prompt_tokens,
                    generated,
                }) => {
                    self.rx = None;
                    if let FinishReason::Error(m) = &reason {
                        return Piece::Failed(ApiError::internal(m.clone()));
                    }
                    let usage = Usage::new(prompt_tokens, generated);
                    let rest = self.asm.finish();
                    if rest.is_empty() {
                        return Piece::End {
                            finish: finish_name(&reason),
                            usage,
                        };
                    }
                    self.end = Some((finish_name(&reason), usage));
                    return Piece::Text(rest);
                }
                Some(Out::Error(m)) => {
                    self.rx = None;
                    return Piece::Failed(ApiError::internal(m));
                }
                Some(Out::Accepted) | Some(Out::Rejected(_)) => continue,
                None => {
                    self.rx = None;
                    return Piece::Failed(ApiError::unavailable("the engine thread has stopped"));
                }
            }
        }
    }
}

/// A non-streamed answer: the whole text and the usage counts.
async fn collect(head: Head, mut gen: Gen) -> Response {
    let mut text = String::new();
    loop {
        match gen.next().await {
            Piece::Text(t) => text.push_str(&t),
            Piece::End { finish, usage } => {
                return Json(head.response(&text, finish, usage)).into_response()
            }
            Piece::Failed(e) => return e.into_response(),
        }
    }
}

fn sse(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

enum Phase {
    Role,
    Tokens,
    Usage(Usage),
    Done,
    Over,
}

/// A streamed answer: `data: {chunk}` per piece of text, a last chunk with the finish reason,
/// the usage chunk when asked for, then `data: [DONE]`. Dropping the body (a client that went
/// away) drops the receiver, which cancels the request.
fn stream(head: Head, gen: Gen, include_usage: bool) -> Response {
    let phase = if head.kind == Kind::Chat {
        Phase::Role
    } else {
        Phase::Tokens
    };
    let body = futures_util::stream::unfold(
        (head, gen, phase),
        move |(head, mut gen, phase)| async move {
            let (bytes, next) = match phase {
                Phase::Role => (sse(&head.chunk(None, true, None)), Phase::Tokens),
                Phase::Tokens => match gen.next().await {
                    Piece::Text(t) => (sse(&head.chunk(Some(&t), false, None)), Phase::Tokens),
                    Piece::End { finish, usage } => (
                        sse(&head.chunk(None, false, Some(finish))),
                        if include_usage {
                            Phase::Usage(usage)
                        } else {
                            Phase::Done
                        },
                    ),
                    Piece::Failed(e) => {
                        (Bytes::from(format!("data: {}\n\n", e.body())), Phase::Done)
                    }
                },
                Phase::Usage(u) => (sse(&head.usage_chunk(u)), Phase::Done),
                Phase::Done => (Bytes::from_static(b"data: [DONE]\n\n"), Phase::Over),
                Phase::Over => return None,
            };
            Some((Ok::<_, Infallible>(bytes), (head, gen, next)))
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::internal(e.to_string()).into_response())
}

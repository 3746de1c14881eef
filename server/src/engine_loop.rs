//! The engine thread: the one owner of the [`Engine`] (and so of the GPU or the CPU backend).
//!
//! It loops: take every request waiting in the bounded channel (blocking on it when the engine
//! is idle, so an idle server uses no CPU), cancel the requests whose client went away (their
//! event receiver was dropped: a disconnect, or a stop sequence matched by the HTTP side), run
//! one engine step, and route each token and each end to its request's channel.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrinfer_engine::runner::ModelRunner;
use ferrinfer_engine::{Engine, Event, FinishReason, Request, RequestId};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{Metrics, Outcome, StepKind};

/// A request handed to the engine thread.
pub struct Submit {
    /// The engine request.
    pub request: Request,
    /// Where its events go; dropping the receiver cancels the request.
    pub events: UnboundedSender<Out>,
    /// When the HTTP request arrived (for time to first token).
    pub arrived: Instant,
}

/// What the engine thread tells a request's handler.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// The engine queued the request.
    Accepted,
    /// The engine refused it (the message says why); nothing else follows.
    Rejected(String),
    /// A generated token.
    Token(u32),
    /// The request ended (after its last token).
    Finished {
        /// Why.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Tokens generated.
        generated: usize,
    },
    /// The engine failed; the request is over.
    Error(String),
}

/// What the engine thread reports once its engine is loaded.
#[derive(Clone, Debug)]
pub struct EngineInfo {
    /// The model's context length in tokens.
    pub context: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Tokens per KV page.
    pub page_size: usize,
    /// KV pages in the cache.
    pub total_pages: usize,
    /// What runs the model.
    pub backend: String,
    /// `general.name` of the model file (may be empty).
    pub model_name: String,
}

impl EngineInfo {
    /// Reads the facts of an engine.
    pub fn of<R: ModelRunner>(e: &Engine<R>) -> Self {
        let r = e.runner();
        Self {
            context: r.config().context,
            vocab: r.config().vocab,
            page_size: r.page_size(),
            total_pages: r.total_pages(),
            backend: r.backend(),
            model_name: r.config().name.clone(),
        }
    }
}

struct Active {
    events: UnboundedSender<Out>,
    arrived: Instant,
    last: Option<Instant>,
}

/// Clears the `alive` flag when the engine thread ends, however it ends (a panic included).
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The engine thread's loop; returns when every sender of `rx` is gone and no work is left.
pub fn run<R: ModelRunner>(
    mut engine: Engine<R>,
    rx: Receiver<Submit>,
    metrics: Arc<Metrics>,
    alive: Arc<AtomicBool>,
) {
    let _guard = AliveGuard(alive);
    let mut active: HashMap<RequestId, Active> = HashMap::new();
    let mut window = (Instant::now(), 0u64);
    let mut open = true;
    publish(&engine, &metrics, &mut window);
    loop {
        // 1. Intake: block while idle, else take what is there.
        if !engine.has_work() {
            if !open {
                return;
            }
            // The timeout only refreshes the tokens/s gauge to 0 after traffic stops.
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(s) => admit(&mut engine, &mut active, &metrics, s),
                Err(RecvTimeoutError::Timeout) => {
                    publish(&engine, &metrics, &mut window);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(s) => admit(&mut engine, &mut active, &metrics, s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // 2. Cancellation: a request whose receiver is gone is cancelled, its pages freed now.
        let gone: Vec<RequestId> = active
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            if let Err(e) = engine.cancel(id) {
                eprintln!("ferrinfer serve: cancelling a request failed: {e}");
            }
            active.remove(&id);
            metrics.finished(Outcome::Cancelled);
            metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
        // 3. One step.
        if engine.has_work() {
            let (t, before) = (Instant::now(), engine.stats());
            match engine.step() {
                Ok(events) => {
                    route(events, &mut active, &metrics);
                    let after = engine.stats();
                    if after.steps > before.steps {
                        let kind = if after.decode_steps > before.decode_steps {
                            StepKind::Decode
                        } else {
                            StepKind::Mixed
                        };
                        metrics.step(kind, t.elapsed());
                    }
                }
                Err(e) => {
                    // The engine's state is unknown after a failed step: end every request.
                    let msg = format!("engine step failed: {e}");
                    eprintln!("ferrinfer serve: {msg}");
                    for (id, a) in active.drain() {
                        let _ = a.events.send(Out::Error(msg.clone()));
                        let _ = engine.cancel(id);
                        metrics.finished(Outcome::Error);
                        metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
        }
        publish(&engine, &metrics, &mut window);
    }
}

fn admit<R: ModelRunner>(
    engine: &mut Engine<R>,
    active: &mut HashMap<RequestId, Active>,
    metrics: &Metrics,
    s: Submit,
) {
    let r = engine.runner();
    // The whole request (prompt + max_tokens) must fit the KV cache when it runs alone;
    // otherwise it could only end in an error after generating part of its text.
    let need = (s.request.prompt.len() + s.request.max_tokens).div_ceil(r.page_size());
    let refused = if need > r.total_pages() {
        Some(format!(
            "the request needs {need} KV pages (prompt {} + max_tokens {} tokens), the server's \
             cache has {}: lower max_tokens or shorten the prompt",
            s.request.prompt.len(),
            s.request.max_tokens,
            r.total_pages()
        ))
    } else {
        None
    };
    let prompt_tokens = s.request.prompt.len() as u64;
    let result = match refused {
        Some(m) => Err(m),
        None => engine.add(s.request).map_err(|e| e.to_string()),
    };
    match result {
        Ok(id) => {
            metrics
                .prompt_tokens
                .fetch_add(prompt_tokens, Ordering::Relaxed);
            let _ = s.events.send(Out::Accepted);
            active.insert(
                id,
                Active {
                    events: s.events,
                    arrived: s.arrived,
                    last: None,
                },
            );
        }
        Err(m) => {
            metrics.rejected_invalid.fetch_add(1, Ordering::Relaxed);
            metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = s.events.send(Out::Rejected(m));
        }
    }
}

fn route(events: Vec<Event>, active: &mut HashMap<RequestId, Active>, metrics: &Metrics) {
    let now = Instant::now();
    for ev in events {
        match ev {
            Event::Token { id, token } => {
                metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = active.get_mut(&id) {
                    match a.last {
                        None => metrics.ttft(now - a.arrived),
                        Some(t) => metrics.itl(now - t),
                    }
                    a.last = Some(now);
                    let _ = a.events.send(Out::Token(token));
                }
            }
            Event::Finished {
                id,
                reason,
                prompt_tokens,
                generated,
            } => {
                if let Some(a) = active.remove(&id) {
                    metrics.e2e(now - a.arrived);
                    metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
                    metrics.finished(match reason {
                        FinishReason::Stop => Outcome::Stop,
                        FinishReason::Length => Outcome::Length,
                        FinishReason::Cancelled => Outcome::Cancelled,
                        FinishReason::Error(_) => Outcome::Error,
                    });
                    let _ = a.events.send(Out::Finished {
                        reason,
                        prompt_tokens,
                        generated,
                    });
                }
            }
        }
    }
}

/// Sets the gauges from the engine's state.
fn publish<R: ModelRunner>(engine: &Engine<R>, m: &Metrics, window: &mut (Instant, u64)) {
    let (waiting, running) = engine.load();
    let r = engine.runner();
    let (total, free) = (r.total_pages(), r.free_pages());
    let stats = engine.stats();
    m.waiting.store(waiting as u64, Ordering::Relaxed);
    m.running.store(running as u64, Ordering::Relaxed);
    m.kv_pages_used
        .store(total.saturating_sub(free) as u64, Ordering::Relaxed);
    m.kv_pages_free.store(free as u64, Ordering::Relaxed);
    m.prefix_hits.store(stats.prefix_hits, Ordering::Relaxed);
    m.prefix_tokens
        .store(stats.prefix_tokens, Ordering::Relaxed);
    m.kv_page_size
        .store(r.page_size() as u64, Ordering::Relaxed);
    m.steps.store(stats.steps, Ordering::Relaxed);
    m.preemptions.store(stats.preemptions, Ordering::Relaxed);
    let dt = window.0.elapsed();
    // Counting the prefix cache's distinct pages walks every kept page: done when the engine
    // goes idle (exact for the leak check) and once a second while it runs, not every step.
    if !engine.has_work() || dt >= Duration::from_secs(1) {
        m.kv_pages_cached
            .store(engine.cached_pages() as u64, Ordering::Relaxed);
    }
    if dt >= Duration::from_secs(1) {
        let tokens = m.generated_tokens.load(Ordering::Relaxed);
        let rate = (tokens - window.1) as f64 / dt.as_secs_f64();
        m.tokens_per_second.store(rate.to_bits(), Ordering::Relaxed);
        *window = (Instant::now(), tokens);
    }
}

//! # ferrinfer-server
//!
//! `ferrinfer serve`: the engine behind OpenAI's HTTP API (`POST /v1/completions`,
//! `POST /v1/chat/completions`, streaming as server-sent events or whole; `GET /v1/models`,
//! `GET /health`, `GET /metrics` in Prometheus' text format).
//!
//! Threads: one **engine thread** owns the [`Engine`] (the GPU context or the CPU backend) and
//! runs its steps; the HTTP side (tokio + axum) validates and tokenizes requests, hands them to
//! the engine thread through a bounded channel, and turns the events it gets back into text.
//! Backpressure: at most [`ServerConfig::max_queued`] requests are accepted and unfinished at
//! once; beyond that a request is answered 429 with `Retry-After`. A client that goes away
//! (or a stop sequence that matches) drops its event receiver; the engine thread then cancels
//! the request before its next step, which frees its KV pages.
//!
//! ```no_run
//! # async fn f() -> Result<(), ferrinfer_server::ServeError> {
//! # use ferrinfer_engine::runner::{cpu::CpuRunner, ModelRunner};
//! # use ferrinfer_engine::{Engine, Model, SchedulerConfig};
//! # fn load() -> ferrinfer_engine::Result<(Engine<Box<dyn ModelRunner>>, std::sync::Arc<ferrinfer_engine::Tokenizer>)> {
//! #     let m = Model::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &mut |_, _| {})?;
//! #     let runner: Box<dyn ModelRunner> = Box::new(CpuRunner::new(m.config, m.weights, 16384)?);
//! #     Ok((Engine::new(runner, SchedulerConfig::default())?, std::sync::Arc::new(m.tokenizer)))
//! # }
//! use ferrinfer_server::{Server, ServerConfig};
//! let server = Server::bind(ServerConfig::default(), load).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run().await
//! # }
//! ```
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod engine_loop;
pub mod error;
mod http;
pub mod metrics;
pub mod response;
pub mod text;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use axum::serve::ListenerExt;
use ferrinfer_engine::runner::ModelRunner;
use ferrinfer_engine::{Engine, EngineError, Tokenizer};

pub use engine_loop::EngineInfo;
pub use error::ApiError;
pub use metrics::Metrics;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address or host name to bind (`127.0.0.1`, `::1`, `localhost`, `0.0.0.0`, ...).
    pub host: String,
    /// Port (0: any free port; [`Server::local_addr`] tells which).
    pub port: u16,
    /// Bearer token required on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Bind a non-loopback address without an API key (refused otherwise).
    pub allow_unauthenticated_remote: bool,
    /// Requests accepted and unfinished at most; more are answered 429.
    pub max_queued: usize,
    /// Request bodies larger than this many bytes are answered 413.
    pub body_limit: usize,
    /// The model name clients see (`/v1/models`, `model` fields); empty: the file's
    /// `general.name`, else `ferrinfer`.
    pub model_name: String,
    /// `max_tokens` of a request that does not set it (capped by the context left).
    pub default_max_tokens: usize,
    /// `Retry-After` seconds of a 429.
    pub retry_after_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            allow_unauthenticated_remote: false,
            max_queued: 1024,
            body_limit: 1 << 20,
            model_name: String::new(),
            default_max_tokens: 256,
            retry_after_s: 1,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is refused (e.g. a public address without an API key).
    #[error("{0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The engine could not be loaded.
    #[error("loading the engine: {0}")]
    Engine(String),
}

/// Resolves `host:port`, and refuses a non-loopback address without an API key unless
/// `allow_unauthenticated_remote`.
pub async fn resolve(cfg: &ServerConfig) -> Result<SocketAddr, ServeError> {
    let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, cfg.port)],
        Err(_) => tokio::net::lookup_host((host, cfg.port))
            .await
            .map_err(|e| ServeError::Io {
                context: format!("resolving --host {host}"),
                source: e,
            })?
            .collect(),
    };
    let Some(&addr) = addrs.first() else {
        return Err(ServeError::Config(format!(
            "--host {host} resolves to no address"
        )));
    };
    let remote = addrs.iter().any(|a| !a.ip().is_loopback());
    if remote && cfg.api_key.is_none() && !cfg.allow_unauthenticated_remote {
        return Err(ServeError::Config(format!(
            "refusing to serve on {addr}, which is reachable from other machines, without an \
             API key: pass --api-key KEY (clients then send `Authorization: Bearer KEY`), bind a \
             loopback address (--host 127.0.0.1), or pass --allow-unauthenticated-remote"
        )));
    }
    Ok(addr)
}

/// A bound server, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<http::AppState>,
    engine_thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Checks the address policy, binds, then runs `load` on a new engine thread (the engine
    /// never leaves it: a GPU runner's context stays on the thread that made it) and waits
    /// for it to finish loading.
    pub async fn bind<R, F>(cfg: ServerConfig, load: F) -> Result<Self, ServeError>
    where
        R: ModelRunner + 'static,
        F: FnOnce() -> ferrinfer_engine::Result<(Engine<R>, Arc<Tokenizer>)> + Send + 'static,
    {
        if cfg.max_queued == 0 {
            return Err(ServeError::Config(
                "the queue capacity must be at least 1".into(),
            ));
        }
        let addr = resolve(&cfg).await?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ServeError::Io {
                context: format!("binding {addr}"),
                source: e,
            })?;
        let addr = listener.local_addr().map_err(|e| ServeError::Io {
            context: "reading the bound address".into(),
            source: e,
        })?;
        let metrics = Arc::new(Metrics::default());
        let alive = Arc::new(AtomicBool::new(true));
        let (submit, rx) = std::sync::mpsc::sync_channel(cfg.max_queued);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (m, a) = (metrics.clone(), alive.clone());
        let engine_thread = std::thread::Builder::new()
            .name("ferrinfer-engine".into())
            .spawn(move || {
                // Warmed up before the server reports ready: its first requests do not pay
                // for the backend's first-use work.
                let loaded: Result<(Engine<R>, Arc<Tokenizer>), EngineError> =
                    load().and_then(|(mut e, t)| e.warm_up().map(|()| (e, t)));
                match loaded {
                    Ok((engine, tok)) => {
                        let info = EngineInfo::of(&engine);
                        if ready_tx.send(Ok((info, tok))).is_ok() {
                            engine_loop::run(engine, rx, m, a);
                        }
                    }
                    Err(e) => {
                        a.store(false, std::sync::atomic::Ordering::SeqCst);
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| ServeError::Io {
                context: "starting the engine thread".into(),
                source: e,
            })?;
        let (info, tokenizer) = match ready_rx.await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return Err(ServeError::Engine(e)),
            Err(_) => return Err(ServeError::Engine("the engine thread panicked".into())),
        };
        let model: Arc<str> = if !cfg.model_name.is_empty() {
            cfg.model_name.as_str().into()
        } else if !info.model_name.is_empty() {
            info.model_name.as_str().into()
        } else {
            "ferrinfer".into()
        };
        let mut stop_ids = tokenizer.stop_ids.clone();
        stop_ids.extend(tokenizer.eos);
        let state = Arc::new(http::AppState {
            submit,
            tokenizer,
            info,
            cfg,
            model,
            metrics,
            alive,
            next_id: AtomicU64::new(0),
            stop_ids,
        });
        Ok(Self {
            listener,
            addr,
            state,
            engine_thread,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The engine's facts (context, pages, backend).
    pub fn info(&self) -> &EngineInfo {
        &self.state.info
    }

    /// The model name clients see.
    pub fn model_name(&self) -> &str {
        &self.state.model
    }

    /// The live metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight and stops the
    /// engine thread.
    pub async fn run_until<S>(self, shutdown: S) -> Result<(), ServeError>
    where
        S: Future<Output = ()> + Send + 'static,
    {
        let Self {
            listener,
            addr,
            state,
            engine_thread,
        } = self;
        let app = http::router(state);
        // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm holds each
        // one back until the client's (delayed) ACK of the previous one, ~40 ms on Linux.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| ServeError::Io {
                context: format!("serving on {addr}"),
                source: e,
            });
        // The router (and with it the request channel's sender) is gone: the engine thread
        // finishes what it holds and returns.
        let _ = tokio::task::spawn_blocking(move || engine_thread.join()).await;
        r
    }

    /// Serves until Ctrl-C (SIGINT) or SIGTERM.
    pub async fn run(self) -> Result<(), ServeError> {
        self.run_until(shutdown_signal()).await
    }
}

/// Completes on Ctrl-C, or SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Binds, prints where it listens, and serves until Ctrl-C / SIGTERM.
pub async fn serve<R, F>(cfg: ServerConfig, load: F) -> Result<(), ServeError>
where
    R: ModelRunner + 'static,
    F: FnOnce() -> ferrinfer_engine::Result<(Engine<R>, Arc<Tokenizer>)> + Send + 'static,
{
    let server = Server::bind(cfg, load).await?;
    let i = server.info();
    eprintln!(
        "ferrinfer serve: {} on {} (context {} tokens, KV cache {} pages × {} tokens), listening \
         on http://{}",
        server.model_name(),
        i.backend,
        i.context,
        i.total_pages,
        i.page_size,
        server.local_addr()
    );
    server.run().await
}

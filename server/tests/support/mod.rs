//! Shared by the server's tests: the default model loaded once per test binary, servers on
//! ephemeral loopback ports (each on its own runtime thread, so they outlive any one test's
//! runtime), the engine driven directly, and an SSE reader.
#![allow(dead_code)]
pub mod load;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferrinfer_engine::runner::cpu::CpuRunner;
use ferrinfer_engine::runner::ModelRunner;
use ferrinfer_engine::{
    Engine, Event, Message, Model, ModelConfig, Request, SamplingParams, SchedulerConfig,
    Tokenizer, Weights,
};
use ferrinfer_server::{Metrics, Server, ServerConfig};

/// The model file: $FERRINFER_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf. Missing is a
/// test failure (CI's set-up fetches it), never a silent pass.
pub fn model_path() -> PathBuf {
    let root = if std::path::Path::new("models").is_dir() {
        PathBuf::from(".")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    };
    let p = std::env::var_os("FERRINFER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (scripts/fetch-model.sh) first",
        p.display()
    );
    p
}

pub struct Shared {
    pub config: ModelConfig,
    pub weights: Arc<Weights>,
    pub tokenizer: Arc<Tokenizer>,
}

pub fn model() -> &'static Shared {
    static M: OnceLock<Shared> = OnceLock::new();
    M.get_or_init(|| {
        let m = Model::load(&model_path(), &mut |_, _| {}).expect("model loads");
        Shared {
            config: m.config,
            weights: m.weights,
            tokenizer: Arc::new(m.tokenizer),
        }
    })
}

pub const STEP_TOKENS: usize = 256;

/// A CPU engine over the shared weights.
pub fn engine(kv_tokens: usize) -> Engine<Box<dyn ModelRunner>> {
    let m = model();
    let runner: Box<dyn ModelRunner> =
        Box::new(CpuRunner::new(m.config.clone(), m.weights.clone(), kv_tokens).unwrap());
    Engine::new(
        runner,
        SchedulerConfig {
            step_tokens: STEP_TOKENS,
            max_running: 32,
            ..SchedulerConfig::default()
        },
    )
    .unwrap()
}

/// A running server.
pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub model: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with `cfg` (host and port are set to 127.0.0.1:0) and a KV cache of
    /// `kv_tokens`.
    pub fn start(mut cfg: ServerConfig, kv_tokens: usize) -> Self {
        cfg.host = "127.0.0.1".into();
        cfg.port = 0;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let server = Server::bind(cfg, move || {
                    Ok((engine(kv_tokens), model().tokenizer.clone()))
                })
                .await
                .expect("server starts");
                tx.send((
                    server.local_addr(),
                    server.metrics(),
                    server.model_name().to_string(),
                ))
                .unwrap();
                server
                    .run_until(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("server runs");
            });
        });
        let (addr, metrics, model) = rx.recv().expect("server thread reports its address");
        Self {
            base: format!("http://{addr}"),
            addr,
            metrics,
            model,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops it and waits for the engine thread to end.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The server most tests share (default limits, 4096-token KV cache); never stopped.
pub fn shared() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| TestServer::start(ServerConfig::default(), 4096))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Reads a server-sent-event body: every `data:` payload, in order.
pub async fn sse(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap();
    assert!(
        text.ends_with("\n\n"),
        "SSE body does not end with a blank line: {text:?}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {e:?}"))
                .to_string()
        })
        .collect()
}

/// Runs `prompt` alone through an engine driven directly: the generated token ids and the text
/// of those that are not stop tokens.
pub fn direct(prompt: Vec<u32>, max_tokens: usize) -> (Vec<u32>, String) {
    let m = model();
    let tok = &m.tokenizer;
    let mut e = engine(4096);
    let mut stop_ids = tok.stop_ids.clone();
    stop_ids.extend(tok.eos);
    e.add(Request {
        prompt,
        max_tokens,
        sampling: SamplingParams::greedy(),
        seed: 0,
        stop_ids,
    })
    .unwrap();
    let mut ids = Vec::new();
    while e.has_work() {
        for ev in e.step().unwrap() {
            if let Event::Token { token, .. } = ev {
                ids.push(token);
            }
        }
    }
    let text_ids: Vec<u32> = ids.iter().copied().filter(|&t| !tok.is_stop(t)).collect();
    let text = tok.decode(&text_ids, false).unwrap();
    (ids, text)
}

/// The prompt ids the server makes of a chat.
pub fn chat_ids(messages: &[(&str, &str)]) -> Vec<u32> {
    let tok = &model().tokenizer;
    let msgs: Vec<Message> = messages.iter().map(|(r, c)| Message::new(r, c)).collect();
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    tok.encode(&text, tok.add_bos).unwrap()
}

/// The prompt ids the server makes of a completion prompt.
pub fn text_ids(prompt: &str) -> Vec<u32> {
    let tok = &model().tokenizer;
    tok.encode(prompt, tok.add_bos).unwrap()
}

/// A metric's value from the Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in the metrics"))
}

/// Polls /metrics until the server holds no request and no KV page beyond those its prefix
/// cache keeps (with nothing running, every used page must be one of them: no leak), or panics
/// after 20 s.
pub async fn wait_idle(c: &reqwest::Client, base: &str) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let m = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&m, "ferrinfer_kv_pages_used") == metric(&m, "ferrinfer_kv_pages_cached")
            && metric(&m, "ferrinfer_num_requests_running") == 0.0
            && metric(&m, "ferrinfer_num_requests_waiting") == 0.0
            && metric(&m, "ferrinfer_num_requests_in_flight") == 0.0
        {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server did not become idle:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! CUDA graphs of the GPU runner's steps. A step of SmolLM2 is ~330 launches (11 per block ×
//! 30 blocks and the head), each behind its op's host checks and cuBLAS's own host path: ~1.4
//! ms of host time per step, more than the GPU needs for a single request. Replaying captured
//! graphs replaces most of that.
//!
//! Two kinds of step replay, each from its own [`StepGraphs`] store:
//! - **decode steps** (one token per sequence, attention on the decode op) as one graph: every
//!   launch reads its per-step data from device buffers at fixed addresses, written before the
//!   replay (token ids, positions and logits rows by the runner; attention plans by
//!   `BatchDecode::plan_into` in graph mode; append metadata by `PagedKvCache::begin_append`
//!   into a buffer reserved at the runner's capacity). Baked in are the token and logits-row
//!   counts and those buffers' addresses, so [`GraphKey`] holds exactly these;
//! - **steps with prompt chunks** of at most [`PIECE_MAX_TOKENS`] tokens *piecewise* (as vLLM
//!   does): the graph-safe work between two attentions (output projection, MLP, norms, the next
//!   block's QKV product and RoPE; the embedding before the first block; the head after the
//!   last) is one graph per gap, and each block's KV append and prefill attention run eagerly
//!   between them, since their plans differ from step to step. The pieces run over the step's
//!   token count rounded up to a bucket ([`PieceKey`]; the padding rows compute garbage that no
//!   one reads), so steps of many different sizes share a few keys.
//!
//! Policy (both stores): a key's first step runs eagerly (lazily loaded kernels and cuBLAS's
//! first-use set-up happen outside any capture), its second is captured and replayed, later
//! ones replay. Keys are kept up to a store's limit, least recently used evicted. A capture
//! that fails turns that store off for the runner (its steps then run eagerly, and the reason
//! is kept for reports): a failed capture launches nothing, so the eager run is the part's only
//! run.
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

/// Decode-step graphs kept at most (each replays one batch size's decode step).
pub const MAX_GRAPHS: usize = 128;
/// Piecewise keys kept at most (each holds one graph per block and one more).
pub const MAX_PIECED: usize = 48;
/// Steps with prompt chunks of at most this many tokens run piecewise.
pub const PIECE_MAX_TOKENS: usize = 512;
/// Token counts of piecewise steps are rounded up to a multiple of this.
pub const PIECE_TOKEN_ALIGN: usize = 32;
/// Keys remembered as seen once before the memory of them is reset.
const MAX_SEEN: usize = 4096;

/// What a captured step bakes in: counts and the addresses of per-step metadata.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) struct GraphKey {
    /// Tokens of the step (one per sequence in a decode step).
    pub tokens: usize,
    /// Logits rows of the step.
    pub rows: usize,
    /// Whether the step ends in the device argmax ([`super::GpuRunner::forward_greedy`]).
    pub greedy: bool,
    /// Device addresses of the append metadata (`AppendStep::device_addresses`).
    pub append: [u64; 4],
    /// Device addresses of the decode plan's buffers (`BatchDecodePlan::buffer_addresses`).
    pub plan: [u64; 3],
}

/// What a piecewise step's graphs bake in: the (bucketed) token and logits-row counts the pieces
/// run over, and whether the last piece ends in the device argmax.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) struct PieceKey {
    /// Rows the pieces' kernels run over (≥ the step's tokens).
    pub tokens: usize,
    /// Logits rows the head runs over (≥ the step's logits rows).
    pub rows: usize,
    /// Whether the step ends in the device argmax.
    pub greedy: bool,
}

impl PieceKey {
    /// The bucket of a step of `tokens` tokens and `rows` logits rows on a runner of capacity
    /// `cap` / `cap_rows`: tokens rounded up to [`PIECE_TOKEN_ALIGN`], rows to a power of two,
    /// neither above the capacity; `None` above [`PIECE_MAX_TOKENS`].
    pub fn bucket(
        tokens: usize,
        rows: usize,
        greedy: bool,
        cap: usize,
        cap_rows: usize,
    ) -> Option<Self> {
        (tokens > 0 && tokens <= PIECE_MAX_TOKENS).then(|| Self {
            tokens: tokens
                .next_multiple_of(PIECE_TOKEN_ALIGN)
                .min(cap)
                .max(tokens),
            rows: rows.next_power_of_two().min(cap_rows).max(rows),
            greedy,
        })
    }
}

/// Counts of what the runner did with its steps of one kind, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Keys captured (each one graph, or one per piece).
    pub captures: u64,
    /// Steps run by launching graphs (a capture step included: it runs by launching what it
    /// captured).
    pub replays: u64,
    /// Steps run eagerly (a key's first step, graphs off, or a failed capture).
    pub eager: u64,
    /// Keys evicted to stay within the store's limit.
    pub evictions: u64,
}

/// What to do with a step.
pub(super) enum Action {
    /// Launch the step's kernels one by one.
    Eager,
    /// Capture the step's launches into a graph, then replay it.
    Capture,
    /// Replay the graph of the key.
    Replay,
}

/// A key's captured graphs (one, or one per piece) with their last use.
struct Entry {
    parts: Vec<StepGraph>,
    used: u64,
}

/// A graph exec of the runner's stream.
pub(super) struct StepGraph(CudaGraph);

impl StepGraph {
    /// Launches the graph on the stream it was captured on.
    pub fn launch(&self) -> Result<(), String> {
        self.0.launch().map_err(|e| format!("graph launch: {e}"))
    }
}

// SAFETY: CUDA graph objects may be used from any thread as long as calls on one graph are
// serialised; the runner owns its graphs and touches them only through `&mut self`.
unsafe impl Send for StepGraph {}

/// Graphs of one kind of step, by key.
pub(super) struct StepGraphs<K> {
    enabled: bool,
    seen: HashSet<K>,
    graphs: HashMap<K, Entry>,
    /// Keys kept at most.
    max: usize,
    tick: u64,
    stats: GraphStats,
    /// Why graphs were turned off after a failed capture.
    failed: Option<String>,
}

impl<K: Copy + Eq + Hash> StepGraphs<K> {
    /// Graphs on (replayed steps are bit-identical to eager ones, `engine/tests/graphs.rs`,
    /// checked on an H100), at most `max` keys; [`StepGraphs::set_enabled`] turns them off.
    pub fn new(max: usize) -> Self {
        Self {
            enabled: true,
            seen: HashSet::new(),
            graphs: HashMap::new(),
            max: max.max(1),
            tick: 0,
            stats: GraphStats::default(),
            failed: None,
        }
    }

    /// Turns graphs on (the default) or off; off drops every graph.
    pub fn set_enabled(&mut self, on: bool) {
        self.enabled = on;
        if !on {
            self.graphs.clear();
            self.seen.clear();
        }
    }

    /// Drops every graph (the next steps capture again).
    pub fn clear(&mut self) {
        self.graphs.clear();
        self.seen.clear();
    }

    /// Whether steps may run as graphs (on, and no capture has failed).
    pub fn enabled(&self) -> bool {
        self.enabled && self.failed.is_none()
    }

    pub fn stats(&self) -> GraphStats {
        self.stats
    }

    /// Why a capture failed, if one did (graphs are then off).
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Decides how to run a step of `key` (`None`: a step no graph may replay).
    pub fn action(&mut self, key: Option<K>) -> Action {
        let Some(key) = key.filter(|_| self.enabled()) else {
            self.stats.eager += 1;
            return Action::Eager;
        };
        if self.graphs.contains_key(&key) {
            return Action::Replay;
        }
        if self.seen.contains(&key) {
            return Action::Capture;
        }
        if self.seen.len() >= MAX_SEEN {
            self.seen.clear();
        }
        self.seen.insert(key);
        self.stats.eager += 1;
        Action::Eager
    }

    /// Starts capturing on `stream` (only this thread's work is captured, so other threads of
    /// the process may go on using CUDA).
    pub fn begin(&mut self, stream: &CudaStream) -> Result<(), String> {
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| self.fail(format!("begin capture: {e}")))
    }

    /// Ends the capture begun on `stream`: the graph of one part, when `ok` (every launch of
    /// the part succeeded) and the capture worked. On any failure graphs turn off and the error
    /// says why.
    pub fn end(
        &mut self,
        stream: &std::sync::Arc<CudaStream>,
        ok: bool,
    ) -> Result<StepGraph, String> {
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        match (ok, ended) {
            (true, Ok(Some(g))) => Ok(StepGraph(g)),
            (true, Ok(None)) => Err(self.fail("capture produced no graph".into())),
            (true, Err(e)) => Err(self.fail(format!("end capture: {e}"))),
            (false, _) => Err(self.fail("a launch failed during capture".into())),
        }
    }

    /// Keeps the captured `parts` of `key` (replayed in order by [`StepGraphs::replay`]) as the
    /// most recently used key (the least recently used one makes room).
    pub fn keep(&mut self, key: K, parts: Vec<StepGraph>) {
        if self.graphs.len() >= self.max {
            self.evict_oldest();
        }
        self.stats.captures += 1;
        self.tick += 1;
        let used = self.tick;
        self.graphs.insert(key, Entry { parts, used });
    }

    /// Counts a step that ran by launching the graphs it had just captured part by part.
    pub fn launched_captured(&mut self) {
        self.stats.replays += 1;
    }

    /// Whether `key` has graphs.
    #[cfg(test)]
    pub fn has(&self, key: &K) -> bool {
        self.graphs.contains_key(key)
    }

    /// Launches part `part` of the graphs of `key` on the stream they were captured on (part 0
    /// counts the step as replayed).
    pub fn replay(&mut self, key: &K, part: usize) -> Result<(), String> {
        self.tick += 1;
        let tick = self.tick;
        let Some(e) = self.graphs.get_mut(key) else {
            return Err("no graph for the step".into());
        };
        e.used = tick;
        let g = e
            .parts
            .get(part)
            .ok_or_else(|| format!("no graph for part {part} of the step"))?;
        g.launch()?;
        if part == 0 {
            self.stats.replays += 1;
        }
        Ok(())
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self
            .graphs
            .iter()
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| *k)
        {
            self.graphs.remove(&k);
            self.stats.evictions += 1;
        }
    }

    /// Records a failed capture: graphs off from now on (the step then runs eagerly, counted
    /// here).
    fn fail(&mut self, why: String) -> String {
        self.stats.eager += 1;
        self.graphs.clear();
        self.failed = Some(why.clone());
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tokens: usize) -> GraphKey {
        GraphKey {
            tokens,
            rows: tokens,
            greedy: true,
            append: [1, 2, 3, 4],
            plan: [5, 6, 7],
        }
    }

    #[test]
    fn first_step_of_a_key_is_eager_then_captured() {
        let mut g = StepGraphs::<GraphKey>::new(MAX_GRAPHS);
        g.set_enabled(true);
        assert!(matches!(g.action(Some(key(4))), Action::Eager));
        assert!(matches!(g.action(Some(key(4))), Action::Capture));
        // Another key starts over; a step no graph may replay is eager.
        assert!(matches!(g.action(Some(key(5))), Action::Eager));
        assert!(matches!(g.action(None), Action::Eager));
        assert_eq!(g.stats().eager, 3);
    }

    #[test]
    fn on_by_default_and_off_means_eager() {
        let mut g = StepGraphs::<GraphKey>::new(MAX_GRAPHS);
        assert!(g.enabled(), "on by default");
        g.set_enabled(false);
        for _ in 0..3 {
            assert!(matches!(g.action(Some(key(1))), Action::Eager));
        }
        g.set_enabled(true);
        assert!(matches!(g.action(Some(key(1))), Action::Eager));
        assert!(matches!(g.action(Some(key(1))), Action::Capture));
    }

    #[test]
    fn piece_buckets() {
        let b = |t, r| PieceKey::bucket(t, r, true, 1024, 64).map(|k| (k.tokens, k.rows));
        assert_eq!(b(1, 1), Some((32, 1)));
        assert_eq!(b(33, 3), Some((64, 4)));
        assert_eq!(b(64, 64), Some((64, 64)));
        assert_eq!(b(512, 40), Some((512, 64)));
        assert_eq!(b(513, 1), None, "above PIECE_MAX_TOKENS");
        assert_eq!(b(0, 0), None);
        // Never above the capacity, never below the step.
        let k = PieceKey::bucket(90, 9, false, 100, 10).unwrap();
        assert_eq!((k.tokens, k.rows), (96, 10));
        let k = PieceKey::bucket(99, 10, false, 100, 10).unwrap();
        assert_eq!((k.tokens, k.rows), (100, 10));
    }

    #[test]
    fn kept_parts_replay_in_order_and_are_evicted_oldest_first() {
        let mut g = StepGraphs::<PieceKey>::new(1);
        let k = |t| PieceKey {
            tokens: t,
            rows: 1,
            greedy: true,
        };
        g.keep(k(32), Vec::new());
        assert!(g.has(&k(32)));
        // A key without that part is an error, not a panic.
        assert!(g.replay(&k(32), 0).is_err());
        g.keep(k(64), Vec::new());
        assert!(!g.has(&k(32)) && g.has(&k(64)));
        assert_eq!((g.stats().captures, g.stats().evictions), (2, 1));
        // The newest capture is the most recently used: a full store evicts an older key.
        let mut g = StepGraphs::<PieceKey>::new(2);
        g.keep(k(32), Vec::new());
        g.keep(k(64), Vec::new());
        g.keep(k(96), Vec::new());
        assert!(!g.has(&k(32)) && g.has(&k(64)) && g.has(&k(96)));
    }

    #[test]
    fn a_failure_turns_graphs_off() {
        let mut g = StepGraphs::<GraphKey>::new(MAX_GRAPHS);
        g.set_enabled(true);
        let why = g.fail("x".into());
        assert_eq!(why, "x");
        assert!(!g.enabled());
        assert_eq!(g.failure(), Some("x"));
        g.action(Some(key(2)));
        assert!(matches!(g.action(Some(key(2))), Action::Eager));
    }
}

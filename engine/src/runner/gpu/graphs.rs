//! CUDA graphs of the GPU runner's decode steps. A decode step of SmolLM2 is ~330 launches
//! (11 per block × 30 blocks and the head), each behind its op's host checks and cuBLAS's own
//! host path: ~1.4 ms of host time per step, more than the GPU needs for a single request.
//! Replaying the step as one graph replaces all of that by one `cuGraphLaunch`.
//!
//! What a replay relies on: every launch of the step reads its per-step data from device
//! buffers at fixed addresses, written before the replay (token ids, positions and logits rows
//! by the runner; attention plans by `BatchDecode::plan_into` in graph mode; append metadata by
//! `PagedKvCache::begin_append` into a buffer reserved at the runner's capacity). What is baked
//! into the graph's launches is the step's token and logits-row counts (grid sizes, cuBLAS's
//! `m`) and those buffers' addresses. The key holds exactly these, so a step replays only a
//! graph captured for the same counts and addresses; anything else is captured anew (or run
//! eagerly).
//!
//! Policy: a key's first step runs eagerly (lazily loaded kernels and cuBLAS's first-use
//! set-up happen outside any capture), its second is captured and replayed, later ones replay.
//! Graphs are kept per key up to [`MAX_GRAPHS`], least recently used evicted. A capture that
//! fails turns graphs off for the runner (the step then runs eagerly, and the reason is kept
//! for reports): a failed capture launches nothing, so the eager run is the step's only run.
use std::collections::{HashMap, HashSet};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

/// Graphs kept at most (each replays one batch size's decode step).
pub const MAX_GRAPHS: usize = 128;
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

/// Counts of what the runner did with its decode steps, for reports and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Graphs captured (and instantiated).
    pub captures: u64,
    /// Steps run by replaying a graph (a capture's own first launch included).
    pub replays: u64,
    /// Decode steps run eagerly (a key's first step, graphs off, or a failed capture).
    pub eager: u64,
    /// Graphs evicted to stay within [`MAX_GRAPHS`].
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

/// A captured graph with its last use.
struct Entry {
    graph: StepGraph,
    used: u64,
}

/// A graph exec of the runner's stream.
struct StepGraph(CudaGraph);

// SAFETY: CUDA graph objects may be used from any thread as long as calls on one graph are
// serialised; the runner owns its graphs and touches them only through `&mut self`.
unsafe impl Send for StepGraph {}

/// The runner's decode-step graphs.
pub(super) struct DecodeGraphs {
    enabled: bool,
    seen: HashSet<GraphKey>,
    graphs: HashMap<GraphKey, Entry>,
    tick: u64,
    stats: GraphStats,
    /// Why graphs were turned off after a failed capture.
    failed: Option<String>,
}

impl DecodeGraphs {
    /// Graphs on (replayed steps are bit-identical to eager ones, `engine/tests/graphs.rs`,
    /// checked on an H100); [`DecodeGraphs::set_enabled`] turns them off.
    pub fn new() -> Self {
        Self {
            enabled: true,
            seen: HashSet::new(),
            graphs: HashMap::new(),
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

    /// Whether decode steps may run as graphs (on, and no capture has failed).
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

    /// Decides how to run a decode step of `key` (`None`: a step no graph may replay).
    pub fn action(&mut self, key: Option<GraphKey>) -> Action {
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

    /// Ends the capture begun on `stream`; with `ok` (the step's launches all succeeded) keeps
    /// the graph for `key`. On any failure graphs turn off and the error says why.
    pub fn end(
        &mut self,
        stream: &std::sync::Arc<CudaStream>,
        key: GraphKey,
        ok: bool,
    ) -> Result<(), String> {
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        let graph = match (ok, ended) {
            (true, Ok(Some(g))) => g,
            (true, Ok(None)) => return Err(self.fail("capture produced no graph".into())),
            (true, Err(e)) => return Err(self.fail(format!("end capture: {e}"))),
            (false, _) => return Err(self.fail("a launch failed during capture".into())),
        };
        if self.graphs.len() >= MAX_GRAPHS {
            self.evict_oldest();
        }
        self.stats.captures += 1;
        self.graphs.insert(
            key,
            Entry {
                graph: StepGraph(graph),
                used: 0,
            },
        );
        Ok(())
    }

    /// Replays the graph of `key` on the stream it was captured on.
    pub fn replay(&mut self, key: &GraphKey) -> Result<(), String> {
        self.tick += 1;
        let tick = self.tick;
        let Some(e) = self.graphs.get_mut(key) else {
            return Err("no graph for the step".into());
        };
        e.used = tick;
        e.graph
            .0
            .launch()
            .map_err(|e| format!("graph launch: {e}"))?;
        self.stats.replays += 1;
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
        let mut g = DecodeGraphs::new();
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
        let mut g = DecodeGraphs::new();
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
    fn a_failure_turns_graphs_off() {
        let mut g = DecodeGraphs::new();
        g.set_enabled(true);
        let why = g.fail("x".into());
        assert_eq!(why, "x");
        assert!(!g.enabled());
        assert_eq!(g.failure(), Some("x"));
        g.action(Some(key(2)));
        assert!(matches!(g.action(Some(key(2))), Action::Eager));
    }
}

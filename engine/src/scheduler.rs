//! Continuous batching: requests join and leave between steps, every step mixes decode tokens
//! with prefill chunks under a token budget (chunked prefill: a long prompt is split so that
//! running decodes are never stalled behind it), admission waits for free KV pages, and when
//! pages run out the newest running request is preempted: its pages are freed and its tokens
//! (prompt and everything generated so far) are recomputed when it is admitted again, so
//! nothing is lost and every accepted request finishes. With prefix caching on (the default),
//! a finished request's pages are kept and a new request whose prompt begins with the same
//! page-aligned tokens starts from them ([`crate::prefix`]).
use std::collections::VecDeque;

use ferrinfer::cpu::sampling::{self, SamplingParams};
use ferrinfer::kv::SeqId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{EngineError, Result};
use crate::prefix::PrefixCache;
use crate::runner::{ModelRunner, StepInput};

/// A generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: SamplingParams,
    /// Seed of the request's random stream (sampling only).
    pub seed: u64,
    /// Token ids that end the request (emitted, then finished).
    pub stop_ids: Vec<u32>,
}

/// A request's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Why a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was generated.
    Stop,
    /// `max_tokens` were generated, or the model's context is full.
    Length,
    /// Cancelled by the caller.
    Cancelled,
    /// It cannot run (e.g. larger than the whole KV cache).
    Error(String),
}

/// What a step produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new token of a request.
    Token {
        /// The request.
        id: RequestId,
        /// The token.
        token: u32,
    },
    /// A request ended (after its last `Token`).
    Finished {
        /// The request.
        id: RequestId,
        /// Why.
        reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        generated: usize,
    },
}

/// Scheduling limits.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Tokens processed per step at most (decode tokens + prefill chunks).
    pub step_tokens: usize,
    /// Requests running at once at most.
    pub max_running: usize,
    /// Keep finished requests' KV pages and reuse them for prompts with the same prefix.
    pub prefix_cache: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            step_tokens: 512,
            max_running: 256,
            prefix_cache: true,
        }
    }
}

struct Seq {
    id: RequestId,
    req: Request,
    kv: Option<SeqId>,
    /// Prompt followed by the generated tokens.
    tokens: Vec<u32>,
    /// Tokens whose K/V are in the cache.
    computed: usize,
    generated: usize,
    rng: StdRng,
}

/// What a forward pass returned: every row's logits, or (all requests greedy) their argmax.
enum Output {
    Logits(Vec<f32>),
    Tokens(Vec<u32>),
}

/// Counters since the engine started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Steps run.
    pub steps: u64,
    /// Of those, steps in which every sequence brought one token (decode-only steps; the
    /// others carried prompt chunks).
    pub decode_steps: u64,
    /// Tokens processed (prefill and decode).
    pub tokens: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Requests admitted with a cached prefix.
    pub prefix_hits: u64,
    /// Prompt tokens not recomputed thanks to cached prefixes.
    pub prefix_tokens: u64,
    /// Kept sequences evicted to make room.
    pub prefix_evictions: u64,
}

/// The engine: a model runner and the requests it serves.
pub struct Engine<R: ModelRunner> {
    runner: R,
    cfg: SchedulerConfig,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    next_id: u64,
    stats: Stats,
    prefix: Option<PrefixCache>,
}

impl<R: ModelRunner> Engine<R> {
    /// An engine over `runner`.
    pub fn new(runner: R, cfg: SchedulerConfig) -> Result<Self> {
        if cfg.step_tokens == 0 || cfg.max_running == 0 {
            return Err(EngineError::Request(format!("scheduler limits {cfg:?}")));
        }
        let prefix = cfg
            .prefix_cache
            .then(|| PrefixCache::new(runner.page_size()));
        Ok(Self {
            prefix,
            runner,
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            stats: Stats::default(),
        })
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Runs the runner's warm-up ([`ModelRunner::warm_up`]) before any request: the first
    /// requests then do not pay for first-use work. Refused while requests are queued or running.
    pub fn warm_up(&mut self) -> Result<()> {
        if self.has_work() {
            return Err(EngineError::Request("warm-up needs an idle engine".into()));
        }
        self.runner.warm_up()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Requests waiting and running.
    pub fn load(&self) -> (usize, usize) {
        (self.waiting.len(), self.running.len())
    }

    /// Whether any request is unfinished.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Queues a request (validated now).
    pub fn add(&mut self, req: Request) -> Result<RequestId> {
        let c = self.runner.config();
        if req.prompt.is_empty() {
            return Err(EngineError::Request("empty prompt".into()));
        }
        if let Some(t) = req.prompt.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(EngineError::Request(format!(
                "token {t} outside the vocabulary"
            )));
        }
        if req.prompt.len() >= c.context {
            return Err(EngineError::Request(format!(
                "prompt of {} tokens does not fit the model's context of {}",
                req.prompt.len(),
                c.context
            )));
        }
        if req.max_tokens == 0 {
            return Err(EngineError::Request("max_tokens must be at least 1".into()));
        }
        req.sampling
            .validate()
            .map_err(|e| EngineError::Request(e.to_string()))?;
        let pages = self.pages_for(req.prompt.len() + 1);
        if pages > self.runner.total_pages() {
            return Err(EngineError::TooLarge {
                needed: pages,
                capacity: self.runner.total_pages(),
            });
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back(Seq {
            id,
            tokens: req.prompt.clone(),
            rng: StdRng::seed_from_u64(req.seed),
            req,
            kv: None,
            computed: 0,
            generated: 0,
        });
        Ok(id)
    }

    /// Cancels a request; its pages are freed now. Unknown (finished) ids are ignored.
    pub fn cancel(&mut self, id: RequestId) -> Result<Option<Event>> {
        let seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            match self.waiting.remove(i) {
                Some(s) => s,
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        Ok(Some(self.finish(seq, FinishReason::Cancelled)?))
    }

    fn pages_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.runner.page_size())
    }

    fn finish(&mut self, s: Seq, reason: FinishReason) -> Result<Event> {
        if let Some(kv) = s.kv {
            self.release(kv, &s.tokens[..s.computed])?;
        }
        Ok(Event::Finished {
            id: s.id,
            reason,
            prompt_tokens: s.req.prompt.len(),
            generated: s.generated,
        })
    }

    /// Ends a sequence whose first `computed.len()` tokens are in the cache: kept for prefix
    /// reuse (truncated to whole pages) when the prefix cache takes it, else freed.
    fn release(&mut self, kv: SeqId, computed: &[u32]) -> Result<()> {
        let ps = self.runner.page_size();
        let whole = computed.len() / ps * ps;
        if let Some(p) = self.prefix.as_mut() {
            if p.retire(kv, &computed[..whole]) {
                return Ok(self.runner.cache_mut().truncate(kv, whole)?);
            }
        }
        self.runner.free(kv)
    }

    /// Frees the least recently used kept prefix; `false` when none is kept.
    fn evict_prefix(&mut self) -> Result<bool> {
        match self.prefix.as_mut().and_then(|p| p.evict_lru()) {
            Some(seq) => {
                self.runner.free(seq)?;
                self.stats.prefix_evictions += 1;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops every kept prefix (its pages return to the free list unless running requests
    /// share them).
    pub fn clear_prefix_cache(&mut self) -> Result<()> {
        let seqs = self.prefix.as_mut().map(|p| p.drain()).unwrap_or_default();
        for seq in seqs {
            self.runner.free(seq)?;
        }
        Ok(())
    }

    /// Distinct KV pages held by kept prefixes (running requests may share some of them).
    /// With no request running, every used page is one of these: a leak check.
    pub fn cached_pages(&self) -> usize {
        let Some(p) = self.prefix.as_ref() else {
            return 0;
        };
        let table = self.runner.cache().table();
        let pages: std::collections::HashSet<u32> = p
            .kept()
            .filter_map(|s| table.pages(s).ok())
            .flat_map(|pages| pages.iter().copied())
            .collect();
        pages.len()
    }

    /// Sequences kept for prefix reuse.
    pub fn cached_prefixes(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len())
    }

    /// Frees the newest running request's pages and puts it back at the head of the queue.
    fn preempt_newest(&mut self) -> Result<()> {
        if let Some(mut s) = self.running.pop() {
            if let Some(kv) = s.kv.take() {
                if let Some(p) = self.prefix.as_mut() {
                    p.forget(kv);
                }
                self.runner.free(kv)?;
            }
            s.computed = 0;
            self.stats.preemptions += 1;
            self.waiting.push_front(s);
        }
        Ok(())
    }

    /// Chooses this step's work: every running request's next chunk (decodes are one token),
    /// then waiting requests while the budget, the running limit and the free pages allow.
    fn schedule(&mut self) -> Result<StepInput> {
        let mut step = StepInput::default();
        let mut budget = self.cfg.step_tokens;
        let mut pages_free = self.runner.free_pages();
        let ps = self.runner.page_size();
        // Pages a chunk needs beyond what the sequence already holds.
        let extra = |computed: usize, n: usize| (computed + n).div_ceil(ps) - computed.div_ceil(ps);
        // Running requests, oldest first.
        for s in &mut self.running {
            if budget == 0 {
                break;
            }
            let n = (s.tokens.len() - s.computed).min(budget);
            if n == 0 {
                continue;
            }
            pages_free = pages_free.saturating_sub(extra(s.computed, n));
            budget -= n;
            let last = s.computed + n == s.tokens.len();
            let Some(kv) = s.kv else { continue };
            step.push(kv, s.computed, &s.tokens[s.computed..s.computed + n], last);
        }
        // Admit waiting requests in arrival order.
        while budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(s) = self.waiting.front() else { break };
            let hit = self.prefix.as_mut().and_then(|p| p.lookup(&s.tokens));
            let shared = hit.map_or(0, |m| m.blocks);
            // Admission: the whole prompt must fit in the pages free now (a chunk at a time
            // would otherwise let many half-prefilled requests starve each other of pages);
            // kept prefixes are evicted for room first. Pages of a cached prefix are shared.
            let need = self.pages_for(s.tokens.len() + 1) - shared;
            // The new sequence first, so evictions cannot take the matched pages.
            let kv = match hit {
                Some(m) => {
                    let kv = self.runner.cache_mut().fork(m.holder)?;
                    self.runner.cache_mut().truncate(kv, m.blocks * ps)?;
                    kv
                }
                None => self.runner.add_sequence(),
            };
            while need > pages_free {
                let before = self.runner.free_pages();
                if !self.evict_prefix()? {
                    break;
                }
                pages_free += self.runner.free_pages() - before;
            }
            if need > pages_free && !self.running.is_empty() {
                self.runner.free(kv)?;
                break;
            }
            let mut s = match self.waiting.pop_front() {
                Some(s) => s,
                None => {
                    self.runner.free(kv)?;
                    break;
                }
            };
            s.kv = Some(kv);
            s.computed = shared * ps;
            if shared > 0 {
                self.stats.prefix_hits += 1;
                self.stats.prefix_tokens += s.computed as u64;
            }
            let n = (s.tokens.len() - s.computed).min(budget);
            pages_free = pages_free.saturating_sub(need);
            budget -= n;
            let last = s.computed + n == s.tokens.len();
            step.push(kv, s.computed, &s.tokens[s.computed..s.computed + n], last);
            self.running.push(s);
        }
        Ok(step)
    }

    /// Runs one step; returns the tokens produced and the requests that ended.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        loop {
            let step = self.schedule()?;
            if step.is_empty() {
                return Ok(events);
            }
            let greedy = self.running.iter().all(|s| s.req.sampling.is_greedy());
            let out = if greedy {
                self.runner.forward_greedy(&step).map(Output::Tokens)
            } else {
                self.runner.forward(&step).map(Output::Logits)
            };
            match out {
                Ok(out) => {
                    self.stats.steps += 1;
                    if step.tokens.len() == step.seqs.len() {
                        self.stats.decode_steps += 1;
                    }
                    self.stats.tokens += step.tokens.len() as u64;
                    self.after_forward(&step, &out, &mut events)?;
                    return Ok(events);
                }
                Err(EngineError::Kernel(ferrinfer::Error::OutOfPages { .. })) => {
                    // Nothing was appended. Kept prefixes go first; then, since requests
                    // admitted in this schedule hold unwritten sequences, preempt from the
                    // newest until the step fits.
                    if self.evict_prefix()? {
                        continue;
                    }
                    if self.running.len() <= 1 {
                        if let Some(s) = self.running.pop() {
                            let needed = self.pages_for(s.tokens.len());
                            let capacity = self.runner.total_pages();
                            events.push(self.finish(
                                s,
                                FinishReason::Error(format!(
                                    "needs {needed} KV pages, the cache has {capacity}"
                                )),
                            )?);
                        }
                        continue;
                    }
                    self.preempt_newest()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn after_forward(
        &mut self,
        step: &StepInput,
        out: &Output,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        let vocab = self.runner.config().vocab;
        let context = self.runner.config().context;
        let mut row = 0;
        let mut li = 0;
        let mut done = Vec::new();
        for &(kv, n) in &step.seqs {
            let Some(s) = self.running.iter_mut().find(|s| s.kv == Some(kv)) else {
                row += n;
                continue;
            };
            s.computed += n;
            if let Some(p) = self.prefix.as_mut() {
                p.extend(kv, &s.tokens[..s.computed]);
            }
            row += n;
            if step.logits_rows.get(li) != Some(&(row - 1)) {
                continue;
            }
            let token = match out {
                Output::Tokens(t) => *t
                    .get(li)
                    .ok_or_else(|| EngineError::Model("runner returned too few tokens".into()))?,
                Output::Logits(logits) => {
                    let l = logits.get(li * vocab..(li + 1) * vocab).ok_or_else(|| {
                        EngineError::Model("runner returned too few logits".into())
                    })?;
                    let u: f32 = if s.req.sampling.is_greedy() {
                        0.0
                    } else {
                        s.rng.random()
                    };
                    sampling::sample(l, &s.req.sampling, u)?
                }
            };
            li += 1;
            s.tokens.push(token);
            s.generated += 1;
            events.push(Event::Token { id: s.id, token });
            let reason = if s.req.stop_ids.contains(&token) {
                Some(FinishReason::Stop)
            } else if s.generated >= s.req.max_tokens || s.tokens.len() >= context {
                Some(FinishReason::Length)
            } else {
                None
            };
            if let Some(r) = reason {
                done.push((s.id, r));
            }
        }
        for (id, r) in done {
            if let Some(i) = self.running.iter().position(|s| s.id == id) {
                let s = self.running.remove(i);
                events.push(self.finish(s, r)?);
            }
        }
        Ok(())
    }
}

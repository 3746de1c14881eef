//! The hardening fuzzer (issue #15): random call sequences, as a hostile client would make them,
//! over a standalone page table, two CPU-pool caches of the same geometry (so that handles of
//! one can be fed to the other), the planners and the CPU ops, with extreme lengths and sizes,
//! stale and foreign append steps and plans, and NaN/inf/huge options. It checks that
//!
//! - every call returns `Ok` or a typed error (a panic fails the case; the process must not
//!   abort);
//! - outcomes the model can predict agree with it (unknown sequences, over-long truncates,
//!   stale/foreign handles, invalid options, `reserve_many` ≡ the same reserves one at a time);
//! - a failed call changes nothing: free pages, lengths, page lists, refcounts and K/V contents
//!   of every layer are as before, and outputs are untouched;
//! - written K/V reads back through fork/copy-on-write/truncate, and the tables' invariants hold
//!   after every call;
//! - freeing everything frees every page.
//!
//! Cases: `FERRINFER_FUZZ_CASES` (default 10 000 sequences, the bounded CI run: seconds); e.g.
//! `FERRINFER_FUZZ_CASES=1000000 cargo test --profile overflow --test fuzz` for a long local
//! run (minutes). The test prints the sequences and calls it ran.
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use ferrinfer::kv::{
    AppendStep, KvLayout, KvPoolConfig, PageTable, PagedKvCache, PoolSize, RowStrides, Rows, SeqId,
};
use ferrinfer::plan::{
    plan_decode, plan_prefill, schedule_units, DecodeProblem, PrefillProblem, MAX_PLAN_ENTRIES,
};
use ferrinfer::{cpu, AttentionOptions, Error, HeadConfig};
use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CASES_ENV: &str = "FERRINFER_FUZZ_CASES";
const CI_CASES: u32 = 10_000;
const D: usize = 64;

static SEQUENCES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
static ERRORS: AtomicUsize = AtomicUsize::new(0);

/// Lengths: mostly small, sometimes at or past every limit.
fn arb_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => 0usize..6,
        3 => 6usize..40,
        1 => Just(i32::MAX as usize),
        1 => Just(1usize << 31),
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ]
}

fn arb_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -2.0f32..2.0,
        1 => Just(0.0f32),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(1e-45f32),
        1 => Just(1e30f32),
    ]
}

fn arb_opts() -> impl Strategy<Value = AttentionOptions> {
    (
        prop::option::of(arb_f32()),
        prop::option::weighted(0.3, arb_f32()),
        prop::option::weighted(0.3, arb_len()),
        any::<bool>(),
    )
        .prop_map(
            |(sm_scale, soft_cap, window_left, causal)| AttentionOptions {
                sm_scale,
                soft_cap,
                window_left,
                causal,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    /// Cache ops (`c`: cache 0 or 1; sequence picks index the live list, past it: unknown).
    Add(usize),
    Begin(usize, Vec<(usize, usize)>),
    /// Feeds a stored step (of either cache, maybe stale) to cache `c`'s `append_layer`.
    AppendLayer(usize, usize, usize, bool),
    Append(usize, Vec<(usize, usize)>),
    Fork(usize, usize),
    Truncate(usize, usize, usize),
    Free(usize, usize),
    Decode(usize, usize, Vec<usize>, usize, AttentionOptions),
    Prefill(usize, usize, Vec<(usize, usize)>, AttentionOptions),
    /// Standalone page table ops.
    TAdd,
    TReserve(Vec<(usize, usize)>),
    TPlan(Vec<(usize, usize)>),
    /// Rolls back a stored plan (`true`: one of a cache's steps instead: always foreign).
    TRollback(usize, bool),
    TFork(usize),
    /// Beam-search step: fork, then one batch reserve of parent and child (they share the
    /// parent's partial last page).
    TForkStep(usize, usize, usize),
    TTruncate(usize, usize),
    TFree(usize),
    /// Planners with raw (possibly absurd) problems.
    PlanDecode(Vec<usize>, usize, usize, Option<usize>, usize),
    PlanPrefill(Vec<(usize, usize)>, usize, usize, usize, AttentionOptions),
    Schedule(usize, usize, usize),
}

fn arb_reqs() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0usize..10, arb_len()), 0..4)
}

fn arb_cache_op() -> BoxedStrategy<Op> {
    let c = 0usize..2;
    prop_oneof![
        2 => c.clone().prop_map(Op::Add),
        4 => (c.clone(), arb_reqs()).prop_map(|(c, r)| Op::Begin(c, r)),
        4 => (c.clone(), 0usize..8, 0usize..3, any::<bool>())
            .prop_map(|(c, s, l, short)| Op::AppendLayer(c, s, l, short)),
        2 => (c.clone(), arb_reqs()).prop_map(|(c, r)| Op::Append(c, r)),
        1 => (c.clone(), 0usize..10).prop_map(|(c, s)| Op::Fork(c, s)),
        1 => (c.clone(), 0usize..10, arb_len()).prop_map(|(c, s, l)| Op::Truncate(c, s, l)),
        1 => (c.clone(), 0usize..10).prop_map(|(c, s)| Op::Free(c, s)),
        2 => (c.clone(), 0usize..3, prop::collection::vec(0usize..10, 0..4), 1usize..4, arb_opts())
            .prop_map(|(c, l, s, g, o)| Op::Decode(c, l, s, g, o)),
        2 => (c, 0usize..3, prop::collection::vec((0usize..10, arb_len()), 0..3), arb_opts())
            .prop_map(|(c, l, s, o)| Op::Prefill(c, l, s, o)),
    ]
    .boxed()
}

fn arb_table_op() -> BoxedStrategy<Op> {
    prop_oneof![
        1 => Just(Op::TAdd),
        3 => arb_reqs().prop_map(Op::TReserve),
        // A plan holds a batch index and a position per token: lengths stay ≤ 4096 here, so a
        // plan over the 2^31 − 1-page table does not ask for 16 GiB (which it legitimately
        // may); the extreme lengths still reach `reserve_many`'s checks through TReserve.
        3 => prop::collection::vec((0usize..10, 0usize..4096), 0..4).prop_map(Op::TPlan),
        3 => (0usize..6, prop::bool::weighted(0.2)).prop_map(|(i, f)| Op::TRollback(i, f)),
        2 => (0usize..10).prop_map(Op::TFork),
        2 => (0usize..10, 0usize..6, 0usize..6).prop_map(|(s, a, b)| Op::TForkStep(s, a, b)),
        1 => (0usize..10, arb_len()).prop_map(|(s, l)| Op::TTruncate(s, l)),
        1 => (0usize..10).prop_map(Op::TFree),
    ]
    .boxed()
}

fn arb_plan_op() -> BoxedStrategy<Op> {
    prop_oneof![
        (
            prop::collection::vec(arb_len(), 0..4),
            arb_len(),
            arb_len(),
            prop::option::of(arb_len()),
            arb_len()
        )
            .prop_map(|(l, h, c, f, a)| Op::PlanDecode(l, h, c, f, a)),
        (
            prop::collection::vec((arb_len(), arb_len()), 0..3),
            arb_len(),
            arb_len(),
            arb_len(),
            arb_opts()
        )
            .prop_map(|(r, t, h, c, o)| Op::PlanPrefill(r, t, h, c, o)),
        (arb_len(), arb_len(), arb_len()).prop_map(|(n, h, c)| Op::Schedule(n, h, c)),
    ]
    .boxed()
}

/// A call sequence: focused on the caches or on the page table (so that the calls of one
/// family meet: a fork between a partial reserve and a batch reserve, a plan between two
/// rollbacks), or everything mixed with the planners.
fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    let any_op = prop_oneof![3 => arb_cache_op(), 2 => arb_table_op(), 1 => arb_plan_op()];
    prop_oneof![
        2 => prop::collection::vec(arb_cache_op(), 1..48),
        2 => prop::collection::vec(arb_table_op(), 1..48),
        1 => prop::collection::vec(any_op, 1..48),
    ]
}

/// Cache geometry (both caches) and standalone table geometry.
#[derive(Clone, Debug)]
struct Geometry {
    page_size: usize,
    num_pages: usize,
    kv_heads: usize,
    layers: usize,
    layout: KvLayout,
    /// Standalone table: small, or 2^31 − 1 pages of ≥ 2^20 tokens (extreme sizes whose page
    /// lists stay short: the table's memory grows with the pages in use).
    table: (usize, usize),
}

fn arb_geometry() -> impl Strategy<Value = Geometry> {
    (
        1usize..6,
        1usize..12,
        1usize..3,
        1usize..3,
        any::<bool>(),
        prop_oneof![
            // Few pages: tight tables reach OutOfPages and the copy-on-write edge cases.
            3 => (1usize..6, 1usize..6),
            1 => (6usize..32, 1usize..6),
            1 => (Just(i32::MAX as usize), (1usize << 20)..=(i32::MAX as usize)),
        ],
    )
        .prop_map(
            |(page_size, num_pages, kv_heads, layers, hnd, table)| Geometry {
                page_size,
                num_pages,
                kv_heads,
                layers,
                layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                table,
            },
        )
}

/// A token's K (V: its negation) in every head and dim: one marker value.
type Tokens = Vec<Option<f32>>;

struct CacheModel {
    cache: PagedKvCache<bf16>,
    /// Per sequence, per layer: each token's marker (`None`: reserved, not written yet).
    seqs: BTreeMap<SeqId, Vec<Tokens>>,
    /// Successful changes of the tables (what makes steps stale).
    changes: u64,
}

struct Step {
    cache: usize,
    made_at: u64,
    step: AppendStep,
    ids: Vec<(SeqId, usize)>,
}

/// Per sequence: id, length, page list, refcount of each page.
type SeqState = (SeqId, usize, Vec<u32>, Vec<Option<u32>>);
/// Free pages and every sequence's state.
type TableState = (usize, Vec<SeqState>);

/// Everything a failed call must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    free: usize,
    seqs: Vec<SeqState>,
    contents: Vec<(Vec<bf16>, Vec<bf16>)>,
}

fn table_snapshot(t: &PageTable) -> TableState {
    let seqs = t
        .sequences()
        .map(|id| {
            let pages = t.pages(id).unwrap_or_default().to_vec();
            let rc = pages.iter().map(|&p| t.refcount(p)).collect();
            (id, t.len(id).unwrap_or(usize::MAX), pages, rc)
        })
        .collect();
    (t.free_pages(), seqs)
}

fn snapshot(c: &mut PagedKvCache<bf16>) -> Snapshot {
    let (free, seqs) = table_snapshot(c.table());
    let ids: Vec<SeqId> = c.table().sequences().collect();
    let mut contents = vec![];
    for layer in 0..c.num_layers() {
        for &id in &ids {
            contents.push(c.gather(layer, id).expect("gather of a live sequence"));
        }
    }
    Snapshot {
        free,
        seqs,
        contents,
    }
}

fn pick_of(live: &[SeqId], i: usize) -> SeqId {
    match live.len() {
        n if n > 0 && i < 8 => live[i % n],
        _ => SeqId(1_000_000 + i as u64),
    }
}

fn marker(next: &mut u32) -> f32 {
    *next = next.wrapping_add(1);
    ((*next % 251) as f32 + 1.0) * if next.is_multiple_of(2) { 1.0 } else { -1.0 }
}

/// Whether the options are valid, derived independently of `AttentionOptions::validate`: the
/// multipliers the kernels use (in f64) must be finite in f32.
fn opts_valid(o: &AttentionOptions) -> bool {
    let fits = |x: f64| x.is_finite() && x.abs() <= f32::MAX as f64;
    let s = o.sm_scale.unwrap_or(1.0) as f64;
    let l2e = std::f64::consts::LOG2_E;
    if !s.is_finite() {
        return false;
    }
    match o.soft_cap {
        None => fits(s * l2e),
        Some(c) => {
            let c = c as f64;
            c.is_finite() && c > 0.0 && fits(s / c) && fits(c * l2e)
        }
    }
}

struct Fuzz {
    g: Geometry,
    caches: Vec<CacheModel>,
    steps: Vec<Step>,
    table: PageTable,
    /// Standalone table: lengths, and the stack of plans that may be rolled back (newest last,
    /// with the table's state before each).
    tlens: BTreeMap<SeqId, usize>,
    plans: Vec<ferrinfer::kv::AppendPlan>,
    undo: Vec<(
        ferrinfer::kv::AppendPlan,
        BTreeMap<SeqId, usize>,
        TableState,
    )>,
    next: u32,
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// Counts a call and its typed error, if any (a panic instead fails the case: proptest
/// catches it and shrinks to the call sequence that caused it).
fn called<T>(r: &Result<T, Error>) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    if r.is_err() {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

impl Fuzz {
    fn new(g: Geometry) -> Self {
        let cfg = KvPoolConfig {
            num_pages: 0,
            page_size: g.page_size,
            num_kv_heads: g.kv_heads,
            head_dim: D,
            layout: g.layout,
        };
        let caches = (0..2)
            .map(|_| CacheModel {
                cache: PagedKvCache::new_cpu_layers(cfg, PoolSize::Pages(g.num_pages), g.layers)
                    .expect("a small cache"),
                seqs: BTreeMap::new(),
                changes: 0,
            })
            .collect();
        let table = PageTable::new(g.table.0, g.table.1).expect("a table within limits");
        Self {
            g,
            caches,
            steps: vec![],
            table,
            tlens: BTreeMap::new(),
            plans: vec![],
            undo: vec![],
            next: 0,
        }
    }

    fn row(&self) -> usize {
        self.g.kv_heads * D
    }

    /// Pick `i < 8` of cache `c`: a live sequence (when there is one), else (and for `i ≥ 8`)
    /// an id no cache ever handed out.
    fn pick(&self, c: usize, i: usize) -> SeqId {
        let live: Vec<SeqId> = self.caches[c].seqs.keys().copied().collect();
        pick_of(&live, i)
    }

    fn tpick(&self, i: usize) -> SeqId {
        let live: Vec<SeqId> = self.tlens.keys().copied().collect();
        pick_of(&live, i)
    }

    /// Rows with fresh markers for `reqs`, and each token's marker.
    fn rows(&mut self, total: usize) -> (Vec<bf16>, Vec<bf16>, Vec<f32>) {
        let row = self.row();
        let marks: Vec<f32> = (0..total).map(|_| marker(&mut self.next)).collect();
        let k = marks
            .iter()
            .flat_map(|&m| std::iter::repeat_n(bf16::from_f32(m), row))
            .collect();
        let v = marks
            .iter()
            .flat_map(|&m| std::iter::repeat_n(bf16::from_f32(-m), row))
            .collect();
        (k, v, marks)
    }

    fn verify_cache(&mut self, c: usize) -> Result<(), TestCaseError> {
        let m = &mut self.caches[c];
        m.cache
            .table()
            .check_invariants()
            .map_err(TestCaseError::fail)?;
        for (&id, layers) in &m.seqs {
            check(m.cache.len(id).ok() == Some(layers[0].len()), || {
                format!("cache {c} seq {id:?}: length differs from the model")
            })?;
            for (layer, toks) in layers.iter().enumerate() {
                let (k, v) = m
                    .cache
                    .gather(layer, id)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let row = self.g.kv_heads * D;
                for (t, mark) in toks.iter().enumerate() {
                    if let Some(x) = mark {
                        let ok = k[t * row..(t + 1) * row].iter().all(|e| e.to_f32() == *x)
                            && v[t * row..(t + 1) * row].iter().all(|e| e.to_f32() == -*x);
                        check(ok, || {
                            format!("cache {c} seq {id:?} layer {layer} token {t}: wrong K/V")
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a mutating cache call; on error checks nothing changed.
    fn cache_call<T>(
        &mut self,
        c: usize,
        f: impl FnOnce(&mut PagedKvCache<bf16>) -> Result<T, Error>,
    ) -> Result<Option<T>, TestCaseError> {
        let before = snapshot(&mut self.caches[c].cache);
        let r = f(&mut self.caches[c].cache);
        called(&r);
        match r {
            Ok(x) => Ok(Some(x)),
            Err(_) => {
                let after = snapshot(&mut self.caches[c].cache);
                check(before == after, || {
                    format!("a failed call changed cache {c}")
                })?;
                Ok(None)
            }
        }
    }

    fn table_call<T>(
        &mut self,
        f: impl FnOnce(&mut PageTable) -> Result<T, Error>,
    ) -> Result<Option<T>, TestCaseError> {
        let before = table_snapshot(&self.table);
        let r = f(&mut self.table);
        called(&r);
        match r {
            Ok(x) => Ok(Some(x)),
            Err(_) => {
                check(table_snapshot(&self.table) == before, || {
                    "a failed call changed the page table".into()
                })?;
                Ok(None)
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Add(c) => {
                let m = &mut self.caches[*c];
                let id = m.cache.add_sequence();
                CALLS.fetch_add(1, Ordering::Relaxed);
                m.seqs.insert(id, vec![vec![]; self.g.layers]);
            }
            Op::Begin(c, reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.pick(*c, s), n)).collect();
                if let Some(step) = self.cache_call(*c, |x| x.begin_append(&reqs))? {
                    let m = &mut self.caches[*c];
                    for &(id, n) in &reqs {
                        for toks in m.seqs.get_mut(&id).into_iter().flatten() {
                            toks.extend(std::iter::repeat_n(None, n));
                        }
                    }
                    m.changes += 1;
                    self.steps.push(Step {
                        cache: *c,
                        made_at: m.changes,
                        step,
                        ids: reqs,
                    });
                    if self.steps.len() > 8 {
                        self.steps.remove(0);
                    }
                }
            }
            Op::AppendLayer(c, s, layer, short) => {
                if self.steps.is_empty() {
                    return Ok(());
                }
                let si = s % self.steps.len();
                let rows = self.steps[si].step.rows();
                let n = if *short { rows.saturating_sub(1) } else { rows };
                let (k, v, marks) = self.rows(n);
                let st = RowStrides::contiguous(self.g.kv_heads, D);
                let current =
                    self.steps[si].cache == *c && self.steps[si].made_at == self.caches[*c].changes;
                let expect_ok = current && *layer < self.g.layers && n == rows;
                let step = &self.steps[si].step;
                let r = {
                    let cache = &mut self.caches[*c].cache;
                    let before = snapshot(cache);
                    let r =
                        cache.append_layer(*layer, step, Rows::Host(&k), st, Rows::Host(&v), st);
                    called(&r);
                    if r.is_err() {
                        check(before == snapshot(cache), || {
                            "failed append_layer wrote".into()
                        })?;
                    }
                    r
                };
                if !current && r.is_ok() {
                    return Err(TestCaseError::fail(format!(
                        "a stale or foreign step was accepted by cache {c}"
                    )));
                }
                check(expect_ok == r.is_ok(), || {
                    format!("append_layer: expected ok {expect_ok}, got {r:?}")
                })?;
                if r.is_ok() {
                    let mut t = 0;
                    for &(id, n) in &self.steps[si].ids.clone() {
                        let toks = &mut self.caches[*c].seqs.get_mut(&id).expect("live")[*layer];
                        let start = toks.len() - n;
                        for i in 0..n {
                            toks[start + i] = Some(marks[t]);
                            t += 1;
                        }
                    }
                }
            }
            Op::Append(c, reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.pick(*c, s), n)).collect();
                let total = reqs.iter().fold(0usize, |a, r| a.saturating_add(r.1));
                // Rows for at most a pool's worth of tokens: longer requests must fail anyway.
                let (k, v, marks) = self.rows(total.min(64));
                let st = RowStrides::contiguous(self.g.kv_heads, D);
                let ok = self
                    .cache_call(*c, |x| {
                        x.append(&reqs, Rows::Host(&k), st, Rows::Host(&v), st)
                    })?
                    .is_some();
                if ok {
                    check(self.g.layers == 1, || {
                        "append on a multi-layer cache".into()
                    })?;
                    let m = &mut self.caches[*c];
                    let mut t = 0;
                    for &(id, n) in &reqs {
                        let toks = &mut m.seqs.get_mut(&id).expect("live")[0];
                        for _ in 0..n {
                            toks.push(Some(marks[t]));
                            t += 1;
                        }
                    }
                    m.changes += 1;
                }
            }
            Op::Fork(c, s) => {
                let id = self.pick(*c, *s);
                let known = self.caches[*c].seqs.contains_key(&id);
                let r = self.cache_call(*c, |x| x.fork(id))?;
                check(known == r.is_some(), || format!("fork of {id:?}: {r:?}"))?;
                if let Some(child) = r {
                    let m = &mut self.caches[*c];
                    let copy = m.seqs[&id].clone();
                    m.seqs.insert(child, copy);
                    m.changes += 1;
                }
            }
            Op::Truncate(c, s, len) => {
                let id = self.pick(*c, *s);
                let cur = self.caches[*c].seqs.get(&id).map(|l| l[0].len());
                let r = self.cache_call(*c, |x| x.truncate(id, *len))?;
                check(r.is_some() == cur.is_some_and(|cur| *len <= cur), || {
                    format!("truncate {id:?} to {len}")
                })?;
                if r.is_some() {
                    let m = &mut self.caches[*c];
                    for toks in m.seqs.get_mut(&id).into_iter().flatten() {
                        toks.truncate(*len);
                    }
                    m.changes += 1;
                }
            }
            Op::Free(c, s) => {
                let id = self.pick(*c, *s);
                let known = self.caches[*c].seqs.contains_key(&id);
                let r = self.cache_call(*c, |x| x.free(id))?;
                check(known == r.is_some(), || format!("free of {id:?}"))?;
                if r.is_some() {
                    let m = &mut self.caches[*c];
                    m.seqs.remove(&id);
                    m.changes += 1;
                }
            }
            Op::Decode(c, layer, seqs, group, opts) => {
                let ids: Vec<SeqId> = seqs.iter().map(|&s| self.pick(*c, s)).collect();
                let heads = HeadConfig {
                    num_qo_heads: self.g.kv_heads * group,
                    num_kv_heads: self.g.kv_heads,
                    head_dim: D,
                };
                let m = &self.caches[*c];
                let pages = m.cache.batch_pages(&ids);
                called(&pages);
                let (Ok(pages), Ok(pool)) = (pages, m.cache.pool(*layer)) else {
                    return Ok(());
                };
                let n = ids.len() * heads.num_qo_heads * D;
                let q = vec![bf16::from_f32(0.5); n];
                let mut out = vec![bf16::from_f32(9.0); n];
                let mut lse = vec![7.0f32; ids.len() * heads.num_qo_heads];
                let r = cpu::batch_decode(&heads, opts, &q, pool, &pages, &mut out, Some(&mut lse));
                called(&r);
                check(r.is_ok() == opts_valid(opts), || {
                    format!("batch_decode with {opts:?}: {r:?}")
                })?;
                self.check_outputs(r.is_ok(), &out, &lse)?;
            }
            Op::Prefill(c, layer, reqs, opts) => {
                let ids: Vec<SeqId> = reqs.iter().map(|&(s, _)| self.pick(*c, s)).collect();
                let heads = HeadConfig::new(self.g.kv_heads, self.g.kv_heads, D).expect("heads");
                let m = &self.caches[*c];
                let pages = m.cache.batch_pages(&ids);
                called(&pages);
                let (Ok(pages), Ok(pool)) = (pages, m.cache.pool(*layer)) else {
                    return Ok(());
                };
                // Query lengths: the generated ones clamped to what a buffer can hold.
                let mut qo_indptr = vec![0i32];
                let mut fits = true;
                for (&(_, q), id) in reqs.iter().zip(&ids) {
                    let q = q.min(64);
                    let kv = m.seqs.get(id).map_or(0, |l| l[0].len());
                    fits &= q <= kv;
                    qo_indptr.push(qo_indptr.last().copied().unwrap_or(0) + q as i32);
                }
                let rows = *qo_indptr.last().unwrap_or(&0) as usize;
                let n = rows * heads.num_qo_heads * D;
                let q = vec![bf16::from_f32(0.5); n];
                let mut out = vec![bf16::from_f32(9.0); n];
                let mut lse = vec![7.0f32; rows * heads.num_qo_heads];
                let r = cpu::batch_prefill_paged(
                    &heads,
                    opts,
                    &q,
                    &qo_indptr,
                    pool,
                    &pages,
                    &mut out,
                    Some(&mut lse),
                );
                called(&r);
                check(r.is_ok() == (opts_valid(opts) && fits), || {
                    format!("batch_prefill_paged with {opts:?}, fits {fits}: {r:?}")
                })?;
                self.check_outputs(r.is_ok(), &out, &lse)?;
            }
            Op::TAdd => {
                let id = self.table.add_sequence();
                CALLS.fetch_add(1, Ordering::Relaxed);
                self.tlens.insert(id, 0);
                // Adding a sequence changes no page list: plans stay current, and the states
                // their rollbacks return to now hold the new, empty sequence too.
                for (_, lens, state) in &mut self.undo {
                    lens.insert(id, 0);
                    state.1.push((id, 0, vec![], vec![]));
                }
            }
            Op::TReserve(reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.tpick(s), n)).collect();
                // Differential: the same reserves one at a time, on a clone.
                let mut one = self.table.clone();
                let singly = reqs.iter().all(|&(id, n)| one.reserve(id, n).is_ok());
                let distinct = reqs
                    .iter()
                    .map(|r| r.0)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    == reqs.len();
                let r = self.table_call(|t| t.reserve_many(&reqs))?;
                if singly && distinct {
                    check(r.is_some(), || {
                        format!("reserve_many {reqs:?} failed, one by one not")
                    })?;
                    for &(id, _) in &reqs {
                        check(self.table.pages(id).ok() == one.pages(id).ok(), || {
                            format!("reserve_many {reqs:?}: pages differ from one by one")
                        })?;
                    }
                }
                if r.is_some() {
                    for &(id, n) in &reqs {
                        *self.tlens.get_mut(&id).expect("live") += n;
                    }
                    self.undo.clear();
                }
            }
            Op::TPlan(reqs) => {
                let reqs: Vec<(SeqId, usize)> =
                    reqs.iter().map(|&(s, n)| (self.tpick(s), n)).collect();
                let before = (self.tlens.clone(), table_snapshot(&self.table));
                if let Some(plan) = self.table_call(|t| t.plan_append(&reqs))? {
                    for &(id, n) in &reqs {
                        *self.tlens.get_mut(&id).expect("live") += n;
                    }
                    self.plans.push(plan.clone());
                    if self.plans.len() > 6 {
                        self.plans.remove(0);
                    }
                    self.undo.push((plan, before.0, before.1));
                }
            }
            Op::TRollback(i, foreign) => {
                let plan = if *foreign {
                    match self.steps.get(*i) {
                        Some(s) => s.step.plan().clone(),
                        None => Default::default(),
                    }
                } else {
                    match self.plans.get(*i) {
                        Some(p) => p.clone(),
                        None => return Ok(()),
                    }
                };
                let top = self.undo.last().is_some_and(|(p, _, _)| *p == plan) && !*foreign;
                let r = self.table_call(|t| t.rollback(&plan))?;
                check(r.is_some() == top, || {
                    format!("rollback: expected ok {top}, got {r:?}")
                })?;
                if r.is_some() {
                    let (_, lens, state) = self.undo.pop().expect("top");
                    check(table_snapshot(&self.table) == state, || {
                        "rollback did not restore the table".into()
                    })?;
                    self.tlens = lens;
                }
            }
            Op::TFork(s) => {
                let id = self.tpick(*s);
                let r = self.table_call(|t| t.fork(id))?;
                check(r.is_some() == self.tlens.contains_key(&id), || {
                    "fork".into()
                })?;
                if let Some(child) = r {
                    self.tlens.insert(child, self.tlens[&id]);
                    self.undo.clear();
                }
            }
            Op::TForkStep(s, a, b) => {
                let parent = self.tpick(*s);
                self.step(&Op::TFork(*s))?;
                if let Some(&child) = self.tlens.keys().last().filter(|&&c| c != parent) {
                    let (ip, ic) = self.tlens.keys().fold((0, 0), |(ip, ic), &k| {
                        (ip + (k < parent) as usize, ic + (k < child) as usize)
                    });
                    self.step(&Op::TReserve(vec![(ip, *a), (ic, *b)]))?;
                }
            }
            Op::TTruncate(s, len) => {
                let id = self.tpick(*s);
                let ok = self.tlens.get(&id).is_some_and(|&l| *len <= l);
                let r = self.table_call(|t| t.truncate(id, *len))?;
                check(r.is_some() == ok, || "truncate".into())?;
                if r.is_some() {
                    self.tlens.insert(id, *len);
                    self.undo.clear();
                }
            }
            Op::TFree(s) => {
                let id = self.tpick(*s);
                let r = self.table_call(|t| t.free(id))?;
                check(r.is_some() == self.tlens.contains_key(&id), || {
                    "free".into()
                })?;
                if r.is_some() {
                    self.tlens.remove(&id);
                    self.undo.clear();
                }
            }
            Op::PlanDecode(lens, heads, ctas, fixed, align) => {
                let r = plan_decode(&DecodeProblem {
                    kv_lens: lens,
                    num_kv_heads: *heads,
                    max_ctas: *ctas,
                    min_chunk: 16,
                    chunk_align: *align,
                    fixed_chunk: *fixed,
                    graph_items: None,
                });
                called(&r);
                if let Ok(p) = r {
                    check(p.num_items() <= MAX_PLAN_ENTRIES, || {
                        "plan too large".into()
                    })?;
                    check(p.merge_indptr.len() == lens.len() + 1, || {
                        "merge_indptr".into()
                    })?;
                }
            }
            Op::PlanPrefill(reqs, tile, heads, ctas, opts) => {
                let (qo, kv): (Vec<usize>, Vec<usize>) = reqs.iter().copied().unzip();
                let r = plan_prefill(&PrefillProblem {
                    qo_lens: &qo,
                    kv_lens: &kv,
                    tile_tokens: *tile,
                    causal: opts.causal,
                    window_left: opts.window_left,
                    num_kv_heads: *heads,
                    max_ctas: *ctas,
                    min_chunk: 16,
                    chunk_align: 16,
                    fixed_chunk: None,
                    max_items: None,
                    max_slots: None,
                });
                called(&r);
                if let Ok(p) = r {
                    check(p.items.len() <= MAX_PLAN_ENTRIES, || {
                        "plan too large".into()
                    })?;
                    let r = schedule_units(&p.items, (*heads).clamp(1, 8), 132, 128);
                    called(&r);
                }
            }
            Op::Schedule(n, heads, ctas) => {
                let items = vec![
                    ferrinfer::kernels_abi::abi::PrefillItem {
                        request: 0,
                        t0: 0,
                        kv_begin: 0,
                        kv_end: 300,
                        part: u32::MAX,
                        chunk: 0,
                        nchunks: 1,
                        pad: 0,
                    };
                    n % 64
                ];
                let r = schedule_units(&items, *heads, *ctas, 128);
                called(&r);
                if let Ok(s) = r {
                    check(s.units.len() == items.len() * heads, || "units".into())?;
                }
            }
        }
        Ok(())
    }

    fn check_outputs(&self, ok: bool, out: &[bf16], lse: &[f32]) -> Result<(), TestCaseError> {
        if ok {
            check(out.iter().all(|x| x.to_f32().is_finite()), || {
                "non-finite output".into()
            })?;
            check(lse.iter().all(|x| !x.is_nan()), || "NaN lse".into())
        } else {
            check(out.iter().all(|x| x.to_f32() == 9.0), || {
                "failed op wrote out".into()
            })?;
            check(lse.iter().all(|&x| x == 7.0), || {
                "failed op wrote lse".into()
            })
        }
    }

    fn finish(mut self) -> Result<(), TestCaseError> {
        for c in 0..2 {
            let ids: Vec<SeqId> = self.caches[c].seqs.keys().copied().collect();
            for id in ids {
                let r = self.caches[c].cache.free(id);
                called(&r);
                check(r.is_ok(), || format!("free of live {id:?}"))?;
            }
            let t = self.caches[c].cache.table();
            check(t.free_pages() == t.num_pages(), || {
                format!("cache {c} leaked pages")
            })?;
            t.check_invariants().map_err(TestCaseError::fail)?;
        }
        let ids: Vec<SeqId> = self.tlens.keys().copied().collect();
        for id in ids {
            let r = self.table.free(id);
            called(&r);
            check(r.is_ok(), || "free".into())?;
        }
        check(self.table.free_pages() == self.table.num_pages(), || {
            "table leaked pages".into()
        })?;
        self.table.check_invariants().map_err(TestCaseError::fail)
    }
}

fn run(g: Geometry, ops: &[Op]) -> Result<(), TestCaseError> {
    SEQUENCES.fetch_add(1, Ordering::Relaxed);
    let mut f = Fuzz::new(g);
    for op in ops {
        f.step(op)?;
        // Lengths match the model after every call (contents: below, every few calls).
        for (&id, &len) in &f.tlens {
            check(f.table.len(id).ok() == Some(len), || {
                format!("table len of {id:?}")
            })?;
        }
        f.table.check_invariants().map_err(TestCaseError::fail)?;
        f.verify_cache(0)?;
        f.verify_cache(1)?;
    }
    f.finish()
}

#[test]
fn hostile_call_sequences_get_typed_errors_and_change_nothing() {
    let cases = std::env::var(CASES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let t0 = std::time::Instant::now();
    let r = runner.run(&(arb_geometry(), arb_ops()), |(g, ops)| run(g, &ops));
    let (seqs, calls, errors) = (
        SEQUENCES.load(Ordering::Relaxed),
        CALLS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
    );
    // Printed outside libtest's capture (to the process's stderr) so every log shows the run.
    let line = format!(
        "fuzz: {seqs} sequences ({cases} cases + shrinking), {calls} calls, {errors} typed errors, {:.1} s\n",
        t0.elapsed().as_secs_f64()
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Err(e) = r {
        panic!("fuzz: {e}");
    }
    assert!(
        seqs >= cases as usize && calls > seqs,
        "the fuzzer did not run"
    );
}

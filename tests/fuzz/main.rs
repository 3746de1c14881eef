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

mod cache_ops;
mod harness;
mod strategies;
mod table_ops;

use strategies::{arb_geometry, arb_ops, Geometry, Op};

const CASES_ENV: &str = "FERRINFER_FUZZ_CASES";
const CI_CASES: u32 = 10_000;
const D: usize = 64;

static SEQUENCES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);
static ERRORS: AtomicUsize = AtomicUsize::new(0);

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

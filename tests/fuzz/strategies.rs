//! The fuzzer's call vocabulary: the operations, their argument strategies and the geometry
//! of the caches and the table.
use super::*;

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
pub(super) enum Op {
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
pub(super) fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    let any_op = prop_oneof![3 => arb_cache_op(), 2 => arb_table_op(), 1 => arb_plan_op()];
    prop_oneof![
        2 => prop::collection::vec(arb_cache_op(), 1..48),
        2 => prop::collection::vec(arb_table_op(), 1..48),
        1 => prop::collection::vec(any_op, 1..48),
    ]
}

/// Cache geometry (both caches) and standalone table geometry.
#[derive(Clone, Debug)]
pub(super) struct Geometry {
    pub(super) page_size: usize,
    pub(super) num_pages: usize,
    pub(super) kv_heads: usize,
    pub(super) layers: usize,
    pub(super) layout: KvLayout,
    /// Standalone table: small, or 2^31 − 1 pages of ≥ 2^20 tokens (extreme sizes whose page
    /// lists stay short: the table's memory grows with the pages in use).
    pub(super) table: (usize, usize),
}

pub(super) fn arb_geometry() -> impl Strategy<Value = Geometry> {
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

//! Planner host time (issue #20 item 5: ≤ 20 µs per decode plan at batch 256 and per prefill
//! plan at batch 64): wall time of a re-plan into an existing plan (`plan_into`: validation,
//! the pure partition, staging the tables in pinned memory and queueing their one copy), the
//! stream drained before each so earlier copies are not counted; median, p10 and p90 of 200.
//! Beside each, the pure partition alone (`plan::plan_decode` / `plan::plan_prefill`), so the
//! rest — validation, staging and the driver calls — shows as the difference.
//!
//! Shapes: decode bf16, 32/8 heads of 128, batch 256 × 1024 keys (16 384 page ids); paged
//! prefill at batch 64, 64 × 16 / 2048 (an append) and 64 × 1 / 4096 (a decode-like step).
//! Quick: no kernel runs, so `gpu-quick` carries it. Without a GPU it says so and exits 0.
use std::time::Instant;

use ferrinfer::kernels_abi::config::{decode_rows as decode_cfg, prefill as prefill_cfg};
use ferrinfer::kv::{BatchPages, KvLayout, KvPoolConfig};
use ferrinfer::ops::{BatchDecode, BatchPrefill};
use ferrinfer::plan::{plan_decode, plan_prefill, DecodeProblem, PrefillProblem};
use ferrinfer::{AttentionOptions, DType, Gpu, HeadConfig};

const RUNS: usize = 200;

/// `(median, p10, p90)` of `f`'s wall time in µs over [`RUNS`] calls, `before` run untimed
/// before each.
fn timed(
    mut before: impl FnMut() -> ferrinfer::Result<()>,
    mut f: impl FnMut() -> ferrinfer::Result<()>,
) -> ferrinfer::Result<(f64, f64, f64)> {
    let mut ts = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        before()?;
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    ts.sort_by(f64::total_cmp);
    Ok((ts[RUNS / 2], ts[RUNS / 10], ts[RUNS * 9 / 10]))
}

fn pool(num_pages: usize) -> KvPoolConfig {
    KvPoolConfig {
        num_pages,
        page_size: 16,
        num_kv_heads: 8,
        head_dim: 128,
        layout: KvLayout::Nhd,
    }
}

fn tables(batch: usize, kv: usize) -> (BatchPages, KvPoolConfig) {
    let (pages, num_pages) =
        ferrinfer_harness::random_page_tables(batch, kv, 16, 0x9e37 + batch as u64);
    (pages, pool(num_pages))
}

fn run(gpu: &Gpu) -> ferrinfer::Result<()> {
    let heads = HeadConfig::new(32, 8, 128)?;
    println!(
        "planner host time on {} (µs, {RUNS} re-plans each):",
        gpu.info().name
    );
    println!("| plan | median | p10 | p90 | partition alone |");
    println!("| --- | ---: | ---: | ---: | ---: |");

    let decode = BatchDecode::new(gpu, heads, DType::Bf16, AttentionOptions::default())?;
    let (pages, cfg) = tables(256, 1024);
    let mut plan = decode.plan(&pages, &cfg)?;
    let (m, p10, p90) = timed(
        || gpu.synchronize(),
        || decode.plan_into(&pages, &cfg, &mut plan),
    )?;
    let lens = vec![1024usize; 256];
    let (pure, _, _) = timed(
        || Ok(()),
        || {
            let p = plan_decode(&DecodeProblem {
                kv_lens: &lens,
                num_kv_heads: 8,
                max_ctas: decode.max_ctas(),
                min_chunk: decode_cfg::MIN_CHUNK as usize,
                chunk_align: 32,
                fixed_chunk: None,
                graph_items: None,
            })?;
            std::hint::black_box(p);
            Ok(())
        },
    )?;
    println!("| decode 256 × 1024 | {m:.1} | {p10:.1} | {p90:.1} | {pure:.1} |");

    let opts = AttentionOptions::default().with_causal(true);
    let prefill = BatchPrefill::new(gpu, heads, DType::Bf16, opts)?;
    for (batch, qo, kv) in [(64usize, 16usize, 2048usize), (64, 1, 4096)] {
        let qo_indptr: Vec<i32> = (0..=batch).map(|b| (b * qo) as i32).collect();
        let (pages, cfg) = tables(batch, kv);
        let mut plan = prefill.plan_paged(&qo_indptr, &pages, &cfg)?;
        let (m, p10, p90) = timed(
            || gpu.synchronize(),
            || prefill.plan_paged_into(&qo_indptr, &pages, &cfg, &mut plan),
        )?;
        let (qo_lens, kv_lens) = (vec![qo; batch], vec![kv; batch]);
        let tile = plan.tile();
        let (pure, _, _) = timed(
            || Ok(()),
            || {
                let p = plan_prefill(&PrefillProblem {
                    qo_lens: &qo_lens,
                    kv_lens: &kv_lens,
                    tile_tokens: tile.tokens(heads.group()),
                    causal: true,
                    window_left: None,
                    num_kv_heads: 8,
                    max_ctas: prefill.max_ctas(tile),
                    min_chunk: 2 * prefill_cfg::TILE as usize,
                    chunk_align: prefill_cfg::TILE as usize,
                    fixed_chunk: None,
                    max_items: None,
                    max_slots: None,
                })?;
                std::hint::black_box(p);
                Ok(())
            },
        )?;
        println!(
            "| prefill paged {batch} × {qo} / {kv} ({tile:?}) | {m:.1} | {p10:.1} | {p90:.1} | {pure:.1} |"
        );
    }
    Ok(())
}

fn main() {
    ferrinfer_harness::bench_main("planner", run);
}

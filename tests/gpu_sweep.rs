//! The large GPU sweep: at least 10 000 random cases per op family — batch decode, batch
//! prefill (paged and ragged), KV append, state merge — against the f64 oracle in one GPU run
//! (`gpu-bundle/run.sh` runs it with the other GPU tests).
//!
//! A case is one request (decode, prefill, append) or one sequence row (merge) with its own
//! random lengths, pages and values. Many cases share one launch; what a launch fixes (head
//! dim, group, dtype, layout, page size, options, kernel variant) is drawn per launch, so a
//! sweep also covers a few hundred op configurations. The values and the f64 oracle run on
//! every host core (rayon): the GPU time is the launches themselves.
//!
//! Every output is poisoned (NaN) before its launch; a NaN left anywhere fails the case.
//! Attention is held to the crate's tolerance table (`ferrinfer::reference::tolerance`: f32
//! accumulation of 16-bit inputs and one output rounding), append to exact equality (it is a
//! copy) with every other element of the pool unchanged, the merge to `merge_within`.
//!
//! `FERRINFER_SWEEP_CASES` sets the cases per family (default 10 000; the sanitizer runs of
//! `gpu-bundle/run.sh` use a few hundred). `FERRINFER_SWEEP_SEED` replays a sweep.
use std::time::Instant;

use ferrinfer::kv::{AppendMeta, KvLayout, KvPool, PoolSize, RowStrides, Rows};
use ferrinfer::ops::{
    merge_state, merge_state_in_place, merge_states, BatchDecode, BatchPrefill, DecodeKernel,
    MergeShape, PrefillTile,
};
use ferrinfer::reference::{attention, tolerance};
use ferrinfer::{AttentionOptions, DType, Float16, Gpu, HeadConfig};
use ferrinfer_harness::merge::{merge_oracle, merge_within, split2, states};
use ferrinfer_harness::paged::{gpu_pool, pool_config, positions, shuffled_pages};
use ferrinfer_harness::{gpu_or_skip, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::Rng;
use rayon::prelude::*;

fn target_cases() -> usize {
    std::env::var("FERRINFER_SWEEP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn sweep_seed(family: u64) -> u64 {
    let base = std::env::var("FERRINFER_SWEEP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_2026);
    base ^ family.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Totals of one family's sweep.
#[derive(Default)]
struct Tally {
    cases: usize,
    launches: usize,
    worst: ErrorStats,
    /// The first few failing cases, described.
    failures: Vec<String>,
    failed: usize,
}

impl Tally {
    fn add(&mut self, what: impl Fn() -> String, s: ErrorStats, ok: bool) {
        self.cases += 1;
        self.worst = self.worst.worst(s);
        if !ok {
            self.failed += 1;
            if self.failures.len() < 5 {
                self.failures.push(format!("{}: {s:?}", what()));
            }
        }
    }

    fn finish(self, family: &str, started: Instant) {
        println!(
            "sweep {family}: {} cases in {} launches, {:.1} s, {} failed, worst {:?}",
            self.cases,
            self.launches,
            started.elapsed().as_secs_f64(),
            self.failed,
            self.worst
        );
        assert!(
            self.failed == 0,
            "{family}: {} of {} cases outside their bound; first: {:#?}",
            self.failed,
            self.cases,
            self.failures
        );
        assert!(self.cases >= target_cases(), "{family}: too few cases");
    }
}

/// One launch of a family: draws its configuration and `cases` cases, runs, checks, tallies.
type Launch = fn(&Gpu, &mut StdRng, usize, &mut Tally);

/// Runs launches of one family, bf16 or f16 at random, until [`target_cases`] cases ran;
/// `per_launch` bounds the cases of each launch.
fn sweep(
    gpu: &Gpu,
    family: u64,
    name: &str,
    per_launch: impl Fn(&mut StdRng) -> usize,
    [bf16_launch, f16_launch]: [Launch; 2],
) {
    let (started, mut t, mut r) = (Instant::now(), Tally::default(), rng(sweep_seed(family)));
    while t.cases < target_cases() {
        let cases = (target_cases() - t.cases).min(per_launch(&mut r));
        let launch = if r.random_bool(0.5) {
            bf16_launch
        } else {
            f16_launch
        };
        launch(gpu, &mut r, cases, &mut t);
    }
    t.finish(name, started);
}

/// Head geometry: D 64/128/256, group 1–8, 1–2 KV heads; in about one launch in eight a
/// larger group, up to `max_group` (decode: 16, the tensor-core kernel's, at D 64/128 only;
/// prefill: 32; append: 8, its rows do not depend on the group).
fn draw_heads(r: &mut StdRng, max_group: usize) -> HeadConfig {
    let hkv = r.random_range(1..=2usize);
    if max_group > 8 && r.random_bool(0.125) {
        let g = r.random_range(9..=max_group);
        let dims: &[usize] = if max_group <= 16 {
            &[64, 128]
        } else {
            &[64, 128, 256]
        };
        let d = *dims.choose(r).unwrap();
        return HeadConfig::new(hkv * g, hkv, d).unwrap();
    }
    let d = *[64usize, 128, 256].choose(r).unwrap();
    let g = r.random_range(1..=8usize);
    HeadConfig::new(hkv * g, hkv, d).unwrap()
}

/// Options: soft-cap, sliding window and an explicit scale, each in about a third of launches.
fn draw_opts(r: &mut StdRng, causal: bool) -> AttentionOptions {
    AttentionOptions {
        soft_cap: r.random_bool(0.3).then(|| r.random_range(1.0f32..50.0)),
        window_left: r.random_bool(0.3).then(|| r.random_range(0usize..1500)),
        sm_scale: r.random_bool(0.25).then(|| r.random_range(0.02f32..0.3)),
        causal,
    }
}

/// A KV length: empty now and then, page edges, short, medium and now and then long.
fn draw_len(r: &mut StdRng, page: usize) -> usize {
    match r.random_range(0..100) {
        0..2 => 0,
        2..15 => [1, page.max(2) - 1, page, page + 1, 2 * page][r.random_range(0..5)],
        15..45 => r.random_range(1..64),
        45..95 => r.random_range(1..700),
        _ => r.random_range(700..5000),
    }
}

fn layout(r: &mut StdRng) -> KvLayout {
    if r.random_bool(0.5) {
        KvLayout::Hnd
    } else {
        KvLayout::Nhd
    }
}

/// Per-request values drawn in parallel (one seeded stream per request): the stored rows
/// concatenated, and each request's f64 images.
fn rows_per_request<T: Float16>(
    seed: u64,
    lens: &[usize],
    row: usize,
    scale: f32,
) -> (Vec<T>, Vec<Vec<f64>>) {
    let parts: Vec<(Vec<T>, Vec<f64>)> = lens
        .par_iter()
        .enumerate()
        .map(|(b, &l)| random_values::<T>(&mut rng(seed ^ (b as u64) << 20), l * row, scale))
        .collect();
    let all = parts.iter().flat_map(|p| p.0.iter().copied()).collect();
    (all, parts.into_iter().map(|p| p.1).collect())
}

fn lse_f64(l: &[f32]) -> Vec<f64> {
    l.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// Decode

fn decode_launch<T: Float16>(gpu: &Gpu, r: &mut StdRng, batch: usize, t: &mut Tally) {
    let h = draw_heads(r, 16);
    let page = *[1usize, 8, 16, 32].choose(r).unwrap();
    let lay = layout(r);
    let opts = draw_opts(r, false);
    let kernel = match r.random_range(0..3) {
        0 => None,
        // Groups above 8 run on tensor cores only (the CUDA-core kernel refuses them).
        1 if h.group() <= 8 => Some(DecodeKernel::CudaCore),
        _ if h.head_dim <= 128 => Some(DecodeKernel::TensorCore),
        _ => None,
    };
    let lens: Vec<usize> = (0..batch).map(|_| draw_len(r, page)).collect();
    let seed: u64 = r.random();
    let (pages, num_pages) = shuffled_pages(r, &lens, page, 3);
    let krow = h.num_kv_heads * h.head_dim;
    let qrow = h.num_qo_heads * h.head_dim;
    let (k, kf) = rows_per_request::<T>(seed, &lens, krow, 2.0);
    let (v, vf) = rows_per_request::<T>(seed ^ 1, &lens, krow, 1.0);
    let (q, qf) = random_values::<T>(&mut rng(seed ^ 2), batch * qrow, 2.0);
    let pool = gpu_pool(gpu, &h, page, lay, &pages, num_pages, &lens, &k, &v);
    let mut op = BatchDecode::new(gpu, h, T::DTYPE, opts).unwrap();
    if let Some(kind) = kernel {
        op.set_kernel(kind).unwrap();
    }
    let plan = op.plan(&pages, pool.config()).unwrap();
    let qd = gpu.upload(&q).unwrap();
    let mut od = gpu.upload(&vec![T::nan(); batch * qrow]).unwrap();
    let mut ld = gpu.upload(&vec![f32::NAN; batch * h.num_qo_heads]).unwrap();
    op.run(&plan, &qd, &pool, &mut od, Some(&mut ld)).unwrap();
    let (o, l) = (
        to_f64(&gpu.download(&od).unwrap()),
        gpu.download(&ld).unwrap(),
    );
    t.launches += 1;
    let hq = h.num_qo_heads;
    let stats: Vec<ErrorStats> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let rf = attention(
                &qf[b * qrow..(b + 1) * qrow],
                &kf[b],
                &vf[b],
                &h,
                1,
                lens[b],
                &opts,
            )
            .unwrap();
            let lb = lse_f64(&l[b * hq..(b + 1) * hq]);
            ErrorStats::compare(&o[b * qrow..(b + 1) * qrow], &rf.o, Some((&lb, &rf.lse)))
        })
        .collect();
    let tol = tolerance(T::DTYPE);
    for (b, s) in stats.into_iter().enumerate() {
        let what = || {
            format!(
                "{} {h:?} page {page} {lay:?} {opts:?} {kernel:?} len {}",
                T::DTYPE,
                lens[b]
            )
        };
        t.add(what, s, s.within(tol));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_sweep_batch_decode() {
    let Some(gpu) = gpu_or_skip("gpu_sweep_batch_decode") else {
        return;
    };
    sweep(
        &gpu,
        1,
        "batch decode",
        |_| 256,
        [decode_launch::<bf16>, decode_launch::<f16>],
    );
}

// ---------------------------------------------------------------------------------------------
// Prefill

fn prefill_launch<T: Float16>(gpu: &Gpu, r: &mut StdRng, batch: usize, t: &mut Tally) {
    let h = draw_heads(r, 32);
    let causal = r.random_bool(0.6);
    let opts = draw_opts(r, causal);
    let paged = r
        .random_bool(0.5)
        .then(|| (*[1usize, 5, 16].choose(r).unwrap(), layout(r)));
    let arch = gpu.info().arch;
    let tile = if r.random_bool(0.25) {
        None
    } else {
        Some(*PrefillTile::available(h.head_dim, arch).choose(r).unwrap())
    };
    let persistent = [None, Some(false), Some(true)][r.random_range(0..3)];
    let tma = *[None, Some(true), Some(false)].choose(r).unwrap();
    let split = [None, Some(64usize), Some(200)][r.random_range(0..3)];
    // (qo_len, kv_len): kv_len ≥ qo_len (the queries' own keys are the last ones).
    let reqs: Vec<(usize, usize)> = (0..batch)
        .map(|_| {
            let qo = match r.random_range(0..100) {
                0..3 => 0,
                3..30 => 1,
                30..85 => r.random_range(1..17),
                _ => r.random_range(17..130),
            };
            let extra = match r.random_range(0..100) {
                0..10 => 0,
                10..40 => r.random_range(1..64),
                40..95 => r.random_range(1..600),
                _ => r.random_range(600..3000),
            };
            (qo, qo + extra)
        })
        .collect();
    let qo_lens: Vec<usize> = reqs.iter().map(|x| x.0).collect();
    let kv_lens: Vec<usize> = reqs.iter().map(|x| x.1).collect();
    let (qrow, krow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let seed: u64 = r.random();
    let (q, qf) = rows_per_request::<T>(seed, &qo_lens, qrow, 2.0);
    let (k, kf) = rows_per_request::<T>(seed ^ 1, &kv_lens, krow, 2.0);
    let (v, vf) = rows_per_request::<T>(seed ^ 2, &kv_lens, krow, 1.0);
    let indptr = |l: &[usize]| -> Vec<i32> {
        std::iter::once(0)
            .chain(l.iter().scan(0i32, |a, &x| {
                *a += x as i32;
                Some(*a)
            }))
            .collect()
    };
    let (qo_indptr, kv_indptr) = (indptr(&qo_lens), indptr(&kv_lens));
    let nq = q.len() / qrow;
    let mut op = BatchPrefill::new(gpu, h, T::DTYPE, opts).unwrap();
    op.set_tile(tile).unwrap();
    op.set_persistent(persistent);
    op.set_tma(tma);
    op.set_fixed_split_size(split);
    let qd = gpu.upload(&q).unwrap();
    let mut od = gpu.upload(&vec![T::nan(); q.len().max(1)]).unwrap();
    let mut ld = gpu
        .upload(&vec![f32::NAN; (nq * h.num_qo_heads).max(1)])
        .unwrap();
    match paged {
        None => {
            let plan = op.plan_ragged(&qo_indptr, &kv_indptr).unwrap();
            let (kd, vd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
            op.run_ragged(&plan, &qd, &kd, &vd, &mut od, Some(&mut ld))
                .unwrap();
        }
        Some((page, lay)) => {
            let (pages, num_pages) = shuffled_pages(r, &kv_lens, page, 2);
            let pool = gpu_pool(gpu, &h, page, lay, &pages, num_pages, &kv_lens, &k, &v);
            let plan = op.plan_paged(&qo_indptr, &pages, pool.config()).unwrap();
            op.run_paged(&plan, &qd, &pool, &mut od, Some(&mut ld))
                .unwrap();
        }
    }
    let (o, l) = (
        to_f64(&gpu.download(&od).unwrap()),
        gpu.download(&ld).unwrap(),
    );
    t.launches += 1;
    let hq = h.num_qo_heads;
    let stats: Vec<ErrorStats> = (0..batch)
        .into_par_iter()
        .map(|b| {
            let (q0, q1) = (qo_indptr[b] as usize, qo_indptr[b + 1] as usize);
            let rf = attention(&qf[b], &kf[b], &vf[b], &h, reqs[b].0, reqs[b].1, &opts).unwrap();
            let lb = lse_f64(&l[q0 * hq..q1 * hq]);
            ErrorStats::compare(&o[q0 * qrow..q1 * qrow], &rf.o, Some((&lb, &rf.lse)))
        })
        .collect();
    let tol = tolerance(T::DTYPE);
    for (b, s) in stats.into_iter().enumerate() {
        let what = || {
            format!(
                "{} {h:?} {paged:?} {opts:?} tile {tile:?} persistent {persistent:?} tma {tma:?} \
                 split {split:?} (qo, kv) {:?}",
                T::DTYPE,
                reqs[b]
            )
        };
        t.add(what, s, s.within(tol));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_sweep_batch_prefill() {
    let Some(gpu) = gpu_or_skip("gpu_sweep_batch_prefill") else {
        return;
    };
    sweep(
        &gpu,
        2,
        "batch prefill",
        |_| 96,
        [prefill_launch::<bf16>, prefill_launch::<f16>],
    );
}

// ---------------------------------------------------------------------------------------------
// Append

/// One launch of the append op: each request keeps `lens[b] - n[b]` earlier tokens and appends
/// its last `n[b]` (a decode step's one, a chunk, or the whole prompt), from rows with padded
/// strides (as a fused QKV projection leaves them). A case is one request: its rows must land
/// bit-exact at their page entries; the launch also fails if any other pool element changed.
fn append_launch<T: Float16>(gpu: &Gpu, r: &mut StdRng, batch: usize, t: &mut Tally) {
    let h = draw_heads(r, 8);
    let (hkv, d) = (h.num_kv_heads, h.head_dim);
    let page = *[1usize, 8, 16, 32].choose(r).unwrap();
    let lay = layout(r);
    let variant = [
        (1, false),
        (1, true),
        (2, false),
        (4, false),
        (8, false),
        (102, false),
        (104, false),
    ][r.random_range(0..7)];
    let lens: Vec<usize> = (0..batch).map(|_| draw_len(r, page)).collect();
    let from: Vec<usize> = lens
        .iter()
        .map(|&l| match r.random_range(0..4) {
            0 => 0,
            1 => l.saturating_sub(1),
            _ => l - r.random_range(0..=l.min(40)),
        })
        .collect();
    let (pages, num_pages) = shuffled_pages(r, &lens, page, 3);
    let (bi, pos) = positions(&lens, Some(&from));
    // Rows with a padded row stride: `[n, hkv, d]` inside `[n, hkv * d + pad]`.
    let pad = *[0usize, 8, 64].choose(r).unwrap();
    let rs = RowStrides {
        stride_n: hkv * d + pad,
        stride_h: d,
    };
    let seed: u64 = r.random();
    let n = bi.len();
    let (k, _) = random_values::<T>(&mut rng(seed), (n * rs.stride_n).max(1), 2.0);
    let (v, _) = random_values::<T>(&mut rng(seed ^ 1), (n * rs.stride_n).max(1), 2.0);
    let cfg = pool_config(&h, page, lay, 0);
    let mut pool = KvPool::<T>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages)).unwrap();
    let (pk, _) = random_values::<T>(&mut rng(seed ^ 2), 997, 4.0);
    let (pv, _) = random_values::<T>(&mut rng(seed ^ 3), 997, 4.0);
    pool.fill_tiled(&pk, &pv).unwrap();
    pool.set_append_variant(variant.0, variant.1).unwrap();
    let (k0, v0) = {
        let (kb, vb) = pool.device_buffers().unwrap();
        (gpu.download(kb).unwrap(), gpu.download(vb).unwrap())
    };
    if n > 0 {
        let (kd, vd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
        let meta = AppendMeta {
            batch_indices: &bi,
            positions: &pos,
            pages: &pages,
        };
        pool.append(&meta, Rows::Device(&kd), rs, Rows::Device(&vd), rs)
            .unwrap();
    }
    let (k1, v1) = {
        let (kb, vb) = pool.device_buffers().unwrap();
        (gpu.download(kb).unwrap(), gpu.download(vb).unwrap())
    };
    t.launches += 1;
    // The expected pool: the old contents with every appended row written at its entry.
    let cfg = *pool.config();
    let (mut ek, mut ev) = (k0, v0);
    let mut row_of_request = vec![0usize; batch + 1];
    for &b in &bi {
        row_of_request[b as usize + 1] += 1;
    }
    for b in 0..batch {
        row_of_request[b + 1] += row_of_request[b];
    }
    let place = |b: usize, p: usize, hh: usize| {
        let id = pages.kv_indices[pages.kv_indptr[b] as usize + p / page] as usize;
        cfg.offset(id, p % page, hh)
    };
    for (i, (&b, &p)) in bi.iter().zip(&pos).enumerate() {
        for hh in 0..hkv {
            let (dst, src) = (place(b as usize, p as usize, hh), i * rs.stride_n + hh * d);
            ek[dst..dst + d].copy_from_slice(&k[src..src + d]);
            ev[dst..dst + d].copy_from_slice(&v[src..src + d]);
        }
    }
    let same = |a: T, b: T| a.to_f32().to_bits() == b.to_f32().to_bits();
    for b in 0..batch {
        let mut wrong = 0usize;
        for &p in &pos[row_of_request[b]..row_of_request[b + 1]] {
            for hh in 0..hkv {
                let at = place(b, p as usize, hh);
                wrong += (at..at + d)
                    .filter(|&e| !same(k1[e], ek[e]) || !same(v1[e], ev[e]))
                    .count();
            }
        }
        let s = ErrorStats {
            max_abs: wrong as f64,
            ..Default::default()
        };
        let what = || {
            format!(
                "{} {h:?} page {page} {lay:?} variant {variant:?} pad {pad}: tokens {}..{} \
                 ({wrong} elements wrong)",
                T::DTYPE,
                from[b],
                lens[b]
            )
        };
        t.add(what, s, wrong == 0);
    }
    let stray = (0..ek.len())
        .filter(|&e| !same(k1[e], ek[e]) || !same(v1[e], ev[e]))
        .count();
    assert_eq!(stray, 0, "append wrote {stray} pool elements it should not have (variant {variant:?}, {h:?}, page {page}, {lay:?})");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_sweep_append() {
    let Some(gpu) = gpu_or_skip("gpu_sweep_append") else {
        return;
    };
    sweep(
        &gpu,
        3,
        "append",
        |_| 512,
        [append_launch::<bf16>, append_launch::<f16>],
    );
}

// ---------------------------------------------------------------------------------------------
// Merge

/// One launch of a merge op (`merge_states` over 0–7 states, `merge_state`, or
/// `merge_state_in_place`) over `rows` rows, a fifth of the states empty; a case is one row.
fn merge_launch<T: Float16>(gpu: &Gpu, r: &mut StdRng, rows: usize, t: &mut Tally) {
    let shape = MergeShape {
        seq_len: rows,
        num_heads: r.random_range(1..=8),
        head_dim: *[64usize, 128, 256].choose(r).unwrap(),
    };
    let op = r.random_range(0..3);
    let n = if op == 0 { r.random_range(0..=7) } else { 2 };
    let st = states::<T>(r, shape, n, 0.2);
    let (ro, rl) = merge_oracle(shape, n, &st.vf, &st.s);
    let (hh, per) = (shape.num_heads, shape.num_heads * shape.head_dim);
    let poison_o = vec![T::nan(); rows * per];
    let poison_l = vec![f32::NAN; rows * hh];
    let (o, l) = match op {
        0 => {
            let (v, s) = (gpu.upload(&st.v).unwrap(), gpu.upload(&st.s).unwrap());
            let (mut o, mut l) = (
                gpu.upload(&poison_o).unwrap(),
                gpu.upload(&poison_l).unwrap(),
            );
            merge_states(gpu, shape, n, &v, &s, &mut o, Some(&mut l)).unwrap();
            (o, l)
        }
        _ => {
            let (va, vb) = split2(&st.v, rows, per);
            let (sa, sb) = split2(&st.s, rows, hh);
            let (mut va, vb) = (gpu.upload(&va).unwrap(), gpu.upload(&vb).unwrap());
            let (mut sa, sb) = (gpu.upload(&sa).unwrap(), gpu.upload(&sb).unwrap());
            if op == 2 {
                merge_state_in_place(gpu, shape, &mut va, &mut sa, &vb, &sb).unwrap();
                (va, sa)
            } else {
                let (mut o, mut l) = (
                    gpu.upload(&poison_o).unwrap(),
                    gpu.upload(&poison_l).unwrap(),
                );
                merge_state(gpu, shape, &va, &sa, &vb, &sb, &mut o, Some(&mut l)).unwrap();
                (o, l)
            }
        }
    };
    let (o, l) = (
        to_f64(&gpu.download(&o).unwrap()),
        lse_f64(&gpu.download(&l).unwrap()),
    );
    t.launches += 1;
    let bf = T::DTYPE == DType::Bf16;
    let stats: Vec<ErrorStats> = (0..rows)
        .into_par_iter()
        .map(|i| {
            ErrorStats::compare(
                &o[i * per..(i + 1) * per],
                &ro[i * per..(i + 1) * per],
                Some((&l[i * hh..(i + 1) * hh], &rl[i * hh..(i + 1) * hh])),
            )
        })
        .collect();
    for (i, s) in stats.into_iter().enumerate() {
        let what = || format!("{} {shape:?} op {op} states {n} row {i}", T::DTYPE);
        t.add(what, s, merge_within(&s, bf));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_sweep_merge() {
    let Some(gpu) = gpu_or_skip("gpu_sweep_merge") else {
        return;
    };
    sweep(
        &gpu,
        4,
        "merge",
        |r| r.random_range(1..1200),
        [merge_launch::<bf16>, merge_launch::<f16>],
    );
}

//! CPU backend over fp8 KV caches (e4m3 and e5m2 with per-tensor `k_scale`/`v_scale`):
//! `cpu::batch_decode_fp8`, `single_decode_fp8`, `batch_prefill_paged_fp8` and
//! `batch_prefill_ragged_fp8` against the f64 oracle fed the *dequantised* K/V (code × scale,
//! exact in f64), so the bounds measure the attention, not the format: they are the 16-bit
//! tolerance table's (`reference::tolerance`), since the only roundings left are the f32
//! accumulation and the 16-bit output, as for 16-bit K/V.
//!
//! Property test over the pool head dims (64/128/256; odd CPU-only ones over contiguous K/V in
//! `odd_head_dims_contiguous`), GQA groups 1–8, page sizes,
//! NHD/HND, batch sizes, options, both formats, f16/bf16 queries; the pool is filled by the
//! quantising append (whose bytes are checked against the quantiser); outputs poisoned with NaN
//! and longer than needed. With power-of-two scales the fp8 path equals the 16-bit path over the
//! dequantised values bit for bit (scales fold in exactly). Bad scales: typed errors, nothing
//! written.
use ferrinfer::cpu::{
    batch_decode, batch_decode_fp8, batch_prefill_paged, batch_prefill_paged_fp8,
    batch_prefill_ragged_fp8, single_decode_fp8, KvStrides,
};
use ferrinfer::fp8::{E4m3, E5m2, Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{AppendMeta, BatchPages, KvLayout, KvPool, RowStrides, Rows};
use ferrinfer::reference::attention;
use ferrinfer::{AttentionOptions, Error, Float16, HeadConfig};
use ferrinfer_harness::fp8::{host_pool, quantize_rows, random_scales};
use ferrinfer_harness::paged::{per_request, shuffled_pages};
use ferrinfer_harness::{random_values, rng, to_f64, tolerance, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;

/// Extra output elements past the required ones; must stay poisoned.
const TAIL: usize = 3;

#[derive(Clone, Debug)]
struct Case {
    head_dim: usize,
    group: usize,
    num_kv_heads: usize,
    /// KV length per request.
    lens: Vec<usize>,
    /// Query tokens per request (prefill; `≤ lens[b]`).
    qo: Vec<usize>,
    page_size: usize,
    hnd: bool,
    bf16: bool,
    e5m2: bool,
    opts: AttentionOptions,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    // The head dims a page pool takes (odd ones: `odd_head_dims_contiguous`).
    let head_dim = prop::sample::select(vec![64usize, 128, 256]);
    let req = prop_oneof![1 => Just(0usize), 1 => 1usize..=17, 4 => 0usize..=300]
        .prop_flat_map(|len| (Just(len), 0..=len.min(24)));
    let opts = (
        prop::option::of(0.02f32..0.5),
        prop::option::of(5.0f32..50.0),
        prop::option::of(0usize..200),
        any::<bool>(),
    )
        .prop_map(
            |(sm_scale, soft_cap, window_left, causal)| AttentionOptions {
                sm_scale,
                soft_cap,
                window_left,
                causal,
            },
        );
    (
        head_dim,
        1usize..=8,
        1usize..=2,
        prop::collection::vec(req, 1..=4),
        prop::sample::select(vec![1usize, 3, 16]),
        any::<(bool, bool, bool)>(),
        opts,
        any::<u64>(),
    )
        .prop_map(
            |(head_dim, group, num_kv_heads, reqs, page_size, (hnd, bf16, e5m2), opts, seed)| {
                Case {
                    head_dim,
                    group,
                    num_kv_heads,
                    lens: reqs.iter().map(|r| r.0).collect(),
                    qo: reqs.iter().map(|r| r.1).collect(),
                    page_size,
                    hnd,
                    bf16,
                    e5m2,
                    opts,
                    seed,
                }
            },
        )
}

/// Everything one case compares: the cache, its dequantised images and the queries.
struct Data<T, F> {
    h: HeadConfig,
    scales: KvScales,
    pages: BatchPages,
    pool: KvPool<T, Fp8<F>>,
    /// K/V codes `[Σ lens, Hkv, D]` (what the pool must hold) and their real values.
    kc: Vec<Fp8<F>>,
    vc: Vec<Fp8<F>>,
    kf: Vec<f64>,
    vf: Vec<f64>,
    /// Queries `[rows, Hq, D]` for `rows` query tokens.
    q: Vec<T>,
    qf: Vec<f64>,
}

fn data<T: Float16, F: Fp8Format>(c: &Case, q_rows: usize, scales: Option<KvScales>) -> Data<T, F> {
    let h = HeadConfig::new(c.group * c.num_kv_heads, c.num_kv_heads, c.head_dim).unwrap();
    let mut r = rng(c.seed);
    let scales = scales.unwrap_or_else(|| random_scales(&mut r));
    let total: usize = c.lens.iter().sum();
    let kvrow = h.num_kv_heads * h.head_dim;
    let (q, qf) = random_values::<T>(&mut r, q_rows * h.num_qo_heads * h.head_dim, 1.0);
    let (k, _) = random_values::<T>(&mut r, total * kvrow, 1.0);
    let (v, _) = random_values::<T>(&mut r, total * kvrow, 1.0);
    let (kc, kf) = quantize_rows::<T, F>(&k, scales.k);
    let (vc, vf) = quantize_rows::<T, F>(&v, scales.v);
    let (pages, num_pages) = shuffled_pages(&mut r, &c.lens, c.page_size, 2);
    let layout = if c.hnd { KvLayout::Hnd } else { KvLayout::Nhd };
    let pool = host_pool::<T, F>(
        &h,
        c.page_size,
        layout,
        &pages,
        num_pages,
        &c.lens,
        (&k, &v),
        scales,
    );
    Data {
        h,
        scales,
        pages,
        pool,
        kc,
        vc,
        kf,
        vf,
        q,
        qf,
    }
}

/// The pool holds exactly the quantiser's codes at every (request, position, head).
fn check_pool_bytes<T: Float16, F: Fp8Format>(c: &Case, d: &Data<T, F>) -> Result<(), String> {
    let cfg = *d.pool.config();
    let (kp, vp) = d.pool.host_buffers().ok_or("not a host pool")?;
    let mut row = 0;
    for (b, &len) in c.lens.iter().enumerate() {
        for t in 0..len {
            let page = d.pages.kv_indices[d.pages.kv_indptr[b] as usize + t / cfg.page_size];
            for hk in 0..cfg.num_kv_heads {
                let at = cfg.offset(page as usize, t % cfg.page_size, hk);
                let src = (row * cfg.num_kv_heads + hk) * cfg.head_dim;
                let n = cfg.head_dim;
                if kp[at..at + n] != d.kc[src..src + n] || vp[at..at + n] != d.vc[src..src + n] {
                    return Err(format!(
                        "pool bytes differ at request {b} token {t} head {hk}"
                    ));
                }
            }
            row += 1;
        }
    }
    Ok(())
}

/// Compares `out`/`lse` (with their poisoned tails) against the oracle per request.
#[allow(clippy::too_many_arguments)]
fn compare<T: Float16>(
    h: &HeadConfig,
    opts: &AttentionOptions,
    out: &[T],
    lse: &[f32],
    d_qf: &[f64],
    kf: &[f64],
    vf: &[f64],
    lens: &[usize],
    qo: &[usize],
) -> Result<ErrorStats, String> {
    let (qrow, kvrow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let rows: usize = qo.iter().sum();
    if !out[rows * qrow..].iter().all(|x| x.to_f32().is_nan())
        || !lse[rows * h.num_qo_heads..].iter().all(|x| x.is_nan())
    {
        return Err("wrote past the output rows".into());
    }
    let (ks, vs) = (per_request(kf, lens, kvrow), per_request(vf, lens, kvrow));
    let qs = per_request(d_qf, qo, qrow);
    let (mut want_o, mut want_l) = (Vec::new(), Vec::new());
    for b in 0..lens.len() {
        let r = attention(&qs[b], &ks[b], &vs[b], h, qo[b], lens[b], opts)
            .map_err(|e| e.to_string())?;
        want_o.extend(r.o);
        want_l.extend(r.lse);
    }
    let o = to_f64(&out[..rows * qrow]);
    let l: Vec<f64> = lse[..rows * h.num_qo_heads]
        .iter()
        .map(|&x| x as f64)
        .collect();
    let s = ErrorStats::compare(&o, &want_o, Some((&l, &want_l)));
    if !s.within(tolerance(T::DTYPE)) {
        return Err(format!("outside {:?}: {s:?}", tolerance(T::DTYPE)));
    }
    Ok(s)
}

fn poisoned<T: Float16>(rows: usize, h: &HeadConfig) -> (Vec<T>, Vec<f32>) {
    (
        vec![T::nan(); rows * h.num_qo_heads * h.head_dim + TAIL],
        vec![f32::NAN; rows * h.num_qo_heads + TAIL],
    )
}

/// Decode (paged and, per request, contiguous) of one case.
fn check_decode<T: Float16, F: Fp8Format>(c: &Case) -> Result<ErrorStats, String> {
    let b = c.lens.len();
    let d = data::<T, F>(c, b, None);
    check_pool_bytes(c, &d)?;
    let h = &d.h;
    let opts = AttentionOptions {
        causal: false,
        ..c.opts
    };
    let (mut out, mut lse) = poisoned::<T>(b, h);
    batch_decode_fp8(
        h,
        &opts,
        &d.q,
        &d.pool,
        &d.pages,
        d.scales,
        &mut out,
        Some(&mut lse),
    )
    .map_err(|e| format!("batch_decode_fp8: {e}"))?;
    let ones = vec![1; b];
    let s = compare(h, &opts, &out, &lse, &d.qf, &d.kf, &d.vf, &c.lens, &ones)?;

    // Single decode over the contiguous codes of each request: the same numbers.
    let (qrow, kvrow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let mut off = 0;
    for (bi, &len) in c.lens.iter().enumerate() {
        let (mut o1, mut l1) = poisoned::<T>(1, h);
        let (k, v) = (&d.kc[off * kvrow..], &d.vc[off * kvrow..]);
        let st = KvStrides::contiguous(h);
        let q = &d.q[bi * qrow..(bi + 1) * qrow];
        single_decode_fp8(
            h,
            &opts,
            q,
            k,
            st,
            v,
            st,
            len,
            d.scales,
            &mut o1,
            Some(&mut l1),
        )
        .map_err(|e| format!("single_decode_fp8: {e}"))?;
        let same = o1[..qrow]
            .iter()
            .zip(&out[bi * qrow..])
            .all(|(a, b)| a.to_f32().to_bits() == b.to_f32().to_bits());
        if !same {
            return Err(format!(
                "single decode of request {bi} differs from batch decode"
            ));
        }
        off += len;
    }
    Ok(s)
}

/// Paged and ragged prefill of one case.
fn check_prefill<T: Float16, F: Fp8Format>(c: &Case) -> Result<ErrorStats, String> {
    let rows: usize = c.qo.iter().sum();
    let d = data::<T, F>(c, rows, None);
    let h = &d.h;
    let mut qo_indptr = vec![0i32];
    let mut kv_indptr = vec![0i32];
    for (&q, &l) in c.qo.iter().zip(&c.lens) {
        qo_indptr.push(qo_indptr.last().unwrap() + q as i32);
        kv_indptr.push(kv_indptr.last().unwrap() + l as i32);
    }
    let (mut out, mut lse) = poisoned::<T>(rows, h);
    batch_prefill_paged_fp8(
        h,
        &c.opts,
        &d.q,
        &qo_indptr,
        &d.pool,
        &d.pages,
        d.scales,
        &mut out,
        Some(&mut lse),
    )
    .map_err(|e| format!("batch_prefill_paged_fp8: {e}"))?;
    let s = compare(h, &c.opts, &out, &lse, &d.qf, &d.kf, &d.vf, &c.lens, &c.qo)?;
    let (mut out2, mut lse2) = poisoned::<T>(rows, h);
    batch_prefill_ragged_fp8(
        h,
        &c.opts,
        &d.q,
        &qo_indptr,
        &d.kc,
        &d.vc,
        &kv_indptr,
        d.scales,
        &mut out2,
        Some(&mut lse2),
    )
    .map_err(|e| format!("batch_prefill_ragged_fp8: {e}"))?;
    let s2 = compare(
        h, &c.opts, &out2, &lse2, &d.qf, &d.kf, &d.vf, &c.lens, &c.qo,
    )?;
    Ok(s.worst(s2))
}

fn run(c: &Case, prefill: bool) -> Result<ErrorStats, String> {
    match (c.bf16, c.e5m2, prefill) {
        (false, false, false) => check_decode::<f16, E4m3>(c),
        (false, true, false) => check_decode::<f16, E5m2>(c),
        (true, false, false) => check_decode::<bf16, E4m3>(c),
        (true, true, false) => check_decode::<bf16, E5m2>(c),
        (false, false, true) => check_prefill::<f16, E4m3>(c),
        (false, true, true) => check_prefill::<f16, E5m2>(c),
        (true, false, true) => check_prefill::<bf16, E4m3>(c),
        (true, true, true) => check_prefill::<bf16, E5m2>(c),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cpu_fp8_decode_matches_oracle(c in case()) {
        let res = run(&c, false);
        prop_assert!(res.is_ok(), "{c:?}: {}", res.err().unwrap_or_default());
    }

    #[test]
    fn cpu_fp8_prefill_matches_oracle(c in case()) {
        let res = run(&c, true);
        prop_assert!(res.is_ok(), "{c:?}: {}", res.err().unwrap_or_default());
    }
}

/// Every GPU head dim with groups 1, 3, 4 and 8, both formats and both query types, each run
/// every time (whatever the property test draws); prints the worst errors.
#[test]
fn every_head_dim_and_group() {
    let mut worst = ErrorStats::default();
    let mut seed = 7u64;
    for head_dim in [64usize, 128, 256] {
        for group in [1usize, 3, 4, 8] {
            for (bf16, e5m2) in [(false, false), (false, true), (true, false), (true, true)] {
                seed += 1;
                let c = Case {
                    head_dim,
                    group,
                    num_kv_heads: 2,
                    lens: vec![33, 1, 130],
                    qo: vec![5, 1, 17],
                    page_size: 16,
                    hnd: seed.is_multiple_of(2),
                    bf16,
                    e5m2,
                    opts: AttentionOptions {
                        causal: true,
                        ..Default::default()
                    },
                    seed,
                };
                for prefill in [false, true] {
                    match run(&c, prefill) {
                        Ok(s) => worst = worst.worst(s),
                        Err(e) => panic!("{c:?} prefill {prefill}: {e}"),
                    }
                }
            }
        }
    }
    eprintln!("cpu fp8 worst over head dims and groups: {worst:?}");
}

mod edges;

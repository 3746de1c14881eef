//! The model kernels (`ferrinfer::ops::ModelKernels`: RMSNorm, residual-add + RMSNorm, the fused
//! QKV split + RoPE epilogue, SiLU-and-mul, 16-bit → f32, embedding gather, argmax) against
//! their CPU twins (`ferrinfer::cpu::{norm, rope, activation, sampling}`), which define the
//! semantics: random shapes (SmolLM2's 576 and Llama's 4096/8192 among them, head dims 64 and
//! 128 and odd ones, both RoPE styles, f16 and bf16, one token and many), outputs poisoned with
//! NaN and allocated larger than needed (the slack must stay untouched), every element checked
//! against a per-element bound whose reason is written beside it; bad input → typed error for
//! every op.
use ferrinfer::cpu::{activation, norm, rope, sampling};
use ferrinfer::ops::ModelKernels;
use ferrinfer::rope::{RopeConfig, RopeScaling, RopeStyle};
use ferrinfer::{DeviceBuffer, Error, Float16, Gpu};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, rng, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::Rng;

/// `n` values uniform in `[-scale, scale]`.
fn uniform(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..=scale)).collect()
}

/// `data` followed by `slack` copies of `fill`: buffers larger than an op needs.
fn padded<T: Copy>(data: &[T], slack: usize, fill: T) -> Vec<T> {
    let mut v = data.to_vec();
    v.extend(std::iter::repeat_n(fill, slack));
    v
}

/// Checks every element: `|got − want| ≤ bound(i, want)`, NaN never accepted; then the
/// summary statistics (rel-L2 and max-abs, for the printed worst case).
fn check(what: &str, got: &[f32], want: &[f32], bound: impl Fn(usize, f32) -> f32) -> ErrorStats {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= bound(i, w),
            "{what}: element {i}: got {g}, want {w} (error {err:e} > bound {:e})",
            bound(i, w)
        );
    }
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    ErrorStats::compare(&f(got), &f(want), None)
}

/// The first `n` elements of a downloaded buffer; the rest must still hold `fill` (nothing written past the
/// op's extent).
fn unpadded<T: Poison>(all: Vec<T>, n: usize, what: &str) -> Vec<T> {
    assert!(
        all[n..].iter().all(|x| x.is_poison()),
        "{what}: the op wrote past its {n} elements"
    );
    all[..n].to_vec()
}

/// Element types whose slack is poisoned: NaN for floats, a sentinel for ids.
trait Poison: Copy {
    fn is_poison(&self) -> bool;
}
impl Poison for f32 {
    fn is_poison(&self) -> bool {
        self.is_nan()
    }
}
impl Poison for f16 {
    fn is_poison(&self) -> bool {
        self.is_nan()
    }
}
impl Poison for bf16 {
    fn is_poison(&self) -> bool {
        self.is_nan()
    }
}
impl Poison for u32 {
    fn is_poison(&self) -> bool {
        *self == POISON_ID
    }
}

/// Poison of u32 outputs (not an index any test produces).
const POISON_ID: u32 = 0xdead_beef;

// ---------------------------------------------------------------------------------------------
// RMSNorm

fn run_norm(
    gpu: &Gpu,
    mk: &ModelKernels,
    seed: u64,
    rows: usize,
    dim: usize,
    add: bool,
) -> ErrorStats {
    let mut r = rng(seed);
    let eps = [1e-5f32, 1e-6, 1e-3][r.random_range(0..3)];
    let slack = r.random_range(0..5);
    let n = rows * dim;
    let x = uniform(&mut r, n, 2.0);
    let w = uniform(&mut r, dim, 1.5);
    let res0 = uniform(&mut r, n, 2.0);
    let mut want = vec![0.0f32; n];
    let mut res_want = res0.clone();
    if add {
        norm::add_rms_norm(&mut res_want, &x, &w, eps, &mut want).unwrap();
    } else {
        norm::rms_norm(&x, &w, eps, &mut want).unwrap();
    }
    let xd = gpu.upload(&padded(&x, slack, 0.0)).unwrap();
    let wd = gpu.upload(&w).unwrap();
    let mut out = gpu
        .upload(&padded(&vec![f32::NAN; n], slack, f32::NAN))
        .unwrap();
    let mut res = gpu.upload(&padded(&res0, slack, f32::NAN)).unwrap();
    if add {
        mk.add_rms_norm(&mut res, &xd, &wd, rows, eps, &mut out)
            .unwrap();
        // One f32 addition on both sides: bit-identical.
        let got = unpadded(gpu.download(&res).unwrap(), n, "residual");
        assert!(
            got.iter()
                .zip(&res_want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "residual differs from the CPU twin's residual + x"
        );
    } else {
        mk.rms_norm(&xd, &wd, rows, eps, &mut out).unwrap();
    }
    let got = unpadded(gpu.download(&out).unwrap(), n, "rms_norm out");
    // Both sides compute v · r · w with one shared r per row; they differ only in r. The GPU
    // sums the squares in f32 along chains of at most dim/256 + 13 terms (strided per thread,
    // then two 5-level shuffle trees and an 8-term sum): relative error ≤ 40·2⁻²⁴ ≈ 2.4·10⁻⁶ at
    // dim 8192, halved by the inverse square root, plus ~5 roundings (the CPU's r is f64
    // rounded once). 10⁻⁵ relative is ≥ 5× that; the absolute floor only admits exact zeros.
    check("rms_norm", &got, &want, |_, w| {
        1e-5 * w.abs() + f32::MIN_POSITIVE
    })
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_rms_norm_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_rms_norm_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..24,
        prop_oneof![
            prop::sample::select(vec![1usize, 7, 64, 576, 1000, 2048, 4096, 8192]),
            1usize..3000
        ],
        any::<bool>(),
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, dim, add, seed)| {
            let s = run_norm(&gpu, &mk, seed, rows, dim, add);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    // The model shapes explicitly: one token and a prefill chunk at SmolLM2's and Llama's dims.
    for (i, &(rows, dim)) in [(1, 576), (37, 576), (1, 4096), (5, 8192), (300, 576)]
        .iter()
        .enumerate()
    {
        for add in [false, true] {
            let s = run_norm(&gpu, &mk, 100 + i as u64, rows, dim, add);
            worst.set(worst.get().worst(s));
        }
    }
    println!(
        "gpu rms_norm: {cases} random cases + model shapes, worst {:?}",
        worst.get()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rms_norm_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("rms_norm_bad_input_is_a_typed_error") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let (rows, dim) = (3, 64);
    let x = gpu.alloc::<f32>(rows * dim).unwrap();
    let w = gpu.alloc::<f32>(dim).unwrap();
    let mut out = gpu.alloc::<f32>(rows * dim).unwrap();
    let mut res = gpu.alloc::<f32>(rows * dim).unwrap();
    let short = gpu.alloc::<f32>(rows * dim - 1).unwrap();
    let mut short_out = gpu.alloc::<f32>(rows * dim - 1).unwrap();
    let shape = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid = |r: ferrinfer::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(shape(mk.rms_norm(&short, &w, rows, 1e-5, &mut out)));
    assert!(shape(mk.rms_norm(&x, &w, rows, 1e-5, &mut short_out)));
    for eps in [0.0, -1e-5, f32::NAN, f32::INFINITY] {
        assert!(
            invalid(mk.rms_norm(&x, &w, rows, eps, &mut out)),
            "eps {eps}"
        );
        assert!(
            invalid(mk.add_rms_norm(&mut res, &x, &w, rows, eps, &mut out)),
            "eps {eps}"
        );
    }
    assert!(matches!(
        mk.rms_norm(&x, &w, usize::MAX / 2, 1e-5, &mut out),
        Err(Error::Overflow { .. })
    ));
    let mut short_res = gpu.alloc::<f32>(rows * dim - 1).unwrap();
    assert!(shape(mk.add_rms_norm(
        &mut short_res,
        &x,
        &w,
        rows,
        1e-5,
        &mut out
    )));
    assert!(shape(
        mk.add_rms_norm(&mut res, &short, &w, rows, 1e-5, &mut out)
    ));
    assert!(shape(mk.add_rms_norm(
        &mut res,
        &x,
        &w,
        rows,
        1e-5,
        &mut short_out
    )));
    // A weight longer than the rows' dim means rows of that length: x is then too short.
    let w_long = gpu.alloc::<f32>(dim + 1).unwrap();
    assert!(shape(mk.rms_norm(&x, &w_long, rows, 1e-5, &mut out)));
    // Valid calls, and zero rows is a no-op.
    mk.rms_norm(&x, &w, rows, 1e-5, &mut out).unwrap();
    mk.add_rms_norm(&mut res, &x, &w, 0, 1e-5, &mut out)
        .unwrap();
    gpu.synchronize().unwrap();
}

// ---------------------------------------------------------------------------------------------
// QKV split + RoPE

#[derive(Clone, Copy, Debug)]
struct RopeCase {
    n: usize,
    hq: usize,
    hk: usize,
    d: usize,
    rotary_dim: usize,
    theta: f32,
    style: RopeStyle,
    max_pos: i32,
}

/// The CPU twin of the fused epilogue: split, `cpu::rope::apply_rope` on q and k (negative
/// positions as 0), f32 results.
fn rope_oracle(c: &RopeCase, qkv: &[f32], pos: &[i32], inv_freq: &[f32]) -> [Vec<f32>; 3] {
    let row = (c.hq + 2 * c.hk) * c.d;
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..c.n {
        let r = &qkv[t * row..(t + 1) * row];
        q.extend_from_slice(&r[..c.hq * c.d]);
        k.extend_from_slice(&r[c.hq * c.d..(c.hq + c.hk) * c.d]);
        v.extend_from_slice(&r[(c.hq + c.hk) * c.d..]);
    }
    let pos: Vec<i32> = pos.iter().map(|&p| p.max(0)).collect();
    rope::apply_rope(&mut q, c.hq, c.d, &pos, inv_freq, c.style).unwrap();
    rope::apply_rope(&mut k, c.hk, c.d, &pos, inv_freq, c.style).unwrap();
    [q, k, v]
}

fn run_rope<T: Float16 + Poison>(
    gpu: &Gpu,
    mk: &ModelKernels,
    seed: u64,
    c: RopeCase,
) -> ErrorStats {
    let mut r = rng(seed);
    let slack = r.random_range(0..4);
    let row = (c.hq + 2 * c.hk) * c.d;
    let qkv = uniform(&mut r, c.n * row, 2.0);
    let pos: Vec<i32> = (0..c.n).map(|_| r.random_range(-3..=c.max_pos)).collect();
    let cfg = RopeConfig {
        theta: c.theta,
        rotary_dim: c.rotary_dim,
        scaling: RopeScaling::None,
        style: c.style,
    };
    let inv_freq = cfg.inv_freq(c.d, None).unwrap();
    let [wq, wk, wv] = rope_oracle(&c, &qkv, &pos, &inv_freq);
    let qkv_d = gpu.upload(&padded(&qkv, slack, 0.0)).unwrap();
    let pos_d = gpu.upload(&padded(&pos, slack, 0)).unwrap();
    let f_d = gpu.upload(&inv_freq).unwrap();
    let poison = |len: usize| gpu.upload(&vec![T::nan(); len + slack]).unwrap();
    let (mut q, mut k, mut v) = (poison(wq.len()), poison(wk.len()), poison(wv.len()));
    mk.qkv_rope::<T>(
        &qkv_d, c.n, c.hq, c.hk, c.d, &pos_d, &f_d, c.style, &mut q, &mut k, &mut v,
    )
    .unwrap();
    let f32s = |b: &DeviceBuffer<T>, n: usize, what: &str| -> Vec<f32> {
        unpadded(gpu.download(b).unwrap(), n, what)
            .iter()
            .map(|x| x.to_f32())
            .collect()
    };
    let (gq, gk, gv) = (
        f32s(&q, wq.len(), "q"),
        f32s(&k, wk.len(), "k"),
        f32s(&v, wv.len(), "v"),
    );
    // v is a copy: exactly the input rounded once to T.
    let wv_t: Vec<f32> = wv.iter().map(|&x| T::from_f32(x).to_f32()).collect();
    assert!(
        gv.iter()
            .zip(&wv_t)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{c:?}: v is not a copy"
    );
    // The GPU's f32 rotation differs from the twin's by the sine/cosine error (≤ 2.5·10⁻⁷
    // absolute, math::trig's host test, vs the twin's std sin_cos) times |x0| + |x1| ≤ 4, plus
    // a few f32 roundings of values ≤ 2.9 (fma contraction on the device): δ ≤ 1.1·10⁻⁶; we
    // allow 2·10⁻⁶. Rounding to T adds at most half an ulp: 2⁻¹¹ (f16) or 2⁻⁸ (bf16) relative
    // to |want| + δ (f16 subnormals, ≤ 3·10⁻⁸ absolute, fit in δ's margin).
    let half_ulp = if T::DTYPE == ferrinfer::DType::F16 {
        2f32.powi(-11)
    } else {
        2f32.powi(-8)
    };
    let bound = |_, w: f32| half_ulp * (w.abs() + 2e-6) + 2e-6;
    let sq = check("q", &gq, &wq, bound);
    let sk = check("k", &gk, &wk, bound);
    sq.worst(sk)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_qkv_rope_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_qkv_rope_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(64);
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..20,
        1usize..10,
        1usize..5,
        prop_oneof![
            prop::sample::select(vec![64usize, 128, 64, 128, 256]),
            (1usize..80).prop_map(|h| 2 * h)
        ],
        0u8..3,
        prop::sample::select(vec![10_000.0f32, 100_000.0, 500_000.0]),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![8i32, 8192, 131_071]),
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(
            &strategy,
            |(n, hq, hk, d, rot, theta, half, bf, max_pos, seed)| {
                // Full rotation, half the head (partial rotary), or a random even part.
                let rotary_dim = match rot {
                    0 => d,
                    1 => (d / 2).max(2) & !1,
                    _ => 2 * (1 + (seed as usize) % (d / 2)),
                };
                let c = RopeCase {
                    n,
                    hq,
                    hk,
                    d,
                    rotary_dim,
                    theta,
                    style: if half {
                        RopeStyle::Half
                    } else {
                        RopeStyle::Interleaved
                    },
                    max_pos,
                };
                let s = if bf {
                    run_rope::<bf16>(&gpu, &mk, seed, c)
                } else {
                    run_rope::<f16>(&gpu, &mk, seed, c)
                };
                worst.set(worst.get().worst(s));
                Ok(())
            },
        )
        .unwrap();
    // SmolLM2 (9/3 heads of 64, θ 10⁵) and Llama 3 8B (32/8 of 128, θ 5·10⁵): one decode token
    // and a prefill chunk, both pairings, both types.
    for (i, &(n, hq, hk, d, theta)) in [
        (1, 9, 3, 64, 100_000.0f32),
        (64, 9, 3, 64, 100_000.0),
        (1, 32, 8, 128, 500_000.0),
        (17, 32, 8, 128, 500_000.0),
    ]
    .iter()
    .enumerate()
    {
        for style in [RopeStyle::Interleaved, RopeStyle::Half] {
            let c = RopeCase {
                n,
                hq,
                hk,
                d,
                rotary_dim: d,
                theta,
                style,
                max_pos: 131_071,
            };
            let s = run_rope::<f16>(&gpu, &mk, 200 + i as u64, c).worst(run_rope::<bf16>(
                &gpu,
                &mk,
                300 + i as u64,
                c,
            ));
            worst.set(worst.get().worst(s));
        }
    }
    println!(
        "gpu qkv_rope: {cases} random cases + model shapes, worst {:?}",
        worst.get()
    );
}

/// A negative position is position 0; a large one (angle = position at inv_freq 1) is accurate.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_qkv_rope_positions_edge_cases() {
    let Some(gpu) = gpu_or_skip("gpu_qkv_rope_positions_edge_cases") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let (hq, hk, d) = (2, 1, 64);
    let row = (hq + 2 * hk) * d;
    let qkv = uniform(&mut rng(7), 4 * row, 1.0);
    let pos = [-5i32, 0, i32::MIN, 131_071];
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| 1.0 / 10_000f32.powf(2.0 * i as f32 / d as f32))
        .collect();
    let (qkv_d, pos_d, f_d) = (
        gpu.upload(&qkv).unwrap(),
        gpu.upload(&pos).unwrap(),
        gpu.upload(&inv).unwrap(),
    );
    let mut q = gpu.upload(&vec![f16::NAN; 4 * hq * d]).unwrap();
    let mut k = gpu.upload(&vec![f16::NAN; 4 * hk * d]).unwrap();
    let mut v = gpu.upload(&vec![f16::NAN; 4 * hk * d]).unwrap();
    mk.qkv_rope::<f16>(
        &qkv_d,
        4,
        hq,
        hk,
        d,
        &pos_d,
        &f_d,
        RopeStyle::Half,
        &mut q,
        &mut k,
        &mut v,
    )
    .unwrap();
    let q = gpu.download(&q).unwrap();
    // Tokens 0 and 2 (negative positions) are not rotated: q is qkv's q part rounded.
    for t in [0usize, 2] {
        for e in 0..hq * d {
            assert_eq!(
                q[t * hq * d + e],
                f16::from_f32(qkv[t * row + e]),
                "token {t} element {e}"
            );
        }
    }
    let c = RopeCase {
        n: 4,
        hq,
        hk,
        d,
        rotary_dim: d,
        theta: 10_000.0,
        style: RopeStyle::Half,
        max_pos: 0,
    };
    let [wq, _, _] = rope_oracle(&c, &qkv, &pos, &inv);
    let got: Vec<f32> = q.iter().map(|x| x.to_f32()).collect();
    // As in gpu_qkv_rope_matches_cpu_twin, with |x| ≤ 1.
    check(
        "q at position 131071",
        &got[3 * hq * d..],
        &wq[3 * hq * d..],
        |_, w| 2f32.powi(-11) * (w.abs() + 2e-6) + 2e-6,
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn qkv_rope_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("qkv_rope_bad_input_is_a_typed_error") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let (n, hq, hk, d) = (3, 4, 2, 64);
    let qkv = gpu.alloc::<f32>(n * (hq + 2 * hk) * d).unwrap();
    let pos = gpu.alloc::<i32>(n).unwrap();
    let inv = gpu.alloc::<f32>(d / 2).unwrap();
    let mut q = gpu.alloc::<bf16>(n * hq * d).unwrap();
    let mut k = gpu.alloc::<bf16>(n * hk * d).unwrap();
    let mut v = gpu.alloc::<bf16>(n * hk * d).unwrap();
    let st = RopeStyle::Interleaved;
    macro_rules! call {
        ($qkv:expr, $n:expr, $hq:expr, $hk:expr, $d:expr, $pos:expr, $inv:expr, $q:expr, $k:expr, $v:expr) => {
            mk.qkv_rope::<bf16>($qkv, $n, $hq, $hk, $d, $pos, $inv, st, $q, $k, $v)
        };
    }
    let shape = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid = |r: ferrinfer::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(invalid(call!(
        &qkv, n, 0, hk, d, &pos, &inv, &mut q, &mut k, &mut v
    )));
    assert!(invalid(call!(
        &qkv, n, hq, 0, d, &pos, &inv, &mut q, &mut k, &mut v
    )));
    assert!(invalid(call!(
        &qkv, n, hq, hk, 63, &pos, &inv, &mut q, &mut k, &mut v
    )));
    assert!(invalid(call!(
        &qkv, n, hq, hk, 0, &pos, &inv, &mut q, &mut k, &mut v
    )));
    // inv_freq longer than d/2 pairs (here: d = 32 with 32 frequencies).
    assert!(shape(call!(
        &qkv, n, hq, hk, 32, &pos, &inv, &mut q, &mut k, &mut v
    )));
    let short_qkv = gpu.alloc::<f32>(n * (hq + 2 * hk) * d - 1).unwrap();
    assert!(shape(call!(
        &short_qkv, n, hq, hk, d, &pos, &inv, &mut q, &mut k, &mut v
    )));
    let short_pos = gpu.alloc::<i32>(n - 1).unwrap();
    assert!(shape(call!(
        &qkv, n, hq, hk, d, &short_pos, &inv, &mut q, &mut k, &mut v
    )));
    let mut short_q = gpu.alloc::<bf16>(n * hq * d - 1).unwrap();
    let mut short_kv = gpu.alloc::<bf16>(n * hk * d - 1).unwrap();
    assert!(shape(call!(
        &qkv,
        n,
        hq,
        hk,
        d,
        &pos,
        &inv,
        &mut short_q,
        &mut k,
        &mut v
    )));
    assert!(shape(call!(
        &qkv,
        n,
        hq,
        hk,
        d,
        &pos,
        &inv,
        &mut q,
        &mut short_kv,
        &mut v
    )));
    assert!(shape(call!(
        &qkv,
        n,
        hq,
        hk,
        d,
        &pos,
        &inv,
        &mut q,
        &mut k,
        &mut short_kv
    )));
    assert!(matches!(
        call!(
            &qkv,
            n,
            usize::MAX,
            1,
            d,
            &pos,
            &inv,
            &mut q,
            &mut k,
            &mut v
        ),
        Err(Error::Overflow { .. })
    ));
    // d = 128 with 32 frequencies is a valid partial rotation, but the buffers hold d = 64.
    assert!(shape(call!(
        &qkv,
        n,
        hq,
        hk,
        2 * d,
        &pos,
        &inv,
        &mut q,
        &mut k,
        &mut v
    )));
    // Valid, and n = 0 is a no-op.
    call!(&qkv, n, hq, hk, d, &pos, &inv, &mut q, &mut k, &mut v).unwrap();
    call!(&qkv, 0, hq, hk, d, &pos, &inv, &mut q, &mut k, &mut v).unwrap();
    gpu.synchronize().unwrap();
}

// ---------------------------------------------------------------------------------------------
// SiLU-and-mul, to_f32, gather, argmax

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_silu_and_mul_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_silu_and_mul_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(32);
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..24,
        prop_oneof![
            prop::sample::select(vec![1usize, 3, 1536, 14_336]),
            1usize..5000
        ],
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, f, seed)| {
            let mut r = rng(seed);
            let slack = r.random_range(0..5);
            let x = uniform(&mut r, rows * 2 * f, 8.0);
            let mut want = vec![0.0; rows * f];
            activation::silu_and_mul(&x, f, &mut want).unwrap();
            let xd = gpu.upload(&padded(&x, slack, 0.0)).unwrap();
            let mut out = gpu.upload(&vec![f32::NAN; rows * f + slack]).unwrap();
            mk.silu_and_mul(&xd, rows, f, &mut out).unwrap();
            let got = unpadded(gpu.download(&out).unwrap(), rows * f, "silu_and_mul out");
            // silu(g) · u with e^{−g} from ex2.approx: ≤ 2 ulp, plus the rounding of −g·log2(e)
            // (|g| ≤ 8: ≤ 11.6 · 2⁻²⁴ · ln 2 ≈ 5·10⁻⁷ relative), against the twin's 1-ulp exp;
            // silu's relative error is at most e^{−g}'s, then ≤ 3 roundings (sum, division,
            // product): ≈ 1.2·10⁻⁶ in all; 4·10⁻⁶ relative, the floor admits exact zeros.
            let s = check("silu_and_mul", &got, &want, |_, w| {
                4e-6 * w.abs() + f32::MIN_POSITIVE
            });
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu silu_and_mul: {cases} random cases, worst {:?}",
        worst.get()
    );
}

fn run_to_f32<T: Float16>(gpu: &Gpu, mk: &ModelKernels, n: usize, seed: u64) {
    let mut r = rng(seed);
    let x: Vec<T> = uniform(&mut r, n, 100.0)
        .into_iter()
        .map(T::from_f32)
        .collect();
    // At least one element of slack: no zero-length allocations at n = 0.
    let slack = r.random_range(1..4);
    let xd = gpu.upload(&padded(&x, slack, T::nan())).unwrap();
    let mut out = gpu.upload(&vec![f32::NAN; n + slack]).unwrap();
    mk.to_f32(&xd, n, &mut out).unwrap();
    let got = unpadded(gpu.download(&out).unwrap(), n, "to_f32 out");
    // Widening is exact.
    for (i, (g, x)) in got.iter().zip(&x).enumerate() {
        assert_eq!(
            g.to_bits(),
            x.to_f32().to_bits(),
            "{:?} n={n} element {i}",
            T::DTYPE
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_to_f32_is_exact() {
    let Some(gpu) = gpu_or_skip("gpu_to_f32_is_exact") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    for (i, n) in [0usize, 1, 2, 3, 511, 512, 513, 9 * 64, 4097, 100_001]
        .into_iter()
        .enumerate()
    {
        run_to_f32::<f16>(&gpu, &mk, n, i as u64);
        run_to_f32::<bf16>(&gpu, &mk, n, 50 + i as u64);
    }
    // Specials survive: ±0, ±inf, NaN, subnormals.
    let s = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-7,
        65504.0,
    ];
    let x: Vec<f16> = s.iter().map(|&v| f16::from_f32(v)).collect();
    let xd = gpu.upload(&x).unwrap();
    let mut out = gpu.alloc::<f32>(x.len()).unwrap();
    mk.to_f32(&xd, x.len(), &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    for (g, x) in got.iter().zip(&x) {
        assert_eq!(g.to_bits(), x.to_f32().to_bits());
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_gather_rows_copies_rows_and_poisons_bad_ids() {
    let Some(gpu) = gpu_or_skip("gpu_gather_rows_copies_rows_and_poisons_bad_ids") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(32);
    let strategy = (
        1usize..200,
        prop_oneof![prop::sample::select(vec![1usize, 576, 4096]), 1usize..1000],
        1usize..40,
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, dim, n, seed)| {
            let mut r = rng(seed);
            let table = uniform(&mut r, rows * dim, 3.0);
            // Mostly valid ids; ~10% out of range (the first invalid id, a bit beyond, u32::MAX).
            let ids: Vec<u32> = (0..n)
                .map(|_| match r.random_range(0..20) {
                    0 => rows as u32,
                    1 => u32::MAX,
                    _ => r.random_range(0..rows as u32),
                })
                .collect();
            let slack = r.random_range(0..4);
            let td = gpu.upload(&padded(&table, slack, 0.0)).unwrap();
            let idd = gpu.upload(&padded(&ids, slack, 0)).unwrap();
            let mut out = gpu.upload(&vec![f32::NAN; n * dim + slack]).unwrap();
            // Zero the output first: an invalid id must write NaN itself, not leave the poison.
            gpu.write(&mut out, &padded(&vec![0.0; n * dim], slack, f32::NAN))
                .unwrap();
            mk.gather_rows(&td, rows, dim, &idd, n, &mut out).unwrap();
            let got = unpadded(gpu.download(&out).unwrap(), n * dim, "gather_rows out");
            for (i, &id) in ids.iter().enumerate() {
                let g = &got[i * dim..(i + 1) * dim];
                if (id as usize) < rows {
                    // A copy: bit-identical.
                    let w = &table[id as usize * dim..(id as usize + 1) * dim];
                    assert!(
                        g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "row {i} (id {id})"
                    );
                } else {
                    assert!(
                        g.iter().all(|x| x.is_nan()),
                        "row {i}: id {id} ≥ {rows} must give NaN"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

fn run_argmax(gpu: &Gpu, mk: &ModelKernels, seed: u64, rows: usize, vocab: usize) {
    let mut r = rng(seed);
    let mut logits = uniform(&mut r, rows * vocab, 30.0);
    for row in logits.chunks_mut(vocab) {
        match r.random_range(0..5) {
            // Ties: the maximum repeated at a later and an earlier index (the first wins).
            0 if vocab > 2 => {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) + 1.0;
                let (a, b) = (r.random_range(0..vocab), r.random_range(0..vocab));
                row[a] = m;
                row[b] = m;
            }
            // A row of -inf: index 0.
            1 => row.fill(f32::NEG_INFINITY),
            // A NaN somewhere: u32::MAX.
            2 => {
                let i = r.random_range(0..vocab);
                row[i] = f32::NAN;
            }
            _ => {}
        }
    }
    let want: Vec<u32> = logits
        .chunks(vocab)
        .map(|row| sampling::argmax(row).unwrap_or(u32::MAX)) // the twin errs on NaN rows
        .collect();
    let slack = r.random_range(0..3);
    let ld = gpu.upload(&padded(&logits, slack, 0.0)).unwrap();
    let mut out = gpu.upload(&vec![POISON_ID; rows + slack]).unwrap();
    mk.argmax(&ld, rows, vocab, &mut out).unwrap();
    let got = unpadded(gpu.download(&out).unwrap(), rows, "argmax out");
    // Indices: exact.
    assert_eq!(got, want, "rows={rows} vocab={vocab}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_argmax_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_argmax_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(32);
    let strategy = (
        1usize..9,
        prop_oneof![
            prop::sample::select(vec![1usize, 2, 1000, 49_152, 128_256, 262_144]),
            1usize..70_000
        ],
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, vocab, seed)| {
            run_argmax(&gpu, &mk, seed, rows, vocab);
            Ok(())
        })
        .unwrap();
    // A batch of 64 decode rows at SmolLM2's vocabulary.
    run_argmax(&gpu, &mk, 9, 64, 49_152);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elementwise_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("elementwise_bad_input_is_a_typed_error") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let shape = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid = |r: ferrinfer::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    let overflow = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Overflow { .. }));

    // silu_and_mul: x [4, 2·8], out [4, 8].
    let x = gpu.alloc::<f32>(64).unwrap();
    let mut out = gpu.alloc::<f32>(32).unwrap();
    assert!(invalid(mk.silu_and_mul(&x, 4, 0, &mut out)));
    assert!(shape(mk.silu_and_mul(&x, 5, 8, &mut out)));
    assert!(shape(mk.silu_and_mul(
        &x,
        4,
        8,
        &mut gpu.alloc::<f32>(31).unwrap()
    )));
    assert!(overflow(mk.silu_and_mul(&x, usize::MAX, 8, &mut out)));
    mk.silu_and_mul(&x, 4, 8, &mut out).unwrap();
    mk.silu_and_mul(&x, 0, 8, &mut out).unwrap();

    // to_f32.
    let h = gpu.alloc::<f16>(10).unwrap();
    assert!(shape(mk.to_f32(&h, 11, &mut out)));
    assert!(shape(mk.to_f32(&h, 10, &mut gpu.alloc::<f32>(9).unwrap())));
    mk.to_f32(&h, 10, &mut out).unwrap();

    // gather_rows: table [8, 4], ids [3], out [3, 4].
    let table = gpu.alloc::<f32>(32).unwrap();
    let ids = gpu.alloc::<u32>(3).unwrap();
    let mut g = gpu.alloc::<f32>(12).unwrap();
    assert!(invalid(mk.gather_rows(&table, 0, 4, &ids, 3, &mut g)));
    assert!(invalid(mk.gather_rows(&table, 8, 0, &ids, 3, &mut g)));
    assert!(shape(mk.gather_rows(&table, 9, 4, &ids, 3, &mut g)));
    assert!(shape(mk.gather_rows(&table, 8, 4, &ids, 4, &mut out)));
    assert!(shape(mk.gather_rows(
        &table,
        8,
        4,
        &ids,
        3,
        &mut gpu.alloc::<f32>(11).unwrap()
    )));
    assert!(overflow(mk.gather_rows(
        &table,
        usize::MAX,
        4,
        &ids,
        3,
        &mut g
    )));
    mk.gather_rows(&table, 8, 4, &ids, 3, &mut g).unwrap();

    // argmax: logits [2, 16], out [2].
    let logits = gpu.alloc::<f32>(32).unwrap();
    let mut am = gpu.alloc::<u32>(2).unwrap();
    assert!(invalid(mk.argmax(&logits, 2, 0, &mut am)));
    assert!(shape(mk.argmax(&logits, 2, 17, &mut am)));
    assert!(shape(mk.argmax(
        &logits,
        3,
        16,
        &mut gpu.alloc::<u32>(3).unwrap()
    )));
    assert!(shape(mk.argmax(
        &logits,
        2,
        16,
        &mut gpu.alloc::<u32>(1).unwrap()
    )));
    assert!(overflow(mk.argmax(&logits, usize::MAX, 16, &mut am)));
    mk.argmax(&logits, 2, 16, &mut am).unwrap();
    gpu.synchronize().unwrap();
}

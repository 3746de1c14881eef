//! The fused QKV split + RoPE epilogue against `cpu::rope`.
use super::*;

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

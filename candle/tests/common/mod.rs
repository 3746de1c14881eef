//! Shared test helpers: seeded random tensors, an attention reference written with plain candle
//! ops (f32), and the comparison against ferrinfer's f64 oracle.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, D};
use ferrinfer::reference;
use ferrinfer::{AttentionOptions, HeadConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A tensor of `dims` with entries uniform in [-1, 1), stored as `dtype`.
pub fn random(rng: &mut StdRng, dims: &[usize], dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, dims, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .unwrap()
}

/// f16 or bf16, evenly.
pub fn random_dtype(rng: &mut StdRng) -> DType {
    if rng.random_bool(0.5) {
        DType::F16
    } else {
        DType::BF16
    }
}

/// Random options for `kv_len` keys: causal, window, soft cap and scale, each sometimes.
pub fn random_options(rng: &mut StdRng, kv_len: usize) -> AttentionOptions {
    let mut o = AttentionOptions::default().with_causal(rng.random_bool(0.6));
    if rng.random_bool(0.3) {
        o = o.with_window_left(rng.random_range(0..kv_len + 2));
    }
    if rng.random_bool(0.3) {
        o = o.with_soft_cap(rng.random_range(1.0..30.0));
    }
    if rng.random_bool(0.3) {
        o = o.with_sm_scale(rng.random_range(0.05..1.0));
    }
    o
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap()
}

/// Attention in f32 with candle ops: `softmax(mask(cap(Q·Kᵀ·scale)))·V` per query head, the KV
/// heads repeated for GQA, the mask built from the positions (`kv_len − qo_len + i`).
/// q `[qo_len, Hq, D]`, k and v `[kv_len, Hkv, D]`; returns `[qo_len, Hq, D]` in f32.
pub fn candle_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
) -> Result<Tensor> {
    let (qo_len, hq, d) = q.dims3()?;
    let (kv_len, hkv, _) = k.dims3()?;
    let group = hq / hkv;
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let heads_first = |t: &Tensor| t.transpose(0, 1)?.contiguous();
    // [Hkv, kv_len, D] → [Hq, kv_len, D]: KV head j serves query heads j·group .. (j+1)·group.
    let repeat = |t: &Tensor| {
        heads_first(&f32(t)?)?
            .unsqueeze(1)?
            .expand((hkv, group, kv_len, d))?
            .reshape((hq, kv_len, d))
    };
    let (q, k, v) = (heads_first(&f32(q)?)?, repeat(k)?, repeat(v)?);
    let scale = opts.sm_scale.unwrap_or(1.0 / (d as f32).sqrt()) as f64;
    let mut logits = (q.matmul(&k.t()?)? * scale)?;
    if let Some(c) = opts.soft_cap {
        logits = ((logits / c as f64)?.tanh()? * c as f64)?;
    }
    let mask: Vec<f32> = (0..qo_len)
        .flat_map(|i| {
            (0..kv_len).map(move |j| {
                if reference::allowed(i, j, qo_len, kv_len, opts) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (qo_len, kv_len), &Device::Cpu)?;
    let logits = logits.broadcast_add(&mask)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let p = logits.broadcast_sub(&max)?.exp()?;
    let p = p.broadcast_div(&p.sum_keepdim(D::Minus1)?)?;
    p.matmul(&v)?.transpose(0, 1)?.contiguous()
}

/// ferrinfer's f64 oracle on the same (already rounded) inputs; returns `[qo_len, Hq, D]`.
pub fn oracle(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Vec<f64> {
    let (qo_len, hq, d) = q.dims3().unwrap();
    let (kv_len, hkv, _) = k.dims3().unwrap();
    let heads = HeadConfig::new(hq, hkv, d).unwrap();
    reference::attention(
        &to_f64(q),
        &to_f64(k),
        &to_f64(v),
        &heads,
        qo_len,
        kv_len,
        opts,
    )
    .unwrap()
    .o
}

/// Asserts `out` (a ferrinfer output) matches `want` within the tolerance of `out`'s dtype.
pub fn assert_close(out: &Tensor, want: &[f64], what: &str) {
    let dtype = match out.dtype() {
        DType::F16 => ferrinfer::DType::F16,
        DType::BF16 => ferrinfer::DType::Bf16,
        d => panic!("{what}: unexpected dtype {d:?}"),
    };
    let tol = reference::tolerance(dtype);
    let got = to_f64(out);
    assert_eq!(got.len(), want.len(), "{what}: element count");
    let (rel, abs) = (
        reference::rel_l2(&got, want),
        reference::max_abs(&got, want),
    );
    assert!(
        rel <= tol.rel_l2 && abs <= tol.max_abs,
        "{what}: rel_l2 {rel:.2e} (bound {:.0e}), max_abs {abs:.2e} (bound {:.0e})",
        tol.rel_l2,
        tol.max_abs
    );
}

/// Asserts two tensors hold identical values (same function on the same data).
pub fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    assert_eq!(to_f64(a), to_f64(b), "{what}: values");
}

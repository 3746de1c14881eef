//! fp8 KV data for the tests: random real values quantised with a per-tensor scale, the codes
//! and the exact f64 images of their dequantised values (what the oracle is fed, so the bounds
//! measure the kernels, not the format), and pools appended through the public quantising
//! append.
use ferrinfer::fp8::{Fp8, Fp8Format, KvScales};
use ferrinfer::kv::{AppendMeta, BatchPages, KvLayout, KvPool, PoolSize, RowStrides, Rows};
use ferrinfer::{Float16, Gpu, HeadConfig};
use rand::Rng;

use crate::paged::{pool_config, positions};

/// Random per-tensor scales: real values in [-1, 1] divided by a scale in [1/512, 1/2] land in
/// [-512, 512], so e4m3 saturates some (past ±448) and both formats use their subnormals.
pub fn random_scales(r: &mut impl Rng) -> KvScales {
    let s = |r: &mut dyn rand::RngCore| 2f32.powf(r.random_range(-9.0f32..=-1.0));
    KvScales { k: s(r), v: s(r) }
}

/// The codes of 16-bit rows `x` quantised with `scale` (the CPU quantiser, [`Fp8::quantize`])
/// and the exact f64 images of their real values (code × scale).
pub fn quantize_rows<T: Float16, F: Fp8Format>(x: &[T], scale: f32) -> (Vec<Fp8<F>>, Vec<f64>) {
    let c: Vec<Fp8<F>> = x.iter().map(|v| Fp8::quantize(v.to_f32(), scale)).collect();
    let f = c.iter().map(|c| c.to_f32() as f64 * scale as f64).collect();
    (c, f)
}

/// A host-memory fp8 pool holding rows `k`/`v` (`[Σ lens, Hkv, D]`, 16-bit, request after
/// request) appended at `pages` through [`KvPool::append_quantized`].
#[allow(clippy::too_many_arguments)]
pub fn host_pool<T: Float16, F: Fp8Format>(
    heads: &HeadConfig,
    page_size: usize,
    layout: KvLayout,
    pages: &BatchPages,
    num_pages: usize,
    lens: &[usize],
    (k, v): (&[T], &[T]),
    scales: KvScales,
) -> KvPool<T, Fp8<F>> {
    let cfg = pool_config(heads, page_size, layout, 0);
    let mut pool = KvPool::<T, Fp8<F>>::new_cpu(cfg, PoolSize::Pages(num_pages)).unwrap();
    let (bi, pos) = positions(lens, None);
    let rs = RowStrides::contiguous(heads.num_kv_heads, heads.head_dim);
    let meta = AppendMeta {
        batch_indices: &bi,
        positions: &pos,
        pages,
    };
    pool.append_quantized(&meta, Rows::Host(k), rs, Rows::Host(v), rs, scales)
        .unwrap();
    pool
}

/// A GPU fp8 pool holding rows `k`/`v` like [`host_pool`], quantised by the device append.
#[allow(clippy::too_many_arguments)]
pub fn gpu_pool<T: Float16, F: Fp8Format>(
    gpu: &Gpu,
    heads: &HeadConfig,
    page_size: usize,
    layout: KvLayout,
    pages: &BatchPages,
    num_pages: usize,
    lens: &[usize],
    (k, v): (&[T], &[T]),
    scales: KvScales,
) -> KvPool<T, Fp8<F>> {
    let cfg = pool_config(heads, page_size, layout, 0);
    let mut pool = KvPool::<T, Fp8<F>>::new_gpu(gpu, cfg, PoolSize::Pages(num_pages)).unwrap();
    let (bi, pos) = positions(lens, None);
    if !bi.is_empty() {
        let rs = RowStrides::contiguous(heads.num_kv_heads, heads.head_dim);
        let (kd, vd) = (gpu.upload(k).unwrap(), gpu.upload(v).unwrap());
        let meta = AppendMeta {
            batch_indices: &bi,
            positions: &pos,
            pages,
        };
        pool.append_quantized(&meta, Rows::Device(&kd), rs, Rows::Device(&vd), rs, scales)
            .unwrap();
    }
    pool
}

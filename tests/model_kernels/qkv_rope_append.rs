//! RoPE fused into the KV append (`ModelKernels::qkv_rope_append`) against the two launches it
//! replaces (`qkv_rope`, then `PagedKvCache::append_layer`): two GPU caches with the same page
//! tables and history take the same step, one each way, and must hold the same bits — q, and
//! every K/V row of every sequence, old and new (a slot the fused kernel failed to write would
//! keep the pool's old contents, unlike the reference's random values). Random batches mixing
//! prompt chunks and single decode tokens, page sizes 1, 16 and odd ones, both layouts, both
//! RoPE styles, f16 and bf16, the second layer of two; then the refusals.
use super::*;
use ferrinfer::kv::{KvLayout, KvPoolConfig, PagedKvCache, PoolSize, RowStrides, Rows, SeqId};

#[derive(Clone, Debug)]
struct AppendCase {
    hq: usize,
    hk: usize,
    d: usize,
    page_size: usize,
    layout: KvLayout,
    style: RopeStyle,
    /// Per sequence: tokens already cached, then tokens this step appends.
    seqs: Vec<(usize, usize)>,
}

/// Two-layer GPU cache of `c`'s geometry holding each sequence's history (random rows, the same
/// in every cache made from `seed`).
fn cache_with_history<T: Float16>(
    gpu: &Gpu,
    c: &AppendCase,
    seed: u64,
) -> (PagedKvCache<T>, Vec<SeqId>) {
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: c.page_size,
        num_kv_heads: c.hk,
        head_dim: c.d,
        layout: c.layout,
    };
    let mut cache = PagedKvCache::<T>::new_gpu_layers(gpu, cfg, PoolSize::Pages(1024), 2).unwrap();
    let ids: Vec<SeqId> = c.seqs.iter().map(|_| cache.add_sequence()).collect();
    let reqs: Vec<(SeqId, usize)> = ids.iter().zip(&c.seqs).map(|(&id, s)| (id, s.0)).collect();
    let n: usize = reqs.iter().map(|r| r.1).sum();
    if n > 0 {
        let mut r = rng(seed);
        let row = c.hk * c.d;
        let step = cache.begin_append(&reqs).unwrap();
        let rs = RowStrides::contiguous(c.hk, c.d);
        for layer in 0..2 {
            let up = |r: &mut rand::rngs::StdRng| {
                let v: Vec<T> = uniform(r, n * row, 2.0)
                    .into_iter()
                    .map(T::from_f32)
                    .collect();
                gpu.upload(&v).unwrap()
            };
            let (k, v) = (up(&mut r), up(&mut r));
            cache
                .append_layer(layer, &step, Rows::Device(&k), rs, Rows::Device(&v), rs)
                .unwrap();
        }
    }
    (cache, ids)
}

/// Runs `c`'s step both ways; panics on the first differing bit.
fn fused_equals_two_launches<T: Float16 + Poison>(
    gpu: &Gpu,
    mk: &ModelKernels,
    c: &AppendCase,
    seed: u64,
) {
    let (mut a, ids) = cache_with_history::<T>(gpu, c, seed);
    let (mut b, _) = cache_with_history::<T>(gpu, c, seed);
    let mut r = rng(seed ^ 0x5eed);
    let n: usize = c.seqs.iter().map(|s| s.1).sum();
    let row = (c.hq + 2 * c.hk) * c.d;
    let qkv = gpu.upload(&uniform(&mut r, n * row, 2.0)).unwrap();
    let positions: Vec<i32> = c
        .seqs
        .iter()
        .flat_map(|&(old, new)| (old..old + new).map(|p| p as i32))
        .collect();
    let pos = gpu.upload(&positions).unwrap();
    let cfg = RopeConfig {
        theta: 100_000.0,
        rotary_dim: c.d,
        scaling: RopeScaling::None,
        style: c.style,
    };
    let inv_freq = gpu.upload(&cfg.inv_freq(c.d, None).unwrap()).unwrap();
    let reqs: Vec<(SeqId, usize)> = ids.iter().zip(&c.seqs).map(|(&id, s)| (id, s.1)).collect();
    let poison = |len: usize| gpu.upload(&vec![T::nan(); len]).unwrap();
    // Reference: split + RoPE into k/v buffers, then the append launch.
    let step_a = a.begin_append(&reqs).unwrap();
    let (mut qa, mut k, mut v) = (
        poison(n * c.hq * c.d),
        poison(n * c.hk * c.d),
        poison(n * c.hk * c.d),
    );
    mk.qkv_rope::<T>(
        &qkv, n, c.hq, c.hk, c.d, &pos, &inv_freq, c.style, &mut qa, &mut k, &mut v,
    )
    .unwrap();
    let rs = RowStrides::contiguous(c.hk, c.d);
    a.append_layer(1, &step_a, Rows::Device(&k), rs, Rows::Device(&v), rs)
        .unwrap();
    // Fused.
    let step_b = b.begin_append(&reqs).unwrap();
    let mut qb = poison(n * c.hq * c.d);
    let target = b.append_target(1, &step_b).unwrap();
    mk.qkv_rope_append::<T>(&qkv, n, c.hq, &pos, &inv_freq, c.style, &mut qb, target)
        .unwrap();
    let bits = |x: Vec<T>| x.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<_>>();
    let (ga, gb) = (
        bits(gpu.download(&qa).unwrap()),
        bits(gpu.download(&qb).unwrap()),
    );
    assert!(ga == gb, "{c:?}: q differs");
    assert!(
        gpu.download(&qb).unwrap().iter().all(|x| !x.is_poison()),
        "{c:?}: q not fully written"
    );
    for (i, &id) in ids.iter().enumerate() {
        for layer in 0..2 {
            let (ka, va) = a.gather(layer, id).unwrap();
            let (kb, vb) = b.gather(layer, id).unwrap();
            assert_eq!(ka.len(), (c.seqs[i].0 + c.seqs[i].1) * c.hk * c.d);
            assert!(
                bits(ka) == bits(kb),
                "{c:?}: sequence {i} layer {layer}: K differs"
            );
            assert!(
                bits(va) == bits(vb),
                "{c:?}: sequence {i} layer {layer}: V differs"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_qkv_rope_append_writes_what_rope_then_append_would() {
    let Some(gpu) = gpu_or_skip("gpu_qkv_rope_append_writes_what_rope_then_append_would") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(48);
    let strategy = (
        1usize..5,
        1usize..9,
        prop::sample::select(vec![64usize, 128, 256]),
        prop::sample::select(vec![1usize, 16, 5, 32]),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((0usize..70, prop_oneof![Just(1usize), 1usize..40]), 1..9),
        any::<bool>(),
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(
            &strategy,
            |(hk, group, d, page_size, hnd, half, seqs, bf, seed)| {
                let c = AppendCase {
                    hq: hk * group,
                    hk,
                    d,
                    page_size,
                    layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                    style: if half {
                        RopeStyle::Half
                    } else {
                        RopeStyle::Interleaved
                    },
                    seqs,
                };
                if bf {
                    fused_equals_two_launches::<bf16>(&gpu, &mk, &c, seed);
                } else {
                    fused_equals_two_launches::<f16>(&gpu, &mk, &c, seed);
                }
                Ok(())
            },
        )
        .unwrap();
    println!("qkv_rope_append: {cases} random steps, bit-identical to qkv_rope + append_layer");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_qkv_rope_append_refuses_bad_targets() {
    let Some(gpu) = gpu_or_skip("gpu_qkv_rope_append_refuses_bad_targets") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let c = AppendCase {
        hq: 4,
        hk: 2,
        d: 64,
        page_size: 16,
        layout: KvLayout::Nhd,
        style: RopeStyle::Half,
        seqs: vec![(3, 2), (0, 1)],
    };
    let (mut cache, ids) = cache_with_history::<f16>(&gpu, &c, 1);
    let qkv = gpu.upload(&vec![0.5f32; 3 * (4 + 4) * 64]).unwrap();
    let pos = gpu.upload(&[3i32, 4, 0]).unwrap();
    let inv_freq = gpu.upload(&[0.1f32; 32]).unwrap();
    let mut q = gpu.upload(&vec![f16::NAN; 3 * 4 * 64]).unwrap();
    let step = cache.begin_append(&[(ids[0], 2), (ids[1], 1)]).unwrap();
    // Two tokens against a step of three rows.
    let t = cache.append_target(1, &step).unwrap();
    let e = mk
        .qkv_rope_append::<f16>(&qkv, 2, 4, &pos, &inv_freq, RopeStyle::Half, &mut q, t)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // A layer the cache does not have.
    assert!(cache.append_target(2, &step).is_err());
    // A step made stale by the next one.
    let _next = cache.begin_append(&[(ids[1], 1)]).unwrap();
    let e = cache.append_target(1, &step).err().unwrap();
    assert!(matches!(e, Error::StaleHandle { .. }), "{e}");
    assert!(
        gpu.download(&q).unwrap().iter().all(|x| x.is_nan()),
        "a refused launch wrote q"
    );
}

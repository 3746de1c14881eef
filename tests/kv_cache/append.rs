//! GPU appends against the CPU backend (bit-exact), every kernel variant, and the reserved-
//! metadata path a model's layers share.
use super::*;

/// GPU append against the CPU backend: both layouts, page sizes {1, 16, 64}, ragged batches that
/// straddle page boundaries, strided input rows (as a fused QKV projection leaves them). The two
/// pools must be bit-identical afterwards.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_append_matches_cpu() {
    let Some(gpu) = gpu_or_skip("gpu_append_matches_cpu") else {
        return;
    };
    let mut r = rng(5);
    let mut cases = 0;
    for page_size in [1usize, 16, 64] {
        for lay in [KvLayout::Nhd, KvLayout::Hnd] {
            for d in [64usize, 128, 256] {
                let heads = 3;
                let cfg = KvPoolConfig {
                    num_pages: 0,
                    page_size,
                    num_kv_heads: heads,
                    head_dim: d,
                    layout: lay,
                };
                let pages = 4096 / page_size + 64;
                let mut gc =
                    PagedKvCache::<bf16>::new_gpu(&gpu, cfg, PoolSize::Pages(pages)).unwrap();
                let mut cc = PagedKvCache::<bf16>::new_cpu(cfg, PoolSize::Pages(pages)).unwrap();
                let ids: Vec<_> = (0..5)
                    .map(|_| (gc.add_sequence(), cc.add_sequence()))
                    .collect();
                // Fused QKV-style rows: per token [q heads | k heads | v heads], K and V views.
                let stride_n = (4 + 2 * heads) * d + 8;
                for round in 0..3 {
                    let reqs: Vec<(usize, usize)> = (0..5)
                        .map(|i| {
                            (
                                i,
                                r.random_range(0..(page_size * 2 + 3)) + (round == 0) as usize * 17,
                            )
                        })
                        .collect();
                    let total: usize = reqs.iter().map(|x| x.1).sum();
                    let fused: Vec<bf16> = (0..(total.max(1)) * stride_n)
                        .map(|_| bf16::from_f32(r.random_range(-4.0f32..4.0)))
                        .collect();
                    let s = RowStrides {
                        stride_n,
                        stride_h: d,
                    };
                    let (ko, vo) = (4 * d, (4 + heads) * d);
                    let fd = gpu.upload(&fused).unwrap();
                    let kd = gpu.upload(&fused[ko..]).unwrap();
                    let vd = gpu.upload(&fused[vo..]).unwrap();
                    drop(fd);
                    let gr: Vec<_> = reqs.iter().map(|&(i, n)| (ids[i].0, n)).collect();
                    let cr: Vec<_> = reqs.iter().map(|&(i, n)| (ids[i].1, n)).collect();
                    gc.append(&gr, Rows::Device(&kd), s, Rows::Device(&vd), s)
                        .unwrap();
                    cc.append(
                        &cr,
                        Rows::Host(&fused[ko..]),
                        s,
                        Rows::Host(&fused[vo..]),
                        s,
                    )
                    .unwrap();
                    cases += 1;
                }
                let (gk, gv) = gc.pool(0).unwrap().device_buffers().unwrap();
                let (ck, cv) = cc.pool(0).unwrap().host_buffers().unwrap();
                assert!(
                    gpu.download(gk).unwrap() == ck,
                    "K pool differs: page {page_size} {lay:?} D {d}"
                );
                assert!(
                    gpu.download(gv).unwrap() == cv,
                    "V pool differs: page {page_size} {lay:?} D {d}"
                );
                for (g, c) in &ids {
                    assert_eq!(gc.gather(0, *g).unwrap(), cc.gather(0, *c).unwrap());
                }
            }
        }
    }
    println!("gpu append vs cpu: {cases} append rounds bit-exact");
}

/// Every append kernel variant (the tuning knob's choices) writes exactly what the CPU backend
/// writes: ragged rows straddling pages, strided input, both layouts.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_append_variants_match_cpu() {
    let Some(gpu) = gpu_or_skip("gpu_append_variants_match_cpu") else {
        return;
    };
    let mut r = rng(11);
    let mut cases = 0;
    for lay in [KvLayout::Nhd, KvLayout::Hnd] {
        for (rows, streaming) in [
            (1usize, false),
            (1, true),
            (2, false),
            (4, false),
            (8, false),
            (102, false),
            (104, false),
        ] {
            let (heads, d, page) = (4usize, 128usize, 16usize);
            let cfg = KvPoolConfig {
                num_pages: 0,
                page_size: page,
                num_kv_heads: heads,
                head_dim: d,
                layout: lay,
            };
            let mut gc = PagedKvCache::<bf16>::new_gpu(&gpu, cfg, PoolSize::Pages(600)).unwrap();
            let mut cc = PagedKvCache::<bf16>::new_cpu(cfg, PoolSize::Pages(600)).unwrap();
            gc.pool_mut(0)
                .unwrap()
                .set_append_variant(rows, streaming)
                .unwrap();
            let ids: Vec<_> = (0..7)
                .map(|_| (gc.add_sequence(), cc.add_sequence()))
                .collect();
            let stride_n = heads * d + 16;
            for round in 0..3 {
                let reqs: Vec<(usize, usize)> = (0..7)
                    .map(|i| (i, r.random_range(0..300) * (round + 1) % 700))
                    .collect();
                let total: usize = reqs.iter().map(|x| x.1).sum();
                let host: Vec<bf16> = (0..total.max(1) * stride_n)
                    .map(|_| bf16::from_f32(r.random_range(-3.0f32..3.0)))
                    .collect();
                let s = RowStrides {
                    stride_n,
                    stride_h: d,
                };
                let kd = gpu.upload(&host).unwrap();
                let vd = gpu.upload(&host[8..]).unwrap();
                let gr: Vec<_> = reqs.iter().map(|&(i, n)| (ids[i].0, n)).collect();
                let cr: Vec<_> = reqs.iter().map(|&(i, n)| (ids[i].1, n)).collect();
                gc.append(&gr, Rows::Device(&kd), s, Rows::Device(&vd), s)
                    .unwrap();
                cc.append(&cr, Rows::Host(&host), s, Rows::Host(&host[8..]), s)
                    .unwrap();
                cases += 1;
            }
            let (gk, gv) = gc.pool(0).unwrap().device_buffers().unwrap();
            let (ck, cv) = cc.pool(0).unwrap().host_buffers().unwrap();
            assert!(
                gpu.download(gk).unwrap() == ck,
                "K differs: {lay:?} rows {rows} streaming {streaming}"
            );
            assert!(
                gpu.download(gv).unwrap() == cv,
                "V differs: {lay:?} rows {rows} streaming {streaming}"
            );
        }
    }
    println!("append variants vs cpu: {cases} rounds bit-exact");
}

/// Decode steps of one batch size over a reserved metadata buffer: every step uploads its
/// append metadata to the same device addresses (what a CUDA graph of the step replays), the
/// rows still land where the CPU twin puts them (bit-exact), and a step made before a
/// reallocating reservation is refused.
#[test]
#[ignore = "needs a CUDA GPU"]
fn reserved_append_meta_keeps_step_addresses() {
    let Some(gpu) = gpu_or_skip("reserved_append_meta_keeps_step_addresses") else {
        return;
    };
    let cfg = nhd16();
    let pages = 256;
    let mut gc = PagedKvCache::<bf16>::new_gpu(&gpu, cfg, PoolSize::Pages(pages)).unwrap();
    let mut cc = PagedKvCache::<bf16>::new_cpu(cfg, PoolSize::Pages(pages)).unwrap();
    let ids: Vec<_> = (0..4)
        .map(|_| (gc.add_sequence(), cc.add_sequence()))
        .collect();
    let s = RowStrides::contiguous(HEADS, D);
    let mut next = 0u32;
    // Prompts of different lengths first (not reserved for: this step may grow the buffer).
    let prompt: Vec<(usize, usize)> = vec![(0, 5), (1, 17), (2, 31), (3, 1)];
    let total: usize = prompt.iter().map(|p| p.1).sum();
    let (k, v) = (fresh_rows(&mut next, total), fresh_rows(&mut next, total));
    let (kd, vd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
    let g: Vec<_> = prompt.iter().map(|&(i, n)| (ids[i].0, n)).collect();
    let c: Vec<_> = prompt.iter().map(|&(i, n)| (ids[i].1, n)).collect();
    let stale = gc.begin_append(&g).unwrap();
    gc.append_layer(0, &stale, Rows::Device(&kd), s, Rows::Device(&vd), s)
        .unwrap();
    cc.append(&c, Rows::Host(&k), s, Rows::Host(&v), s).unwrap();
    gc.reserve_append_meta(64, 4, pages).unwrap();
    let err = gc
        .append_layer(0, &stale, Rows::Device(&kd), s, Rows::Device(&vd), s)
        .unwrap_err();
    assert!(matches!(err, Error::StaleHandle { .. }), "{err}");
    // Forty decode steps of batch 4: lengths cross page boundaries, the page count grows.
    let mut addrs = None;
    for step in 0..40 {
        let g: Vec<_> = ids.iter().map(|x| (x.0, 1)).collect();
        let c: Vec<_> = ids.iter().map(|x| (x.1, 1)).collect();
        let (k, v) = (fresh_rows(&mut next, 4), fresh_rows(&mut next, 4));
        let (kd, vd) = (gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap());
        let st = gc.begin_append(&g).unwrap();
        let a = st
            .device_addresses()
            .expect("a GPU step has device metadata");
        assert_eq!(*addrs.get_or_insert(a), a, "step {step} moved its metadata");
        gc.append_layer(0, &st, Rows::Device(&kd), s, Rows::Device(&vd), s)
            .unwrap();
        cc.append(&c, Rows::Host(&k), s, Rows::Host(&v), s).unwrap();
    }
    for (g, c) in &ids {
        assert_eq!(gc.gather(0, *g).unwrap(), cc.gather(0, *c).unwrap());
    }
    println!("reserved append metadata: 40 decode steps at one address set, bit-exact");
}

/// On a host cache the reservation is a no-op and steps have no device metadata.
#[test]
fn reserved_append_meta_on_the_cpu_is_a_no_op() {
    let cfg = nhd16();
    let mut cc = PagedKvCache::<bf16>::new_cpu(cfg, PoolSize::Pages(8)).unwrap();
    let id = cc.add_sequence();
    cc.reserve_append_meta(64, 4, 8).unwrap();
    let st = cc.begin_append(&[(id, 3)]).unwrap();
    assert_eq!(st.device_addresses(), None);
    let mut next = 0;
    let (k, v) = (fresh_rows(&mut next, 3), fresh_rows(&mut next, 3));
    let s = RowStrides::contiguous(HEADS, D);
    cc.append_layer(0, &st, Rows::Host(&k), s, Rows::Host(&v), s)
        .unwrap();
    assert_eq!(cc.len(id).unwrap(), 3);
}

//! The serving loop on one multi-layer cache: per step, reserve the new tokens once
//! (`begin_append`), append each layer's K/V, plan decode once, run it per layer — checked
//! against the f64 oracle for every layer and request, with a fork (shared prefix) in the middle.
//! CPU backend always; GPU when present.
use ferrinfer::kv::{KvLayout, KvPoolConfig, PagedKvCache, PoolSize, RowStrides, Rows, SeqId};
use ferrinfer::ops::BatchDecode;
use ferrinfer::reference::attention;
use ferrinfer::{cpu, AttentionOptions, DType, Error, Gpu, HeadConfig};
use ferrinfer_harness::{gpu_or_skip, random_values, rng, to_f64, tolerance, ErrorStats};
use half::bf16;

const LAYERS: usize = 3;

fn heads() -> HeadConfig {
    // SmolLM2-135M's attention geometry.
    HeadConfig::new(9, 3, 64).unwrap()
}

fn run_loop(gpu: Option<&Gpu>) {
    let h = heads();
    let cfg = KvPoolConfig {
        num_pages: 0,
        page_size: 16,
        num_kv_heads: 3,
        head_dim: 64,
        layout: KvLayout::Nhd,
    };
    let mut cache: PagedKvCache<bf16> = match gpu {
        Some(g) => PagedKvCache::new_gpu_layers(g, cfg, PoolSize::Pages(256), LAYERS).unwrap(),
        None => PagedKvCache::new_cpu_layers(cfg, PoolSize::Pages(256), LAYERS).unwrap(),
    };
    let decode =
        gpu.map(|g| BatchDecode::new(g, h, DType::Bf16, AttentionOptions::default()).unwrap());
    let row = h.num_kv_heads * h.head_dim;
    let mut r = rng(42);
    // Model: per layer, per sequence, f64 K and V rows.
    let mut seqs: Vec<SeqId> = (0..3).map(|_| cache.add_sequence()).collect();
    let mut model: Vec<Vec<(Vec<f64>, Vec<f64>)>> = vec![vec![(vec![], vec![]); 3]; LAYERS];
    // Step 0 prefills prompts (ragged), later steps decode one token each; a fork at step 2.
    let steps: Vec<Vec<usize>> = vec![
        vec![37, 5, 16],
        vec![1, 1, 1],
        vec![1, 1, 1, 1],
        vec![1, 1, 1, 1],
    ];
    for (si, news) in steps.iter().enumerate() {
        if si == 2 {
            let child = cache.fork(seqs[0]).unwrap();
            seqs.push(child);
            for l in model.iter_mut() {
                let parent = l[0].clone();
                l.push(parent);
            }
        }
        let reqs: Vec<(SeqId, usize)> = seqs.iter().copied().zip(news.iter().copied()).collect();
        let step = cache.begin_append(&reqs).unwrap();
        let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
        for (l, lm) in model.iter_mut().enumerate() {
            let (k, kf) = random_values::<bf16>(&mut r, step.rows() * row, 2.0);
            let (v, vf) = random_values::<bf16>(&mut r, step.rows() * row, 1.0);
            match gpu {
                Some(g) => {
                    let (kd, vd) = (g.upload(&k).unwrap(), g.upload(&v).unwrap());
                    cache
                        .append_layer(l, &step, Rows::Device(&kd), rs, Rows::Device(&vd), rs)
                        .unwrap();
                }
                None => cache
                    .append_layer(l, &step, Rows::Host(&k), rs, Rows::Host(&v), rs)
                    .unwrap(),
            }
            let mut off = 0;
            for (b, &n) in news.iter().enumerate() {
                lm[b].0.extend_from_slice(&kf[off * row..(off + n) * row]);
                lm[b].1.extend_from_slice(&vf[off * row..(off + n) * row]);
                off += n;
            }
        }
        // Decode: plan once, run per layer.
        let pages = cache.batch_pages(&seqs).unwrap();
        let plan = decode
            .as_ref()
            .map(|d| d.plan(&pages, cache.config()).unwrap());
        let nq = seqs.len() * h.num_qo_heads * h.head_dim;
        for (l, lm) in model.iter().enumerate() {
            let (q, qf) = random_values::<bf16>(&mut r, nq, 2.0);
            let (out, lse): (Vec<bf16>, Vec<f32>) = match (gpu, &decode, &plan) {
                (Some(g), Some(d), Some(p)) => {
                    let qd = g.upload(&q).unwrap();
                    let mut od = g.upload(&vec![bf16::NAN; nq]).unwrap();
                    let mut ld = g
                        .upload(&vec![f32::NAN; seqs.len() * h.num_qo_heads])
                        .unwrap();
                    d.run(p, &qd, cache.pool(l).unwrap(), &mut od, Some(&mut ld))
                        .unwrap();
                    (g.download(&od).unwrap(), g.download(&ld).unwrap())
                }
                _ => {
                    let mut out = vec![bf16::NAN; nq];
                    let mut lse = vec![f32::NAN; seqs.len() * h.num_qo_heads];
                    cpu::batch_decode(
                        &h,
                        &AttentionOptions::default(),
                        &q,
                        cache.pool(l).unwrap(),
                        &pages,
                        &mut out,
                        Some(&mut lse),
                    )
                    .unwrap();
                    (out, lse)
                }
            };
            let qr = h.num_qo_heads * h.head_dim;
            for (b, (kf, vf)) in lm.iter().enumerate() {
                let len = kf.len() / row;
                let reference = attention(
                    &qf[b * qr..(b + 1) * qr],
                    kf,
                    vf,
                    &h,
                    1,
                    len,
                    &AttentionOptions::default(),
                )
                .unwrap();
                let ls: Vec<f64> = lse[b * h.num_qo_heads..(b + 1) * h.num_qo_heads]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let s = ErrorStats::compare(
                    &to_f64(&out[b * qr..(b + 1) * qr]),
                    &reference.o,
                    Some((&ls, &reference.lse)),
                );
                assert!(
                    s.within(tolerance(DType::Bf16)),
                    "step {si} layer {l} seq {b}: {s:?}"
                );
            }
        }
    }
    // A step made before a change of the tables is refused.
    let stale = cache.begin_append(&[(seqs[1], 1)]).unwrap();
    cache.truncate(seqs[2], 1).unwrap();
    let k = vec![bf16::ONE; row];
    let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
    let e = match gpu {
        Some(g) => {
            let kd = g.upload(&k).unwrap();
            cache
                .append_layer(0, &stale, Rows::Device(&kd), rs, Rows::Device(&kd), rs)
                .unwrap_err()
        }
        None => cache
            .append_layer(0, &stale, Rows::Host(&k), rs, Rows::Host(&k), rs)
            .unwrap_err(),
    };
    assert!(matches!(e, Error::StaleHandle { .. }), "{e}");
    assert!(cache.pool(LAYERS).is_err());
}

#[test]
fn serving_loop_cpu() {
    run_loop(None);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn serving_loop_gpu() {
    let Some(gpu) = gpu_or_skip("serving_loop_gpu") else {
        return;
    };
    run_loop(Some(&gpu));
}

//! The paged cache: append then decode/prefill equals attention over the concatenated K/V,
//! across page boundaries, GQA, several sequences, forks and layers.
mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, assert_same, oracle, random, rng};
use ferrinfer::AttentionOptions;
use ferrinfer_candle::{CacheConfig, PagedKvCache};

const HQ: usize = 8;
const HKV: usize = 2;
const D: usize = 64;

fn cache(dtype: DType, page_size: usize, num_layers: usize) -> PagedKvCache {
    let cfg = CacheConfig {
        num_pages: 32,
        page_size,
        num_kv_heads: HKV,
        head_dim: D,
        num_layers,
    };
    PagedKvCache::new(cfg, dtype, &Device::Cpu).unwrap()
}

#[test]
fn append_then_decode_is_prefill_over_the_concatenation() {
    let opts = AttentionOptions::default()
        .with_causal(true)
        .with_soft_cap(20.0);
    for dtype in [DType::F16, DType::BF16] {
        let mut rng = rng(1);
        let (prompt, steps) = (7, 6);
        let n = prompt + steps;
        let q = random(&mut rng, &[n, HQ, D], dtype);
        let k = random(&mut rng, &[n, HKV, D], dtype);
        let v = random(&mut rng, &[n, HKV, D], dtype);
        // The whole sequence at once, with contiguous K/V.
        let full = ferrinfer_candle::prefill(&q, &k, &v, &opts).unwrap();

        let mut c = cache(dtype, 4, 1);
        let s = c.add_sequence();
        c.append(
            &[(s, prompt)],
            &k.narrow(0, 0, prompt).unwrap(),
            &v.narrow(0, 0, prompt).unwrap(),
        )
        .unwrap();
        let pre = c
            .prefill(0, &q.narrow(0, 0, prompt).unwrap(), &[(s, prompt)], &opts)
            .unwrap();
        assert_same(
            &pre,
            &full.narrow(0, 0, prompt).unwrap(),
            &format!("{dtype:?} prompt"),
        );
        for t in prompt..n {
            c.append(
                &[(s, 1)],
                &k.narrow(0, t, 1).unwrap(),
                &v.narrow(0, t, 1).unwrap(),
            )
            .unwrap();
            assert_eq!(c.len(s).unwrap(), t + 1);
            let dec = c
                .decode(0, &q.narrow(0, t, 1).unwrap(), &[s], &opts)
                .unwrap();
            assert_same(
                &dec,
                &full.narrow(0, t, 1).unwrap(),
                &format!("{dtype:?} step {t}"),
            );
        }
        let want = oracle(&q, &k, &v, &opts);
        assert_close(&full, &want, &format!("{dtype:?} vs oracle"));
    }
}

#[test]
fn batch_of_sequences_with_a_fork() {
    let mut rng = rng(2);
    let dtype = DType::BF16;
    let opts = AttentionOptions::default()
        .with_causal(true)
        .with_window_left(5);
    let mut c = cache(dtype, 4, 1);
    let (a, b) = (c.add_sequence(), c.add_sequence());
    let ka = random(&mut rng, &[6, HKV, D], dtype);
    let va = random(&mut rng, &[6, HKV, D], dtype);
    let kb = random(&mut rng, &[3, HKV, D], dtype);
    let vb = random(&mut rng, &[3, HKV, D], dtype);
    let cat = |x: &Tensor, y: &Tensor| Tensor::cat(&[x, y], 0).unwrap();
    c.append(&[(a, 6), (b, 3)], &cat(&ka, &kb), &cat(&va, &vb))
        .unwrap();
    // The fork shares a's pages; its next token copies the shared last page.
    let f = c.fork(a).unwrap();
    let kn = random(&mut rng, &[2, HKV, D], dtype);
    let vn = random(&mut rng, &[2, HKV, D], dtype);
    c.append(&[(f, 1), (a, 1)], &kn, &vn).unwrap();

    let q = random(&mut rng, &[2, HQ, D], dtype);
    let out = c.decode(0, &q, &[f, a], &opts).unwrap();
    for (row, (seq_k, seq_v)) in [
        (
            cat(&ka, &kn.narrow(0, 0, 1).unwrap()),
            cat(&va, &vn.narrow(0, 0, 1).unwrap()),
        ),
        (
            cat(&ka, &kn.narrow(0, 1, 1).unwrap()),
            cat(&va, &vn.narrow(0, 1, 1).unwrap()),
        ),
    ]
    .iter()
    .enumerate()
    {
        let qr = q.narrow(0, row, 1).unwrap();
        let want = ferrinfer_candle::prefill(&qr, seq_k, seq_v, &opts).unwrap();
        assert_same(
            &out.narrow(0, row, 1).unwrap(),
            &want,
            &format!("row {row}"),
        );
    }
    // Prefill of the last 2 tokens of a and all 3 of b, paged.
    c.append(
        &[(a, 1)],
        &kn.narrow(0, 0, 1).unwrap(),
        &vn.narrow(0, 0, 1).unwrap(),
    )
    .unwrap();
    let q = random(&mut rng, &[5, HQ, D], dtype);
    let out = c.prefill(0, &q, &[(a, 2), (b, 3)], &opts).unwrap();
    let a_k = cat(
        &cat(&ka, &kn.narrow(0, 1, 1).unwrap()),
        &kn.narrow(0, 0, 1).unwrap(),
    );
    let a_v = cat(
        &cat(&va, &vn.narrow(0, 1, 1).unwrap()),
        &vn.narrow(0, 0, 1).unwrap(),
    );
    let want_a = ferrinfer_candle::prefill(&q.narrow(0, 0, 2).unwrap(), &a_k, &a_v, &opts).unwrap();
    let want_b = ferrinfer_candle::prefill(&q.narrow(0, 2, 3).unwrap(), &kb, &vb, &opts).unwrap();
    assert_same(&out, &cat(&want_a, &want_b), "paged prefill");
}

#[test]
fn layers_hold_their_own_rows() {
    let mut rng = rng(4);
    let dtype = DType::F16;
    let opts = AttentionOptions::default();
    let mut c = cache(dtype, 8, 2);
    let s = c.add_sequence();
    let step = c.begin_append(&[(s, 5)]).unwrap();
    let kv: Vec<(Tensor, Tensor)> = (0..2)
        .map(|_| {
            (
                random(&mut rng, &[5, HKV, D], dtype),
                random(&mut rng, &[5, HKV, D], dtype),
            )
        })
        .collect();
    for (layer, (k, v)) in kv.iter().enumerate() {
        c.append_layer(layer, &step, k, v).unwrap();
    }
    let q = random(&mut rng, &[1, HQ, D], dtype);
    for (layer, (k, v)) in kv.iter().enumerate() {
        let got = c.decode(layer, &q, &[s], &opts).unwrap();
        let want = ferrinfer_candle::decode(&q.squeeze(0).unwrap(), k, v, &opts).unwrap();
        assert_same(&got.squeeze(0).unwrap(), &want, &format!("layer {layer}"));
    }
}

//! `decode`, `prefill` and `prefill_ragged` on random shapes against the candle-ops reference
//! and ferrinfer's f64 oracle, and the consistency of the three entry points.
mod common;

use candle_core::{DType, IndexOp, Tensor};
use common::{
    assert_close, assert_same, candle_attention, oracle, random, random_dtype, random_options, rng,
    to_f64,
};
use ferrinfer::AttentionOptions;
use rand::rngs::StdRng;
use rand::Rng;

/// One random configuration: geometry, dtype and options.
struct Case {
    dtype: DType,
    hq: usize,
    hkv: usize,
    d: usize,
    qo_len: usize,
    kv_len: usize,
    opts: AttentionOptions,
}

fn draw(rng: &mut StdRng) -> Case {
    let hkv = [1, 2, 4][rng.random_range(0..3)];
    let hq = hkv * [1, 2, 4][rng.random_range(0..3)];
    let kv_len = rng.random_range(1..48);
    let opts = random_options(rng, kv_len);
    Case {
        dtype: random_dtype(rng),
        hq,
        hkv,
        d: [8, 16, 40, 64][rng.random_range(0..4)],
        qo_len: rng.random_range(1..=kv_len),
        kv_len,
        opts,
    }
}

#[test]
fn prefill_and_decode_match_candle_and_the_oracle() {
    let mut rng = rng(18);
    for i in 0..40 {
        let c = draw(&mut rng);
        let what = format!(
            "case {i}: {:?} hq {} hkv {} d {} qo {} kv {} {:?}",
            c.dtype, c.hq, c.hkv, c.d, c.qo_len, c.kv_len, c.opts
        );
        let q = random(&mut rng, &[c.qo_len, c.hq, c.d], c.dtype);
        let k = random(&mut rng, &[c.kv_len, c.hkv, c.d], c.dtype);
        let v = random(&mut rng, &[c.kv_len, c.hkv, c.d], c.dtype);

        let out = ferrinfer_candle::prefill(&q, &k, &v, &c.opts).unwrap();
        assert_eq!(out.dims(), q.dims());
        assert_eq!(out.dtype(), c.dtype);
        let by_candle = candle_attention(&q, &k, &v, &c.opts).unwrap();
        assert_close(
            &out,
            &to_f64(&by_candle),
            &format!("{what}: prefill vs candle"),
        );
        assert_close(
            &out,
            &oracle(&q, &k, &v, &c.opts),
            &format!("{what}: prefill vs oracle"),
        );

        // Decode: the last query row alone, at position kv_len − 1.
        let q1 = q.i(c.qo_len - 1).unwrap();
        let dec = ferrinfer_candle::decode(&q1, &k, &v, &c.opts).unwrap();
        assert_eq!(dec.dims(), &[c.hq, c.d]);
        let q1 = q1.unsqueeze(0).unwrap();
        let want = oracle(&q1, &k, &v, &c.opts);
        assert_close(&dec, &want, &format!("{what}: decode vs oracle"));
    }
}

#[test]
fn prefill_of_one_token_is_decode() {
    let mut rng = rng(7);
    for i in 0..10 {
        let c = draw(&mut rng);
        let q = random(&mut rng, &[1, c.hq, c.d], c.dtype);
        let k = random(&mut rng, &[c.kv_len, c.hkv, c.d], c.dtype);
        let v = random(&mut rng, &[c.kv_len, c.hkv, c.d], c.dtype);
        let pre = ferrinfer_candle::prefill(&q, &k, &v, &c.opts).unwrap();
        let dec = ferrinfer_candle::decode(&q.squeeze(0).unwrap(), &k, &v, &c.opts).unwrap();
        assert_same(&pre.squeeze(0).unwrap(), &dec, &format!("case {i}"));
    }
}

#[test]
fn strided_inputs_are_made_contiguous() {
    let mut rng = rng(3);
    // K stored heads-first and transposed to NHD: a non-contiguous view.
    let q = random(&mut rng, &[5, 4, 16], DType::F16);
    let k_hnd = random(&mut rng, &[2, 9, 16], DType::F16);
    let v = random(&mut rng, &[9, 2, 16], DType::F16);
    let k = k_hnd.transpose(0, 1).unwrap();
    assert!(!k.is_contiguous());
    let opts = AttentionOptions::default().with_causal(true);
    let out = ferrinfer_candle::prefill(&q, &k, &v, &opts).unwrap();
    let want = ferrinfer_candle::prefill(&q, &k.contiguous().unwrap(), &v, &opts).unwrap();
    assert_same(&out, &want, "strided k");
}

#[test]
fn ragged_prefill_is_per_request_prefill() {
    let mut rng = rng(11);
    let (hq, hkv, d) = (8, 2, 32);
    let qo_lens = [3usize, 1, 6];
    let kv_lens = [5usize, 1, 6];
    let opts = AttentionOptions::default()
        .with_causal(true)
        .with_window_left(3);
    for dtype in [DType::F16, DType::BF16] {
        let q = random(&mut rng, &[10, hq, d], dtype);
        let k = random(&mut rng, &[12, hkv, d], dtype);
        let v = random(&mut rng, &[12, hkv, d], dtype);
        let out = ferrinfer_candle::prefill_ragged(&q, &k, &v, &qo_lens, &kv_lens, &opts).unwrap();
        assert_eq!(out.dims(), q.dims());
        let (mut q0, mut k0) = (0, 0);
        for (b, (&nq, &nk)) in qo_lens.iter().zip(&kv_lens).enumerate() {
            let (qb, kb, vb) = (
                q.narrow(0, q0, nq).unwrap(),
                k.narrow(0, k0, nk).unwrap(),
                v.narrow(0, k0, nk).unwrap(),
            );
            let got = out.narrow(0, q0, nq).unwrap();
            let single = ferrinfer_candle::prefill(&qb, &kb, &vb, &opts).unwrap();
            assert_same(&got, &single, &format!("{dtype:?} request {b}"));
            assert_close(
                &got,
                &oracle(&qb, &kb, &vb, &opts),
                &format!("{dtype:?} request {b}"),
            );
            (q0, k0) = (q0 + nq, k0 + nk);
        }
    }
}

#[test]
fn output_is_a_plain_tensor() {
    // The result takes part in further candle ops like any tensor.
    let mut rng = rng(5);
    let q = random(&mut rng, &[4, 16], DType::BF16);
    let k = random(&mut rng, &[6, 2, 16], DType::BF16);
    let v = random(&mut rng, &[6, 2, 16], DType::BF16);
    let out = ferrinfer_candle::decode(&q, &k, &v, &AttentionOptions::default()).unwrap();
    let doubled = (&out + &out).unwrap();
    let two = Tensor::new(2f32, out.device())
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    assert_same(&doubled, &out.broadcast_mul(&two).unwrap(), "out + out");
}

//! The CUDA forward (feature `cuda`): every op on candle CUDA tensors against ferrinfer's f64
//! oracle on the same inputs, the paged cache on CUDA against attention over the concatenated
//! K/V, the CPU path as a second check, and CUDA-specific refusals. Outputs start as NaN
//! (`cuda::output` fills them), so an element a kernel did not write fails the oracle check.
//!
//! Every test is `#[ignore = "needs a CUDA GPU"]`: the GPU bundle runs them with
//! `--include-ignored`; without a device they print a skip, or fail when
//! `FERRINFER_REQUIRE_GPU=1`.
#![cfg(feature = "cuda")]
mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, oracle, random, random_dtype, random_options, rng, to_f64};
use ferrinfer::AttentionOptions;
use ferrinfer_candle::{CacheConfig, PagedKvCache};
use rand::Rng;

/// candle's CUDA device 0, or `None` (with a visible skip) where there is none; a panic when
/// `FERRINFER_REQUIRE_GPU=1` (a GPU run never passes by skipping).
fn cuda_or_skip(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            if std::env::var("FERRINFER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: FERRINFER_REQUIRE_GPU=1 but there is no CUDA device: {e}");
            }
            eprintln!("{test}: skipped: no CUDA device ({e})");
            None
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_decode_and_prefill_match_the_oracle_and_the_cpu_path() {
    let Some(dev) = cuda_or_skip("cuda_decode_and_prefill_match_the_oracle_and_the_cpu_path")
    else {
        return;
    };
    let mut rng = rng(180);
    for i in 0..48 {
        let dtype = random_dtype(&mut rng);
        let hkv = [1, 2, 4][rng.random_range(0..3)];
        let hq = hkv * [1, 3, 4, 8][rng.random_range(0..4)];
        let d = [64, 128, 256][rng.random_range(0..3)];
        let kv_len = rng.random_range(1..700);
        let qo_len = rng.random_range(1..=kv_len.min(130));
        let opts = random_options(&mut rng, kv_len);
        let what = format!("case {i}: {dtype:?} {hq}/{hkv} D {d} qo {qo_len} kv {kv_len} {opts:?}");
        let q = random(&mut rng, &[qo_len, hq, d], dtype);
        let k = random(&mut rng, &[kv_len, hkv, d], dtype);
        let v = random(&mut rng, &[kv_len, hkv, d], dtype);
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let (qc, kc, vc) = (on(&q), on(&k), on(&v));

        let got = ferrinfer_candle::prefill(&qc, &kc, &vc, &opts).unwrap();
        assert!(got.device().is_cuda(), "{what}: output on the GPU");
        assert_eq!(got.dims(), q.dims(), "{what}: shape");
        let got = got.to_device(&Device::Cpu).unwrap();
        assert_close(&got, &oracle(&q, &k, &v, &opts), &format!("{what} prefill"));
        let cpu = ferrinfer_candle::prefill(&q, &k, &v, &opts).unwrap();
        assert_close(&got, &to_f64(&cpu), &format!("{what} prefill vs CPU"));

        // Decode: the last query row alone.
        let q1 = q.narrow(0, qo_len - 1, 1).unwrap();
        let got = ferrinfer_candle::decode(&on(&q1.squeeze(0).unwrap()), &kc, &vc, &opts)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let want = oracle(&q1, &k, &v, &opts.with_causal(false));
        assert_close(&got, &want, &format!("{what} decode"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_ragged_prefill_matches_the_oracle_per_request() {
    let Some(dev) = cuda_or_skip("cuda_ragged_prefill_matches_the_oracle_per_request") else {
        return;
    };
    let mut rng = rng(181);
    for i in 0..12 {
        let dtype = random_dtype(&mut rng);
        let (hq, hkv, d) = [(8, 2, 128), (9, 3, 64), (4, 4, 64), (16, 2, 256)][i % 4];
        let batch = rng.random_range(1..7);
        let kv_lens: Vec<usize> = (0..batch).map(|_| rng.random_range(1..300)).collect();
        let qo_lens: Vec<usize> = kv_lens
            .iter()
            .map(|&l| rng.random_range(1..=l.min(40)))
            .collect();
        let opts = random_options(&mut rng, 300);
        let what = format!("case {i}: {dtype:?} {hq}/{hkv} D {d} qo {qo_lens:?} kv {kv_lens:?}");
        let nq: usize = qo_lens.iter().sum();
        let nk: usize = kv_lens.iter().sum();
        let q = random(&mut rng, &[nq, hq, d], dtype);
        let k = random(&mut rng, &[nk, hkv, d], dtype);
        let v = random(&mut rng, &[nk, hkv, d], dtype);
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let got =
            ferrinfer_candle::prefill_ragged(&on(&q), &on(&k), &on(&v), &qo_lens, &kv_lens, &opts)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
        let (mut qo, mut kv) = (0, 0);
        for b in 0..batch {
            let (qn, kn) = (qo_lens[b], kv_lens[b]);
            let want = oracle(
                &q.narrow(0, qo, qn).unwrap(),
                &k.narrow(0, kv, kn).unwrap(),
                &v.narrow(0, kv, kn).unwrap(),
                &opts,
            );
            assert_close(
                &got.narrow(0, qo, qn).unwrap(),
                &want,
                &format!("{what} request {b}"),
            );
            (qo, kv) = (qo + qn, kv + kn);
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_paged_cache_equals_attention_over_the_concatenation() {
    let Some(dev) = cuda_or_skip("cuda_paged_cache_equals_attention_over_the_concatenation") else {
        return;
    };
    let mut rng = rng(182);
    for (dtype, page_size, (hq, hkv, d)) in [
        (DType::F16, 16, (8, 2, 128)),
        (DType::BF16, 1, (9, 3, 64)),
        (DType::BF16, 8, (4, 4, 256)),
    ] {
        let opts = AttentionOptions::default().with_causal(true);
        let cfg = CacheConfig {
            num_pages: 512,
            page_size,
            num_kv_heads: hkv,
            head_dim: d,
            num_layers: 2,
        };
        let mut c = PagedKvCache::new(cfg, dtype, &dev).unwrap();
        assert!(c.device().is_cuda());
        let seqs = [c.add_sequence(), c.add_sequence(), c.add_sequence()];
        let prompts = [37usize, 5, 90];
        // Per layer and sequence, every K/V row appended so far (CPU copies).
        let mut hist: Vec<Vec<(Vec<Tensor>, Vec<Tensor>)>> =
            vec![vec![(Vec::new(), Vec::new()); 3]; 2];
        let what = format!("{dtype:?} page {page_size} {hq}/{hkv} D {d}");
        for step in 0..6 {
            let lens: Vec<usize> = if step == 0 {
                prompts.to_vec()
            } else {
                vec![1; 3]
            };
            let reqs: Vec<_> = seqs.iter().copied().zip(lens.iter().copied()).collect();
            let rows: usize = lens.iter().sum();
            let app = c.begin_append(&reqs).unwrap();
            for (layer, per_seq) in hist.iter_mut().enumerate() {
                let k = random(&mut rng, &[rows, hkv, d], dtype);
                let v = random(&mut rng, &[rows, hkv, d], dtype);
                c.append_layer(
                    layer,
                    &app,
                    &k.to_device(&dev).unwrap(),
                    &v.to_device(&dev).unwrap(),
                )
                .unwrap();
                let mut at = 0;
                for (s, &n) in lens.iter().enumerate() {
                    per_seq[s].0.push(k.narrow(0, at, n).unwrap());
                    per_seq[s].1.push(v.narrow(0, at, n).unwrap());
                    at += n;
                }
            }
            let q = random(&mut rng, &[rows, hq, d], dtype);
            for (layer, per_seq) in hist.iter().enumerate() {
                let qd = q.to_device(&dev).unwrap();
                let got = if step == 0 {
                    c.prefill(layer, &qd, &reqs, &opts).unwrap()
                } else {
                    c.decode(layer, &qd, &seqs, &opts).unwrap()
                };
                let got = got.to_device(&Device::Cpu).unwrap();
                let mut at = 0;
                for (s, &n) in lens.iter().enumerate() {
                    let k = Tensor::cat(&per_seq[s].0, 0).unwrap();
                    let v = Tensor::cat(&per_seq[s].1, 0).unwrap();
                    let want = oracle(&q.narrow(0, at, n).unwrap(), &k, &v, &opts);
                    assert_close(
                        &got.narrow(0, at, n).unwrap(),
                        &want,
                        &format!("{what} step {step} layer {layer} seq {s}"),
                    );
                    at += n;
                }
            }
        }
        // A finished sequence frees its pages; the others still read theirs.
        c.free(seqs[1]).unwrap();
        let q = random(&mut rng, &[2, hq, d], dtype);
        let got = c
            .decode(0, &q.to_device(&dev).unwrap(), &[seqs[0], seqs[2]], &opts)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        for (row, s) in [0usize, 2].into_iter().enumerate() {
            let k = Tensor::cat(&hist[0][s].0, 0).unwrap();
            let v = Tensor::cat(&hist[0][s].1, 0).unwrap();
            let want = oracle(&q.narrow(0, row, 1).unwrap(), &k, &v, &opts);
            assert_close(
                &got.narrow(0, row, 1).unwrap(),
                &want,
                &format!("{what} after free, seq {s}"),
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_ops_follow_candle_work_on_the_same_stream() {
    let Some(dev) = cuda_or_skip("cuda_ops_follow_candle_work_on_the_same_stream") else {
        return;
    };
    // q, k, v are produced by candle kernels on the device right before the op, and the
    // output is consumed by one right after: no synchronisation in between, so a launch on
    // another stream would read unfinished inputs or race the consumer.
    let mut rng = rng(183);
    let (hq, hkv, d, n) = (8, 2, 128, 4000);
    let base = |dims: &[usize], rng: &mut rand::rngs::StdRng| {
        random(rng, dims, DType::F32).to_device(&dev).unwrap()
    };
    let (q0, k0, v0) = (
        base(&[64, hq, d], &mut rng),
        base(&[n, hkv, d], &mut rng),
        base(&[n, hkv, d], &mut rng),
    );
    let opts = AttentionOptions::default().with_causal(true);
    for round in 0..4 {
        let s = 0.5 + round as f64 * 0.25;
        let f = |t: &Tensor| (t * s).unwrap().to_dtype(DType::BF16).unwrap();
        let (q, k, v) = (f(&q0), f(&k0), f(&v0));
        let out = ferrinfer_candle::prefill(&q, &k, &v, &opts).unwrap();
        let twice = (out.to_dtype(DType::F32).unwrap() * 2.0).unwrap();
        let got = (twice / 2.0)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
        let want = oracle(&cpu(&q), &cpu(&k), &cpu(&v), &opts);
        assert_close(&got, &want, &format!("round {round}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_refusals() {
    let Some(dev) = cuda_or_skip("cuda_refusals") else {
        return;
    };
    let mut rng = rng(184);
    let dtype = DType::F16;
    let q = random(&mut rng, &[4, 8, 64], dtype);
    let k = random(&mut rng, &[9, 2, 64], dtype);
    let v = random(&mut rng, &[9, 2, 64], dtype);
    let opts = AttentionOptions::default();
    let on = |t: &Tensor| t.to_device(&dev).unwrap();
    // Mixed devices.
    let e = ferrinfer_candle::prefill(&on(&q), &k, &on(&v), &opts).unwrap_err();
    assert!(e.to_string().contains("not on q's device"), "{e}");
    // A head dim the GPU kernels do not serve (the CPU backend does): a typed error naming it.
    let q40 = random(&mut rng, &[4, 8, 40], dtype);
    let k40 = random(&mut rng, &[9, 2, 40], dtype);
    let e = ferrinfer_candle::prefill(&on(&q40), &on(&k40), &on(&k40), &opts).unwrap_err();
    assert!(e.to_string().contains("40"), "{e}");
    // A CUDA cache refuses CPU rows and CPU queries.
    let cfg = CacheConfig {
        num_pages: 8,
        page_size: 4,
        num_kv_heads: 2,
        head_dim: 64,
        num_layers: 1,
    };
    let mut c = PagedKvCache::new(cfg, dtype, &dev).unwrap();
    let s = c.add_sequence();
    let e = c.append(&[(s, 9)], &k, &v).unwrap_err();
    assert!(e.to_string().contains("cache on"), "{e}");
    assert_eq!(c.len(s).unwrap(), 0, "a refused append reserves nothing");
    c.append(&[(s, 9)], &on(&k), &on(&v)).unwrap();
    let e = c
        .decode(0, &q.narrow(0, 0, 1).unwrap(), &[s], &opts)
        .unwrap_err();
    assert!(e.to_string().contains("cache on"), "{e}");
    // Out of pages: refused, the cache unchanged and still usable.
    let e = c.append(
        &[(s, 100)],
        &on(&random(&mut rng, &[100, 2, 64], dtype)),
        &on(&random(&mut rng, &[100, 2, 64], dtype)),
    );
    assert!(e.is_err());
    assert_eq!(c.len(s).unwrap(), 9);
    let got = c
        .decode(0, &on(&q.narrow(0, 0, 1).unwrap()), &[s], &opts)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let want = oracle(&q.narrow(0, 0, 1).unwrap(), &k, &v, &opts);
    assert_close(&got, &want, "decode after a refused append");
    // The output is finite everywhere (the NaN fill was overwritten).
    assert!(to_f64(&got).iter().all(|x| x.is_finite()));
}

//! CPU backend batch prefill (ragged and paged KV) against the f64 oracle per request, the paged
//! path against the ragged one (same KV through random page permutations), and bad input.
use ferrinfer::kv::{
    AppendMeta, BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows,
};
use ferrinfer::reference::attention;
use ferrinfer::{cpu, AttentionOptions, DType, Error, HeadConfig};
use ferrinfer_harness::paged::{host_pool, shuffled_pages};
use ferrinfer_harness::{proptest_cases, random_values, rng, to_f64, tolerance, ErrorStats};
use half::bf16;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use rand::seq::SliceRandom;

#[derive(Clone, Debug)]
struct Batch {
    heads: HeadConfig,
    lens: Vec<(usize, usize)>, // (qo_len, kv_len)
    opts: AttentionOptions,
    page_size: usize,
    seed: u64,
}

fn arb_batch() -> impl Strategy<Value = Batch> {
    (
        prop::sample::select(vec![8usize, 64, 128]),
        // Groups up to 32, as the GPU prefill takes them.
        prop_oneof![3 => 1usize..=4, 1 => prop::sample::select(vec![16usize, 32])],
        1usize..=2,
        prop::collection::vec((1usize..60, 0usize..200), 1..6),
        any::<bool>(),
        prop_oneof![Just(None), (0usize..100).prop_map(Some)],
        prop::sample::select(vec![1usize, 16, 32]),
        any::<u64>(),
    )
        .prop_map(|(d, g, hkv, lens, causal, win, page_size, seed)| Batch {
            heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
            lens: lens.into_iter().map(|(q, extra)| (q, q + extra)).collect(),
            opts: AttentionOptions {
                causal,
                window_left: win,
                ..Default::default()
            },
            page_size,
            seed,
        })
}

#[test]
fn batch_prefill_ragged_and_paged_match_oracle() {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(24)))
        .run(&arb_batch(), |c| {
            let h = c.heads;
            let (qrow, kvrow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
            let mut r = rng(c.seed);
            let nq: usize = c.lens.iter().map(|l| l.0).sum();
            let nkv: usize = c.lens.iter().map(|l| l.1).sum();
            let (q, qf) = random_values::<bf16>(&mut r, nq * qrow, 2.0);
            let (k, kf) = random_values::<bf16>(&mut r, nkv * kvrow, 2.0);
            let (v, vf) = random_values::<bf16>(&mut r, nkv * kvrow, 1.0);
            let mut qo_indptr = vec![0i32];
            let mut kv_indptr = vec![0i32];
            for &(a, b) in &c.lens {
                qo_indptr.push(qo_indptr.last().unwrap() + a as i32);
                kv_indptr.push(kv_indptr.last().unwrap() + b as i32);
            }
            let mut out = vec![bf16::NAN; nq * qrow];
            let mut lse = vec![f32::NAN; nq * h.num_qo_heads];
            cpu::batch_prefill_ragged(
                &h,
                &c.opts,
                &q,
                &qo_indptr,
                &k,
                &v,
                &kv_indptr,
                &mut out,
                Some(&mut lse),
            )
            .unwrap();
            for (b, &(ql, kl)) in c.lens.iter().enumerate() {
                let (q0, k0) = (qo_indptr[b] as usize, kv_indptr[b] as usize);
                let reference = attention(
                    &qf[q0 * qrow..(q0 + ql) * qrow],
                    &kf[k0 * kvrow..(k0 + kl) * kvrow],
                    &vf[k0 * kvrow..(k0 + kl) * kvrow],
                    &h,
                    ql,
                    kl,
                    &c.opts,
                )
                .unwrap();
                let l: Vec<f64> = lse[q0 * h.num_qo_heads..(q0 + ql) * h.num_qo_heads]
                    .iter()
                    .map(|&x| x as f64)
                    .collect();
                let s = ErrorStats::compare(
                    &to_f64(&out[q0 * qrow..(q0 + ql) * qrow]),
                    &reference.o,
                    Some((&l, &reference.lse)),
                );
                prop_assert!(s.within(tolerance(DType::Bf16)), "request {b} {c:?}: {s:?}");
            }
            // The same KV in a page pool, pages in random order.
            let np: Vec<usize> = c.lens.iter().map(|l| l.1.div_ceil(c.page_size)).collect();
            let total: usize = np.iter().sum();
            let mut ids: Vec<i32> = (0..(total + 2) as i32).collect();
            ids.shuffle(&mut r);
            let mut pages = BatchPages {
                kv_indptr: vec![0],
                ..Default::default()
            };
            let mut next = 0;
            let (mut bi, mut pos) = (vec![], vec![]);
            for (b, (&n, &(_, kl))) in np.iter().zip(&c.lens).enumerate() {
                pages.kv_indices.extend_from_slice(&ids[next..next + n]);
                next += n;
                pages.kv_indptr.push(next as i32);
                pages.kv_last_page_len.push(if kl == 0 {
                    0
                } else {
                    ((kl - 1) % c.page_size + 1) as i32
                });
                for t in 0..kl {
                    bi.push(b as i32);
                    pos.push(t as i32);
                }
            }
            let cfg = KvPoolConfig {
                num_pages: 0,
                page_size: c.page_size,
                num_kv_heads: h.num_kv_heads,
                head_dim: h.head_dim.max(64),
                layout: KvLayout::Hnd,
            };
            if h.head_dim >= 64 {
                let mut pool = KvPool::<bf16>::new_cpu(cfg, PoolSize::Pages(total + 2)).unwrap();
                let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
                pool.append(
                    &AppendMeta {
                        batch_indices: &bi,
                        positions: &pos,
                        pages: &pages,
                    },
                    Rows::Host(&k),
                    rs,
                    Rows::Host(&v),
                    rs,
                )
                .unwrap();
                let mut out2 = vec![bf16::NAN; nq * qrow];
                cpu::batch_prefill_paged(
                    &h, &c.opts, &q, &qo_indptr, &pool, &pages, &mut out2, None,
                )
                .unwrap();
                prop_assert!(out2 == out, "paged and ragged prefill differ");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn batch_prefill_bad_input_is_a_typed_error() {
    let h = HeadConfig::new(4, 2, 8).unwrap();
    let opts = AttentionOptions::default().with_causal(true);
    let q = vec![bf16::ONE; 10 * 32];
    let kv = vec![bf16::ONE; 10 * 16];
    let mut out = vec![bf16::from_f32(7.0); 10 * 32];
    // A request with more queries than keys.
    let e = cpu::batch_prefill_ragged(
        &h,
        &opts,
        &q,
        &[0, 5, 9],
        &kv,
        &kv,
        &[0, 6, 8],
        &mut out,
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Non-monotone indptr, mismatched indptr lengths, rows past the buffers.
    assert!(matches!(
        cpu::batch_prefill_ragged(
            &h,
            &opts,
            &q,
            &[0, 5, 3],
            &kv,
            &kv,
            &[0, 6, 8],
            &mut out,
            None
        ),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        cpu::batch_prefill_ragged(&h, &opts, &q, &[0, 5], &kv, &kv, &[0, 6, 8], &mut out, None),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        cpu::batch_prefill_ragged(
            &h,
            &opts,
            &q,
            &[0, 5, 9],
            &kv,
            &kv,
            &[0, 6, 11],
            &mut out,
            None
        ),
        Err(Error::Shape { .. })
    ));
    assert!(out.iter().all(|x| x.to_f32() == 7.0));
}

/// A decode step (one query per request, the request's last token) through batch prefill
/// (causal) and through batch decode gives bit-identical outputs: both run the same per-query
/// kernel over the same keys, and the engine's CPU runner relies on it to send decode steps to
/// the faster decode op without changing a token.
#[test]
fn decode_step_prefill_equals_batch_decode() {
    let strategy = (
        prop::sample::select(vec![64usize, 128]),
        prop_oneof![1usize..=4, Just(16)],
        1usize..=2,
        prop::collection::vec(1usize..300, 1..8),
        prop::sample::select(vec![1usize, 16]),
        prop_oneof![Just(None), (1.0f32..30.0).prop_map(Some)],
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(16)))
        .run(&strategy, |(d, g, hkv, lens, page_size, cap, seed)| {
            let h = HeadConfig::new(hkv * g, hkv, d).unwrap();
            let (qrow, kvrow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
            let mut r = rng(seed);
            let nkv: usize = lens.iter().sum();
            let (q, _) = random_values::<bf16>(&mut r, lens.len() * qrow, 2.0);
            let (k, _) = random_values::<bf16>(&mut r, nkv * kvrow, 2.0);
            let (v, _) = random_values::<bf16>(&mut r, nkv * kvrow, 1.0);
            let (pages, num_pages) = shuffled_pages(&mut r, &lens, page_size, 0);
            let pool = host_pool(
                &h,
                page_size,
                KvLayout::Nhd,
                &pages,
                num_pages,
                &lens,
                &k,
                &v,
            );
            let opts = AttentionOptions {
                soft_cap: cap,
                ..Default::default()
            };
            let qo_indptr: Vec<i32> = (0..=lens.len() as i32).collect();
            let mut by_prefill = vec![bf16::NAN; lens.len() * qrow];
            cpu::batch_prefill_paged(
                &h,
                &opts.with_causal(true),
                &q,
                &qo_indptr,
                &pool,
                &pages,
                &mut by_prefill,
                None,
            )
            .unwrap();
            let mut by_decode = vec![bf16::NAN; lens.len() * qrow];
            cpu::batch_decode(&h, &opts, &q, &pool, &pages, &mut by_decode, None).unwrap();
            prop_assert!(
                by_prefill
                    .iter()
                    .zip(&by_decode)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "decode step: batch prefill and batch decode differ ({lens:?}, group {g}, D {d})"
            );
            Ok(())
        })
        .unwrap();
}

/// Causal prefill of one request equals, bit for bit, a decode of each of its queries over the
/// keys it sees: the prefill converts the request's keys to f32 once for all its queries, which
/// must not change a value.
#[test]
fn prefill_rows_equal_decodes_over_their_keys() {
    let strategy = (
        prop::sample::select(vec![64usize, 128]),
        prop_oneof![1usize..=4, Just(16)],
        1usize..=40,
        0usize..200,
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(16)))
        .run(&strategy, |(d, g, qo, extra, seed)| {
            let h = HeadConfig::new(2 * g, 2, d).unwrap();
            let (qrow, kvrow) = (h.num_qo_heads * d, h.num_kv_heads * d);
            let kv = qo + extra;
            let mut r = rng(seed);
            let (q, _) = random_values::<bf16>(&mut r, qo * qrow, 2.0);
            let (k, _) = random_values::<bf16>(&mut r, kv * kvrow, 2.0);
            let (v, _) = random_values::<bf16>(&mut r, kv * kvrow, 1.0);
            let causal = AttentionOptions::default().with_causal(true);
            let mut out = vec![bf16::NAN; qo * qrow];
            let (qi, ki) = ([0, qo as i32], [0, kv as i32]);
            cpu::batch_prefill_ragged(&h, &causal, &q, &qi, &k, &v, &ki, &mut out, None).unwrap();
            for t in 0..qo {
                let seen = kv - qo + t + 1;
                let mut o1 = vec![bf16::NAN; qrow];
                cpu::single_decode_contiguous(
                    &h,
                    &AttentionOptions::default(),
                    &q[t * qrow..(t + 1) * qrow],
                    &k[..seen * kvrow],
                    &v[..seen * kvrow],
                    seen,
                    &mut o1,
                    None,
                )
                .unwrap();
                let same = o1
                    .iter()
                    .zip(&out[t * qrow..(t + 1) * qrow])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                prop_assert!(same, "query {t} of {qo} over {kv} keys");
            }
            Ok(())
        })
        .unwrap();
}

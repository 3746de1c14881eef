//! Unit tests of the CPU single-request decode (`decode.rs`).
use super::*;
use crate::reference;
use half::{bf16, f16};

fn heads(hq: usize, hkv: usize, d: usize) -> HeadConfig {
    HeadConfig::new(hq, hkv, d).unwrap()
}

fn to16<T: Float16>(x: &[f32]) -> Vec<T> {
    x.iter().map(|&v| T::from_f32(v)).collect()
}

fn f32s<T: Float16>(x: &[T]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

/// Deterministic pseudo-random values in [-1, 1].
fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs the CPU op (contiguous) and the oracle on the same rounded inputs; returns
/// (max |Δo|, max |Δlse|).
fn compare<T: Float16>(
    h: &HeadConfig,
    opts: &AttentionOptions,
    kv_len: usize,
    seed: u64,
) -> (f64, f64) {
    let (hq, hkv, d) = (h.num_qo_heads, h.num_kv_heads, h.head_dim);
    let q: Vec<T> = to16(&vals(hq * d, seed));
    let k: Vec<T> = to16(&vals(kv_len * hkv * d, seed + 1));
    let v: Vec<T> = to16(&vals(kv_len * hkv * d, seed + 2));
    let mut out = vec![T::nan(); hq * d];
    let mut lse = vec![f32::NAN; hq];
    single_decode_contiguous(h, opts, &q, &k, &v, kv_len, &mut out, Some(&mut lse)).unwrap();
    let f = |x: &[T]| f32s(x).iter().map(|&v| v as f64).collect::<Vec<_>>();
    let r = reference::attention(&f(&q), &f(&k), &f(&v), h, 1, kv_len, opts).unwrap();
    let o: Vec<f64> = f(&out);
    let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    assert!(o.iter().chain(&l).all(|x| !x.is_nan()), "NaN in output");
    (reference::max_abs(&o, &r.o), reference::max_abs(&l, &r.lse))
}

/// [`compare`] in f16 and bf16 within the CPU decode's bounds: max |Δo| 4e-3 (f16) / 3e-2
/// (bf16, 8 mantissa bits in the rounded output), max |Δlse| 1e-3.
fn assert_within_oracle_bounds(h: &HeadConfig, o: &AttentionOptions, kv: usize, seed: u64) {
    let (eo, el) = compare::<f16>(h, o, kv, seed);
    assert!(eo < 4e-3 && el < 1e-3, "f16 {h:?} {o:?} kv={kv}: {eo} {el}");
    let (eo, el) = compare::<bf16>(h, o, kv, seed);
    assert!(
        eo < 3e-2 && el < 1e-3,
        "bf16 {h:?} {o:?} kv={kv}: {eo} {el}"
    );
}

#[test]
fn empty_kv_gives_zero_and_neg_inf() {
    let h = heads(4, 2, 8);
    let q = vec![f16::ONE; 32];
    let mut out = vec![f16::NAN; 32];
    let mut lse = vec![f32::NAN; 4];
    let o = AttentionOptions::default();
    single_decode_contiguous(&h, &o, &q, &[], &[], 0, &mut out, Some(&mut lse)).unwrap();
    assert!(out.iter().all(|x| x.to_bits() == 0));
    assert!(lse.iter().all(|&l| l == f32::NEG_INFINITY));
}

#[test]
fn window_zero_sees_only_the_last_key() {
    let h = heads(1, 1, 2);
    let q = to16::<f16>(&[1.0, 0.5]);
    let k = to16::<f16>(&[1.0, 1.0, -1.0, 2.0, 0.5, 0.25]);
    let v = to16::<f16>(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let mut out = vec![f16::NAN; 2];
    let mut lse = [f32::NAN];
    let o = AttentionOptions::default()
        .with_window_left(0)
        .with_sm_scale(1.0);
    single_decode_contiguous(&h, &o, &q, &k, &v, 3, &mut out, Some(&mut lse)).unwrap();
    assert_eq!(f32s(&out), vec![5.0, 6.0]);
    assert!((lse[0] - 0.625 * std::f32::consts::LOG2_E).abs() < 1e-6);
}

#[test]
fn matches_oracle_across_shapes_and_options() {
    let opts = [
        AttentionOptions::default(),
        AttentionOptions::default().with_soft_cap(7.5),
        AttentionOptions::default()
            .with_sm_scale(0.3)
            .with_window_left(5),
        AttentionOptions::default().with_window_left(10_000),
    ];
    for (i, o) in opts.iter().enumerate() {
        for &(hq, hkv, d) in &[(1, 1, 1), (3, 1, 5), (4, 2, 24), (8, 2, 64), (6, 3, 128)] {
            for &kv in &[0usize, 1, 7, 31, 32, 33, 100] {
                let h = heads(hq, hkv, d);
                let seed = (i * 1000 + kv + d) as u64;
                assert_within_oracle_bounds(&h, o, kv, seed);
            }
        }
    }
}

#[test]
fn state_output_is_the_unrounded_output() {
    let h = heads(6, 2, 24);
    let kv_len = 77;
    let q: Vec<bf16> = to16(&vals(6 * 24, 1));
    let k: Vec<bf16> = to16(&vals(kv_len * 2 * 24, 2));
    let v: Vec<bf16> = to16(&vals(kv_len * 2 * 24, 3));
    let o = AttentionOptions::default().with_soft_cap(10.0);
    let s = KvStrides::contiguous(&h);
    let mut rounded = vec![bf16::NAN; 6 * 24];
    let mut lse_a = vec![f32::NAN; 6];
    single_decode(
        &h,
        &o,
        &q,
        &k,
        s,
        &v,
        s,
        kv_len,
        &mut rounded,
        Some(&mut lse_a),
    )
    .unwrap();
    let mut state = vec![f32::NAN; 6 * 24];
    let mut lse_b = vec![f32::NAN; 6];
    single_decode_state(&h, &o, &q, &k, s, &v, s, kv_len, &mut state, &mut lse_b).unwrap();
    let state_rounded: Vec<bf16> = to16(&state);
    assert_eq!(rounded, state_rounded);
    assert_eq!(lse_a, lse_b);
    let mut short = [0.0f32; 5];
    let e = single_decode_state(&h, &o, &q, &k, s, &v, s, kv_len, &mut state, &mut short);
    assert!(matches!(
        e,
        Err(Error::Shape {
            what: "lse elements",
            ..
        })
    ));
}

#[test]
fn gqa_reads_kv_head_h_over_group() {
    // 4 query heads on 2 KV heads, one key: heads 0,1 get V head 0; heads 2,3 V head 1.
    let h = heads(4, 2, 1);
    let q = vec![f16::ONE; 4];
    let k = to16::<f16>(&[0.5, -0.5]);
    let v = to16::<f16>(&[10.0, 20.0]);
    let mut out = vec![f16::NAN; 4];
    let o = AttentionOptions::default();
    single_decode_contiguous(&h, &o, &q, &k, &v, 1, &mut out, None).unwrap();
    assert_eq!(f32s(&out), vec![10.0, 10.0, 20.0, 20.0]);
}

#[test]
fn strided_views_ignore_padding_and_extra_output() {
    // HND layout with padding filled with NaN: the op must never read it.
    let h = heads(2, 2, 3);
    let kv_len = 4;
    let s = KvStrides {
        stride_n: 4,
        stride_h: 4 * kv_len + 1,
    };
    let need = s.required_len(&h, kv_len).unwrap();
    let kc = vals(kv_len * 2 * 3, 11);
    let vc = vals(kv_len * 2 * 3, 12);
    let mut k = vec![bf16::NAN; need];
    let mut v = vec![bf16::NAN; need];
    for t in 0..kv_len {
        for hh in 0..2 {
            for e in 0..3 {
                k[t * s.stride_n + hh * s.stride_h + e] = bf16::from_f32(kc[(t * 2 + hh) * 3 + e]);
                v[t * s.stride_n + hh * s.stride_h + e] = bf16::from_f32(vc[(t * 2 + hh) * 3 + e]);
            }
        }
    }
    let q: Vec<bf16> = to16(&vals(6, 13));
    let o = AttentionOptions::default();
    let mut strided = vec![bf16::NAN; 8];
    single_decode(&h, &o, &q, &k, s, &v, s, kv_len, &mut strided, None).unwrap();
    let mut contiguous = vec![bf16::NAN; 6];
    let (kc, vc): (Vec<bf16>, Vec<bf16>) = (to16(&kc), to16(&vc));
    single_decode_contiguous(&h, &o, &q, &kc, &vc, kv_len, &mut contiguous, None).unwrap();
    assert_eq!(strided[..6], contiguous[..]);
    assert!(
        strided[6..].iter().all(|x| x.is_nan()),
        "wrote past the output rows"
    );
}

#[test]
fn huge_logits_stay_finite() {
    let h = heads(1, 1, 4);
    let q = vec![f16::from_f32(200.0); 4];
    let k = to16::<f16>(&[200.0, 200.0, 200.0, 200.0, -200.0, -200.0, -200.0, -200.0]);
    let v = to16::<f16>(&[1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]);
    let mut out = vec![f16::NAN; 4];
    let mut lse = [f32::NAN];
    let o = AttentionOptions::default();
    single_decode_contiguous(&h, &o, &q, &k, &v, 2, &mut out, Some(&mut lse)).unwrap();
    assert_eq!(f32s(&out), vec![1.0; 4]);
    assert!(lse[0].is_finite());
}

#[test]
fn bad_inputs_are_typed_errors_and_write_nothing() {
    let h = heads(4, 2, 8);
    let o = AttentionOptions::default();
    let s = KvStrides::contiguous(&h);
    let q = vec![f16::ONE; 32];
    let kv = vec![f16::ONE; 5 * 16];
    let run = |h: &HeadConfig,
               o: &AttentionOptions,
               q: &[f16],
               k: &[f16],
               v: &[f16],
               kv_len: usize,
               out_len: usize,
               lse_len: Option<usize>| {
        let mut out = vec![f16::from_f32(-3.0); out_len];
        let mut lse = lse_len.map(|n| vec![7.0f32; n]);
        let e = single_decode(h, o, q, k, s, v, s, kv_len, &mut out, lse.as_deref_mut());
        assert!(out.iter().all(|x| x.to_f32() == -3.0));
        assert!(lse.iter().flatten().all(|&x| x == 7.0));
        e.unwrap_err()
    };
    let shape = |e: Error, w: &str| matches!(e, Error::Shape { what, .. } if what == w);
    let invalid = |e: Error, w: &str| matches!(e, Error::InvalidArgument { what, .. } if what == w);
    assert!(shape(
        run(&h, &o, &q[..31], &kv, &kv, 5, 32, None),
        "q elements"
    ));
    assert!(shape(
        run(&h, &o, &q, &kv, &kv, 5, 31, None),
        "out elements"
    ));
    assert!(shape(
        run(&h, &o, &q, &kv, &kv, 5, 32, Some(3)),
        "lse elements"
    ));
    assert!(shape(
        run(&h, &o, &q, &kv[..79], &kv, 5, 32, None),
        "k elements"
    ));
    assert!(shape(
        run(&h, &o, &q, &kv, &kv[..79], 5, 32, None),
        "v elements"
    ));
    let bad_heads = HeadConfig {
        num_qo_heads: 3,
        num_kv_heads: 2,
        head_dim: 8,
    };
    assert!(invalid(
        run(&bad_heads, &o, &q, &kv, &kv, 5, 32, None),
        "heads"
    ));
    let zero_d = HeadConfig { head_dim: 0, ..h };
    assert!(invalid(
        run(&zero_d, &o, &q, &kv, &kv, 5, 32, None),
        "head_dim"
    ));
    for c in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let oc = o.with_soft_cap(c);
        assert!(invalid(run(&h, &oc, &q, &kv, &kv, 5, 32, None), "soft_cap"));
    }
    for sc in [f32::NAN, f32::INFINITY] {
        let os = o.with_sm_scale(sc);
        assert!(invalid(run(&h, &os, &q, &kv, &kv, 5, 32, None), "sm_scale"));
    }
    assert!(invalid(
        run(&h, &o, &q, &kv, &kv, i32::MAX as usize + 1, 32, None),
        "kv_len"
    ));
    let huge = HeadConfig {
        num_qo_heads: usize::MAX,
        num_kv_heads: 1,
        head_dim: 2,
    };
    // Refused where the geometry enters (a token's row beyond 2^31 − 1 elements).
    assert!(invalid(run(&huge, &o, &q, &kv, &kv, 0, 32, None), "heads"));
}

#[test]
fn stride_overflow_is_a_typed_error() {
    let h = heads(1, 1, 4);
    let s = KvStrides {
        stride_n: usize::MAX / 2,
        stride_h: 4,
    };
    let q = vec![f16::ONE; 4];
    let mut out = vec![f16::NAN; 4];
    let e = single_decode(
        &h,
        &AttentionOptions::default(),
        &q,
        &q,
        s,
        &q,
        s,
        4,
        &mut out,
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Error::Overflow { .. }));
    assert!(out.iter().all(|x| x.is_nan()));
}

/// The AVX2 build of the attention loop gives the baseline build's bits: same options, shapes
/// with head dims that are and are not multiples of the vector width, f16 and bf16.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_attention_is_bit_identical() {
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")) {
        eprintln!("skipped: this CPU has no AVX2/F16C");
        return;
    }
    fn both<T: Float16>(h: &HeadConfig, o: &AttentionOptions, kv: usize, seed: u64) {
        let (hq, hkv, d) = (h.num_qo_heads, h.num_kv_heads, h.head_dim);
        let q: Vec<T> = to16(&vals(hq * d, seed));
        let k: Vec<T> = to16(&vals(kv * hkv * d, seed + 1));
        let v: Vec<T> = to16(&vals(kv * hkv * d, seed + 2));
        let s = KvStrides::contiguous(h);
        let view = KvView::strided(&k, s, &v, s);
        let job = Job::new(h, o, &q, view, kv, hq * d, Some(hq), KvScales::ONE).unwrap();
        let g = h.group();
        for kvh in 0..hkv {
            let (mut o1, mut o2) = (vec![f32::NAN; g * d], vec![f32::NAN; g * d]);
            let (mut l1, mut l2) = (vec![f32::NAN; g], vec![f32::NAN; g]);
            let keys = (job.kv_begin, job.kv_end);
            job.group_heads::<f32, false>(kvh, keys, &mut o1, Some(&mut l1), &|x| x);
            // SAFETY: AVX2 checked at the start of the test.
            unsafe { job.group_heads_avx2(kvh, keys, &mut o2, Some(&mut l2), &|x| x) };
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(o1.iter().all(|x| x.is_finite()), "{h:?} kv={kv}");
            assert_eq!(bits(&o1), bits(&o2), "{h:?} {o:?} kv={kv}");
            assert_eq!(bits(&l1), bits(&l2), "{h:?} {o:?} kv={kv}");
        }
    }
    let opts = [
        AttentionOptions::default(),
        AttentionOptions::default().with_soft_cap(7.5),
        AttentionOptions::default().with_window_left(20),
    ];
    for (i, o) in opts.iter().enumerate() {
        for &(hq, hkv, d) in &[(9, 3, 64), (4, 2, 24), (8, 1, 128), (3, 1, 5)] {
            for &kv in &[1usize, 33, 300] {
                let h = heads(hq, hkv, d);
                let seed = (i * 1000 + kv + d) as u64;
                both::<f16>(&h, o, kv, seed);
                both::<bf16>(&h, o, kv, seed);
            }
        }
    }
}

/// Reading rows from a page pool in place gives the bits of the same rows laid out
/// contiguously: pages in a scrambled order, both layouts, page sizes 1, 5 and 16, a partial
/// last page; and bad page tables are typed errors.
#[test]
fn paged_rows_equal_contiguous_rows() {
    use crate::kv::KvLayout;
    for layout in [KvLayout::Nhd, KvLayout::Hnd] {
        for &ps in &[1usize, 5, 16] {
            for &kv_len in &[1usize, 37, 100] {
                let (hq, hkv, d) = (6, 2, 64);
                let h = heads(hq, hkv, d);
                let npages = kv_len.div_ceil(ps);
                let num_pages = npages + 3;
                let cfg = KvPoolConfig {
                    num_pages,
                    page_size: ps,
                    num_kv_heads: hkv,
                    head_dim: d,
                    layout,
                };
                // The request's pages from the back of the pool (a scrambled order).
                let table: Vec<i32> = (0..npages).map(|i| (num_pages - 1 - i) as i32).collect();
                let q: Vec<f16> = to16(&vals(hq * d, 1));
                let kc: Vec<f16> = to16(&vals(kv_len * hkv * d, 2));
                let vc: Vec<f16> = to16(&vals(kv_len * hkv * d, 3));
                let mut kp = vec![f16::NAN; cfg.pool_elems().unwrap()];
                let mut vp = kp.clone();
                for t in 0..kv_len {
                    for hh in 0..hkv {
                        let at = cfg.offset(table[t / ps] as usize, t % ps, hh);
                        let src = (t * hkv + hh) * d;
                        kp[at..at + d].copy_from_slice(&kc[src..src + d]);
                        vp[at..at + d].copy_from_slice(&vc[src..src + d]);
                    }
                }
                let opts = AttentionOptions::default().with_window_left(30);
                let run = |view: KvView<'_, f16>| {
                    let mut o = vec![f16::NAN; hq * d];
                    let mut l = vec![f32::NAN; hq];
                    single_decode_scaled(
                        &h,
                        &opts,
                        &q,
                        view,
                        kv_len,
                        KvScales::ONE,
                        Extras::NONE,
                        &mut o,
                        Some(&mut l),
                    )
                    .unwrap();
                    (o.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), l)
                };
                let s = KvStrides::contiguous(&h);
                let want = run(KvView::strided(&kc, s, &vc, s));
                fn paged<'a>(
                    kp: &'a [f16],
                    vp: &'a [f16],
                    pages: &'a [i32],
                    cfg: KvPoolConfig,
                ) -> KvView<'a, f16> {
                    KvView {
                        k: kp,
                        v: vp,
                        rows: KvRows::Paged { pages, cfg },
                    }
                }
                let got = run(paged(&kp, &vp, &table, cfg));
                assert!(want.0.iter().all(|&b| !f16::from_bits(b).is_nan()));
                assert_eq!(want.0, got.0, "{layout:?} ps={ps} kv={kv_len}");
                assert_eq!(
                    want.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    got.1.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                );
                // Bad tables: a page past the pool, too few pages.
                let mut o = vec![f16::NAN; hq * d];
                let mut bad = table.clone();
                bad[npages - 1] = num_pages as i32;
                let e = single_decode_scaled(
                    &h,
                    &opts,
                    &q,
                    paged(&kp, &vp, &bad, cfg),
                    kv_len,
                    KvScales::ONE,
                    Extras::NONE,
                    &mut o,
                    None,
                );
                assert!(matches!(e, Err(Error::PageOutOfRange { .. })), "{e:?}");
                let e = single_decode_scaled(
                    &h,
                    &opts,
                    &q,
                    paged(&kp, &vp, &table[..npages - 1], cfg),
                    kv_len,
                    KvScales::ONE,
                    Extras::NONE,
                    &mut o,
                    None,
                );
                assert!(e.is_err());
                assert!(o.iter().all(|x| x.is_nan()), "written on error");
            }
        }
    }
}

#[test]
fn long_ranges_split_into_equal_chunks() {
    assert_eq!(split_keys(0, 0), [(0, 0)]);
    assert_eq!(split_keys(5, 5 + SPLIT_KEYS), [(5, 5 + SPLIT_KEYS)]);
    for (b, e) in [
        (0usize, SPLIT_KEYS + 1),
        (7, 3000),
        (100, 100 + 4 * SPLIT_KEYS),
    ] {
        let c = split_keys(b, e);
        assert_eq!(c.len(), (e - b).div_ceil(SPLIT_KEYS));
        assert_eq!((c[0].0, c[c.len() - 1].1), (b, e));
        for w in c.windows(2) {
            assert_eq!(w[0].1, w[1].0);
        }
        let sizes: Vec<usize> = c.iter().map(|x| x.1 - x.0).collect();
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*hi <= SPLIT_KEYS && hi - lo <= 1, "{sizes:?}");
    }
}

/// Past [`SPLIT_KEYS`] keys the heads' key ranges run as separate chunks and are merged: the
/// result stays within the unsplit bounds against the oracle, and within f32 rounding of the
/// unsplit loop (run directly over the whole range).
#[test]
fn split_long_decode_matches_oracle_and_unsplit_loop() {
    let opts = [
        AttentionOptions::default(),
        AttentionOptions::default().with_soft_cap(7.5),
        AttentionOptions::default().with_window_left(1500),
    ];
    for (i, o) in opts.iter().enumerate() {
        for &(hq, hkv, d) in &[(9, 3, 64), (4, 1, 128)] {
            for &kv in &[SPLIT_KEYS + 1, 2500] {
                let h = heads(hq, hkv, d);
                let seed = (i * 1000 + kv + d) as u64;
                assert_within_oracle_bounds(&h, o, kv, seed);
                // Against the unsplit loop.
                let q: Vec<f16> = to16(&vals(hq * d, seed));
                let k: Vec<f16> = to16(&vals(kv * hkv * d, seed + 1));
                let v: Vec<f16> = to16(&vals(kv * hkv * d, seed + 2));
                let s = KvStrides::contiguous(&h);
                let view = KvView::strided(&k, s, &v, s);
                let job = Job::new(&h, o, &q, view, kv, hq * d, Some(hq), KvScales::ONE).unwrap();
                let (mut os, mut ls) = (vec![f32::NAN; hq * d], vec![f32::NAN; hq]);
                job.run(&mut os, Some(&mut ls), |x| x);
                let g = h.group();
                for kvh in 0..hkv {
                    let (mut o1, mut l1) = (vec![f32::NAN; g * d], vec![f32::NAN; g]);
                    let keys = (job.kv_begin, job.kv_end);
                    job.group_heads::<f32, false>(kvh, keys, &mut o1, Some(&mut l1), &|x| x);
                    for (a, b) in o1.iter().zip(&os[kvh * g * d..][..g * d]) {
                        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
                    }
                    for (a, b) in l1.iter().zip(&ls[kvh * g..][..g]) {
                        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "lse {a} vs {b}");
                    }
                }
            }
        }
    }
}

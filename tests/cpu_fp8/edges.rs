//! fp8 pools at their edges: power-of-two scales, typed errors for bad scales, saturation and
//! NaN on append, head dims off the kernels' set.
use super::*;

/// With power-of-two scales, code × scale is exact in f16/bf16 and the folded scales multiply
/// exactly, so the fp8 path equals the 16-bit path over the dequantised values bit for bit.
#[test]
fn power_of_two_scales_equal_the_16_bit_path() {
    let c = Case {
        head_dim: 128,
        group: 4,
        num_kv_heads: 2,
        lens: vec![40, 97],
        qo: vec![7, 3],
        page_size: 16,
        hnd: false,
        bf16: true,
        e5m2: false,
        opts: AttentionOptions {
            causal: true,
            soft_cap: Some(30.0),
            ..Default::default()
        },
        seed: 3,
    };
    let scales = KvScales {
        k: 0.125,
        v: 0.03125,
    };
    let rows: usize = c.qo.iter().sum();
    let d = data::<bf16, E4m3>(&c, rows, Some(scales));
    let h = &d.h;
    // The 16-bit pool with the dequantised values, same page tables.
    let deq = |f: &[f64]| f.iter().map(|&x| bf16::from_f64(x)).collect::<Vec<_>>();
    let (k16, v16) = (deq(&d.kf), deq(&d.vf));
    assert!(
        k16.iter().zip(&d.kf).all(|(a, &b)| a.to_f64() == b),
        "not exact"
    );
    let cfg = *d.pool.config();
    let mut p16 =
        KvPool::<bf16>::new_cpu(cfg, ferrinfer::kv::PoolSize::Pages(cfg.num_pages)).unwrap();
    let (bi, pos) = ferrinfer_harness::paged::positions(&c.lens, None);
    let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
    let meta = AppendMeta {
        batch_indices: &bi,
        positions: &pos,
        pages: &d.pages,
    };
    p16.append(&meta, Rows::Host(&k16), rs, Rows::Host(&v16), rs)
        .unwrap();

    let b = c.lens.len();
    let (mut o8, mut l8) = poisoned::<bf16>(b, h);
    let (mut o16, mut l16) = poisoned::<bf16>(b, h);
    let q = &d.q[..b * h.num_qo_heads * h.head_dim];
    let dec = AttentionOptions::default();
    batch_decode_fp8(
        h,
        &dec,
        q,
        &d.pool,
        &d.pages,
        scales,
        &mut o8,
        Some(&mut l8),
    )
    .unwrap();
    batch_decode(h, &dec, q, &p16, &d.pages, &mut o16, Some(&mut l16)).unwrap();
    assert_eq!(bits(&o8), bits(&o16));
    assert_eq!(l8[..b * h.num_qo_heads], l16[..b * h.num_qo_heads]);

    let qo_indptr = [0, 7, 10];
    let (mut o8, mut l8) = poisoned::<bf16>(rows, h);
    let (mut o16, mut l16) = poisoned::<bf16>(rows, h);
    let o = &c.opts;
    batch_prefill_paged_fp8(
        h,
        o,
        &d.q,
        &qo_indptr,
        &d.pool,
        &d.pages,
        scales,
        &mut o8,
        Some(&mut l8),
    )
    .unwrap();
    batch_prefill_paged(
        h,
        o,
        &d.q,
        &qo_indptr,
        &p16,
        &d.pages,
        &mut o16,
        Some(&mut l16),
    )
    .unwrap();
    assert_eq!(bits(&o8), bits(&o16));
    assert_eq!(l8[..rows * h.num_qo_heads], l16[..rows * h.num_qo_heads]);
}

fn bits(x: &[bf16]) -> Vec<u16> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Scales that are not finite and > 0: `InvalidArgument` naming the scale, from every fp8
/// entry point, with nothing written (outputs and the pool unchanged).
#[test]
fn bad_scales_are_typed_errors() {
    let c = Case {
        head_dim: 64,
        group: 2,
        num_kv_heads: 1,
        lens: vec![20],
        qo: vec![4],
        page_size: 16,
        hnd: false,
        bf16: false,
        e5m2: false,
        opts: AttentionOptions::default(),
        seed: 11,
    };
    let mut d = data::<f16, E4m3>(&c, 4, None);
    let h = d.h;
    let o = AttentionOptions::default();
    let bad = [0.0f32, -1.0, f32::NAN, f32::INFINITY];
    let is_scale_error =
        |e: Error, what: &str| matches!(e, Error::InvalidArgument { what: w, .. } if w == what);
    for x in bad {
        for (s, what) in [
            (KvScales { k: x, v: 1.0 }, "k_scale"),
            (KvScales { k: 1.0, v: x }, "v_scale"),
        ] {
            let (mut out, mut lse) = poisoned::<f16>(4, &h);
            let before = (
                bits16(&out),
                lse.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            );
            let e = batch_decode_fp8(&h, &o, &d.q, &d.pool, &d.pages, s, &mut out, Some(&mut lse));
            assert!(is_scale_error(e.unwrap_err(), what));
            let st = KvStrides::contiguous(&h);
            let e = single_decode_fp8(&h, &o, &d.q, &d.kc, st, &d.vc, st, 20, s, &mut out, None);
            assert!(is_scale_error(e.unwrap_err(), what));
            let e = batch_prefill_paged_fp8(
                &h,
                &o,
                &d.q,
                &[0, 4],
                &d.pool,
                &d.pages,
                s,
                &mut out,
                Some(&mut lse),
            );
            assert!(is_scale_error(e.unwrap_err(), what));
            let e = batch_prefill_ragged_fp8(
                &h,
                &o,
                &d.q,
                &[0, 4],
                &d.kc,
                &d.vc,
                &[0, 20],
                s,
                &mut out,
                None,
            );
            assert!(is_scale_error(e.unwrap_err(), what));
            let after = (
                bits16(&out),
                lse.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
            );
            assert_eq!(before, after, "output written on error");

            // The quantising append refuses them before touching the pool.
            let snapshot = d.pool.host_buffers().map(|(k, v)| (k.to_vec(), v.to_vec()));
            let rows = vec![f16::ONE; h.num_kv_heads * h.head_dim];
            let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
            let meta = AppendMeta {
                batch_indices: &[0],
                positions: &[19],
                pages: &d.pages,
            };
            let e = d
                .pool
                .append_quantized(&meta, Rows::Host(&rows), rs, Rows::Host(&rows), rs, s);
            assert!(is_scale_error(e.unwrap_err(), what));
            let now = d.pool.host_buffers().map(|(k, v)| (k.to_vec(), v.to_vec()));
            assert!(snapshot == now, "pool changed on error");
        }
    }
}

fn bits16(x: &[f16]) -> Vec<u16> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Saturation and NaN through the quantising append: a row past the format's range is stored
/// as ±max (never ±inf), a NaN as a NaN code, and attention over the saturated value equals the
/// oracle over the saturated value.
#[test]
fn append_saturates_and_keeps_nan() {
    let h = HeadConfig::new(1, 1, 64).unwrap();
    let cfg = ferrinfer_harness::paged::pool_config(&h, 4, KvLayout::Nhd, 0);
    let mut pool =
        KvPool::<f16, Fp8<E4m3>>::new_cpu(cfg, ferrinfer::kv::PoolSize::Pages(1)).unwrap();
    let pages = BatchPages {
        kv_indptr: vec![0, 1],
        kv_indices: vec![0],
        kv_last_page_len: vec![1],
    };
    let mut k = [f16::ZERO; 64];
    let head = [1000.0f32, -1000.0, 65504.0, f32::NAN, 0.25, -0.0, 1e-4, 3.0].map(f16::from_f32);
    k[..8].copy_from_slice(&head);
    let rs = RowStrides::contiguous(1, 64);
    let meta = AppendMeta {
        batch_indices: &[0],
        positions: &[0],
        pages: &pages,
    };
    let s = KvScales { k: 2.0, v: 1.0 };
    pool.append_quantized(&meta, Rows::Host(&k), rs, Rows::Host(&k), rs, s)
        .unwrap();
    let (kp, vp) = pool.host_buffers().unwrap();
    let kv: Vec<f32> = kp[..8].iter().map(|c| c.dequantize(2.0)).collect();
    assert_eq!(kv[..3], [896.0, -896.0, 896.0]);
    assert!(kv[3].is_nan());
    assert_eq!(kv[4], 0.25);
    assert_eq!(vp[0].to_f32(), 448.0);
    assert_eq!(vp[2].to_f32(), 448.0);
    assert!(vp.iter().all(|c| !c.to_f32().is_infinite()));
}

/// Head dims only the CPU backend takes (contiguous K/V, no pool): single decode and ragged
/// prefill against the oracle.
#[test]
fn odd_head_dims_contiguous() {
    let mut worst = ErrorStats::default();
    for (i, head_dim) in [1usize, 8, 40, 72, 96].into_iter().enumerate() {
        for group in [1usize, 3, 8] {
            let h = HeadConfig::new(group * 2, 2, head_dim).unwrap();
            let mut r = rng(100 + i as u64 * 10 + group as u64);
            let scales = random_scales(&mut r);
            let (len, qo) = (45usize, 6usize);
            let kvrow = 2 * head_dim;
            let (q, qf) = random_values::<bf16>(&mut r, qo * h.num_qo_heads * head_dim, 1.0);
            let (k, _) = random_values::<bf16>(&mut r, len * kvrow, 1.0);
            let (v, _) = random_values::<bf16>(&mut r, len * kvrow, 1.0);
            let (kc, kf) = quantize_rows::<bf16, E5m2>(&k, scales.k);
            let (vc, vf) = quantize_rows::<bf16, E5m2>(&v, scales.v);
            let opts = AttentionOptions {
                causal: true,
                ..Default::default()
            };
            let (mut out, mut lse) = poisoned::<bf16>(qo, &h);
            batch_prefill_ragged_fp8(
                &h,
                &opts,
                &q,
                &[0, qo as i32],
                &kc,
                &vc,
                &[0, len as i32],
                scales,
                &mut out,
                Some(&mut lse),
            )
            .unwrap();
            let s = compare(&h, &opts, &out, &lse, &qf, &kf, &vf, &[len], &[qo]).unwrap();
            worst = worst.worst(s);
            // The last query token is a decode over every key.
            let (mut o1, mut l1) = poisoned::<bf16>(1, &h);
            let qrow = h.num_qo_heads * head_dim;
            let st = KvStrides::contiguous(&h);
            let last = &q[(qo - 1) * qrow..];
            let dec = AttentionOptions::default();
            single_decode_fp8(
                &h,
                &dec,
                last,
                &kc,
                st,
                &vc,
                st,
                len,
                scales,
                &mut o1,
                Some(&mut l1),
            )
            .unwrap();
            assert_eq!(bits(&o1[..qrow]), bits(&out[(qo - 1) * qrow..qo * qrow]));
        }
    }
    eprintln!("cpu fp8 worst over odd head dims: {worst:?}");
}

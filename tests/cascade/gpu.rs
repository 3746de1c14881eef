//! The GPU cascade op: random cascades against the oracle, equality with plain batch prefill
//! and decode over the concatenated page lists, bad input.
use super::*;
use ferrinfer::ops::{BatchDecode, BatchPrefill, CascadeAttention};
use ferrinfer::Gpu;
use ferrinfer_harness::paged::gpu_pool;
use ferrinfer_harness::{gpu_or_skip, to_f64};
use half::f16;

fn pool_on<T: Float16>(gpu: &Gpu, c: &Case, d: &Data<T>) -> KvPool<T> {
    gpu_pool(
        gpu,
        &c.heads,
        c.page_size,
        c.layout,
        &d.seg_pages,
        d.num_pages,
        &d.seg_lens,
        &d.k,
        &d.v,
    )
}

/// Runs the cascade on NaN-poisoned out/lse (so an unwritten element fails the comparison);
/// returns out and lse as f64.
fn cascade_gpu<T: Float16>(gpu: &Gpu, c: &Case, d: &Data<T>) -> (Vec<f64>, Vec<f64>) {
    let pool = pool_on(gpu, c, d);
    let pages = d.level_pages();
    let levels = cascade_levels(d, &pages);
    let op = CascadeAttention::new(gpu, c.heads, T::DTYPE, c.opts).unwrap();
    let mut plan = op.plan(&levels, pool.config()).unwrap();
    let qd = gpu.upload(&d.q).unwrap();
    let mut od = gpu.upload(&vec![T::nan(); d.q.len()]).unwrap();
    let mut ld = gpu.upload(&vec![f32::NAN; d.ref_lse.len()]).unwrap();
    op.run(&mut plan, &qd, &pool, &mut od, Some(&mut ld))
        .unwrap();
    let o = to_f64(&gpu.download(&od).unwrap());
    let l = gpu
        .download(&ld)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    (o, l)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cascade_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_cascade_random_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(32);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&(arb_case(5, 400), any::<bool>()), |(c, bf)| {
            let (dt, (o, l), d_o, d_l) = if bf {
                let d = make::<bf16>(&c);
                (DType::Bf16, cascade_gpu(&gpu, &c, &d), d.ref_o, d.ref_lse)
            } else {
                let d = make::<f16>(&c);
                (DType::F16, cascade_gpu(&gpu, &c, &d), d.ref_o, d.ref_lse)
            };
            let s = ErrorStats::compare(&o, &d_o, Some((&l, &d_l)));
            s.assert_within(dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!("gpu cascade: {cases} random cases, worst {:?}", worst.get());
}

/// Each request's segments' pages concatenated into one table (the prefixes are whole pages).
fn concatenated(c: &Case, d: &Data<bf16>) -> BatchPages {
    let (levels, n) = (&d.levels, d.levels.len());
    let mut ids = Vec::new();
    let mut out = BatchPages {
        kv_indptr: vec![0],
        ..Default::default()
    };
    for (i, (g, _)) in c.requests().enumerate() {
        ids.clear();
        if c.prefix.is_some() {
            ids.push(levels[0].1[0]);
        }
        if c.middle {
            ids.push(levels[n - 2].1[g]);
        }
        ids.push(levels[n - 1].1[i]);
        let t = select(&d.seg_pages, &ids);
        out.kv_indices.extend_from_slice(&t.kv_indices);
        out.kv_indptr.push(out.kv_indices.len() as i32);
        out.kv_last_page_len
            .push(*t.kv_last_page_len.last().unwrap());
    }
    out
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cascade_equals_plain_prefill_and_decode() {
    let Some(gpu) = gpu_or_skip("gpu_cascade_equals_plain_prefill_and_decode") else {
        return;
    };
    // Page-aligned prefixes, so a request's context is its segments' page lists end to end.
    // 16 query tokens per request (prefill), then one (decode: compared with batch decode too).
    for qo in [16usize, 1] {
        let own = |i: usize| (qo, qo + 37 * i % 90);
        let c = Case {
            heads: HeadConfig::new(32, 8, 128).unwrap(),
            prefix: Some(1024),
            groups: vec![
                (256, (0..5).map(own).collect()),
                (64, (5..8).map(own).collect()),
            ],
            middle: true,
            page_size: 16,
            layout: KvLayout::Nhd,
            opts: AttentionOptions::default().with_causal(true),
            seed: 17 + qo as u64,
        };
        let d = make::<bf16>(&c);
        let (o, l) = cascade_gpu(&gpu, &c, &d);
        let s = ErrorStats::compare(&o, &d.ref_o, Some((&l, &d.ref_lse)));
        s.assert_within(DType::Bf16, &c);
        let pool = pool_on(&gpu, &c, &d);
        let full = concatenated(&c, &d);
        let qd = gpu.upload(&d.q).unwrap();
        let prefill = BatchPrefill::new(&gpu, c.heads, DType::Bf16, c.opts).unwrap();
        let plan = prefill
            .plan_paged(&d.levels.last().unwrap().0, &full, pool.config())
            .unwrap();
        let mut od = gpu.upload(&vec![bf16::NAN; d.q.len()]).unwrap();
        prefill.run_paged(&plan, &qd, &pool, &mut od, None).unwrap();
        let plain = to_f64(&gpu.download(&od).unwrap());
        let s = ErrorStats::compare(&o, &plain, None);
        println!("qo {qo}: cascade vs plain prefill {s:?}");
        assert!(!s.has_nan && s.rel_l2 < 4e-3, "{s:?}");
        if qo == 1 {
            let decode = BatchDecode::new(&gpu, c.heads, DType::Bf16, c.opts).unwrap();
            let dplan = decode.plan(&full, pool.config()).unwrap();
            let mut od = gpu.upload(&vec![bf16::NAN; d.q.len()]).unwrap();
            decode.run(&dplan, &qd, &pool, &mut od, None).unwrap();
            let s = ErrorStats::compare(&o, &to_f64(&gpu.download(&od).unwrap()), None);
            println!("cascade vs batch decode {s:?}");
            assert!(!s.has_nan && s.rel_l2 < 4e-3, "{s:?}");
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_cascade_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gpu_cascade_bad_input_is_a_typed_error") else {
        return;
    };
    let c = fixed_case();
    let d = make::<bf16>(&c);
    let pool = pool_on(&gpu, &c, &d);
    let pages = d.level_pages();
    let good = cascade_levels(&d, &pages);
    let op = CascadeAttention::new(&gpu, c.heads, DType::Bf16, c.opts).unwrap();
    // Levels that do not nest; a window.
    let crossing = [0, 4, 10];
    let mut bad = good.clone();
    bad[1].qo_indptr = &crossing;
    let e = op.plan(&bad, pool.config()).err().unwrap();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let win = c.opts.with_window_left(4);
    assert!(matches!(
        CascadeAttention::new(&gpu, c.heads, DType::Bf16, win),
        Err(Error::Unsupported { .. })
    ));
    // Buffers of the wrong size or element type, before anything is launched.
    let mut plan = op.plan(&good, pool.config()).unwrap();
    let qd = gpu.upload(&d.q).unwrap();
    let poison = vec![bf16::from_f32(7.0); d.q.len()];
    let mut short = gpu.upload(&poison[1..]).unwrap();
    let e = op.run(&mut plan, &qd, &pool, &mut short, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut lse = gpu.upload(&[0.0f32; 3]).unwrap();
    let mut od = gpu.upload(&poison).unwrap();
    let e = op
        .run(&mut plan, &qd, &pool, &mut od, Some(&mut lse))
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert!(gpu.download(&od).unwrap() == poison, "a failed run wrote");
    op.run(&mut plan, &qd, &pool, &mut od, None).unwrap();
}

//! Batch decode with RoPE: GPU and CPU against the oracle, and against RoPE-then-decode.
use super::*;

/// One query row per request (decode).
fn decode_rows(c: &Case) -> Vec<i32> {
    (0..=c.lens.len() as i32).collect()
}

fn run_gpu<T: Float16>(gpu: &Gpu, c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let h = c.heads;
    let pool = gpu_pool(
        gpu,
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let mut op = BatchDecode::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_rope(Some(c.rope)).unwrap();
    let mut plan = op.plan(&d.pages, pool.config()).unwrap();
    if let Some(o) = &c.offsets {
        op.plan_into_with_offsets(&d.pages, pool.config(), o, &mut plan)
            .unwrap();
    }
    let qd = gpu.upload(&d.q).unwrap();
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    // Poisoned outputs: an element the kernel misses stays NaN and fails the comparison.
    let mut od = gpu.upload(&vec![T::nan(); n]).unwrap();
    let mut ld = gpu
        .upload(&vec![f32::NAN; c.lens.len() * h.num_qo_heads])
        .unwrap();
    op.run(&plan, &qd, &pool, &mut od, Some(&mut ld)).unwrap();
    let (out, lse) = (gpu.download(&od).unwrap(), gpu.download(&ld).unwrap());
    compare(c, &d, &d.qf, &decode_rows(c), &[(&out, &lse)])
}

fn run_cpu<T: Float16>(c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let h = c.heads;
    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    let mut out = vec![T::nan(); n];
    let mut lse = vec![f32::NAN; c.lens.len() * h.num_qo_heads];
    cpu::batch_decode_rope(
        &h,
        &c.opts,
        &c.rope,
        c.offsets.as_deref(),
        &d.q,
        &pool,
        &d.pages,
        &mut out,
        Some(&mut lse),
    )
    .unwrap();
    compare(c, &d, &d.qf, &decode_rows(c), &[(&out, &lse)])
}

#[test]
fn cpu_rope_decode_matches_oracle() {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(16)))
        .run(&arb_case(8, 700), |(c, bf)| {
            if bf {
                run_cpu::<bf16>(&c).assert_within(DType::Bf16, &c);
            } else {
                run_cpu::<f16>(&c).assert_within(DType::F16, &c);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_rope_decode_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_rope_decode_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(64);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(48, 4000), |(c, bf)| {
            let (dt, s) = if bf {
                (DType::Bf16, run_gpu::<bf16>(&gpu, &c))
            } else {
                (DType::F16, run_gpu::<f16>(&gpu, &c))
            };
            s.assert_within(dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu rope decode: {cases} random batches, worst {:?}",
        worst.get()
    );
}

/// RoPE inside attention equals applying RoPE to q and to the cached keys first, then plain
/// decode (both sides computed by ferrinfer's CPU backend). The pre-rotated rows are rounded to
/// the 16-bit type before the plain decode reads them, which the in-attention path never does:
/// relative error of each input element up to 2⁻⁹ (bf16) / 2⁻¹² (f16), a few such roundings in
/// each logit, so the outputs agree to the 16-bit tolerance table, the bound used here.
#[test]
fn cpu_rope_equals_rope_then_decode() {
    let c = Case {
        heads: HeadConfig::new(8, 2, 128).unwrap(),
        page_size: 16,
        layout: KvLayout::Nhd,
        lens: vec![1, 37, 300, 1000],
        opts: AttentionOptions::default(),
        rope: RopeConfig {
            theta: 500_000.0,
            rotary_dim: 128,
            scaling: RopeScaling::None,
            style: RopeStyle::Half,
        },
        offsets: Some(vec![0, 5, 4096, 77_777]),
        seed: 7,
    };
    let h = c.heads;
    let d = make::<bf16>(&c);
    let inv_freq = c.rope.inv_freq(h.head_dim, None).unwrap();
    // ferrinfer's own RoPE op on the rows, then rounded to bf16 for the cache.
    let mut kr: Vec<f32> = d.k.iter().map(|x| x.to_f32()).collect();
    let mut kpos = Vec::new();
    for (b, &l) in c.lens.iter().enumerate() {
        kpos.extend((0..l).map(|t| (c.offset(b) + t as u32) as i32));
    }
    cpu::rope::apply_rope(
        &mut kr,
        h.num_kv_heads,
        h.head_dim,
        &kpos,
        &inv_freq,
        c.rope.style,
    )
    .unwrap();
    let mut qr: Vec<f32> = d.q.iter().map(|x| x.to_f32()).collect();
    let qpos: Vec<i32> = (0..c.lens.len())
        .map(|b| (c.offset(b) + c.lens[b] as u32 - 1) as i32)
        .collect();
    cpu::rope::apply_rope(
        &mut qr,
        h.num_qo_heads,
        h.head_dim,
        &qpos,
        &inv_freq,
        c.rope.style,
    )
    .unwrap();
    let to16 = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>();
    let (k16, q16) = (to16(&kr), to16(&qr));
    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &k16,
        &d.v,
    );
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    let mut plain = vec![bf16::NAN; n];
    cpu::batch_decode(&h, &c.opts, &q16, &pool, &d.pages, &mut plain, None).unwrap();

    let pool = host_pool(
        &h,
        c.page_size,
        c.layout,
        &d.pages,
        d.num_pages,
        &c.lens,
        &d.k,
        &d.v,
    );
    let mut fused = vec![bf16::NAN; n];
    let offsets = c.offsets.as_deref();
    cpu::batch_decode_rope(
        &h, &c.opts, &c.rope, offsets, &d.q, &pool, &d.pages, &mut fused, None,
    )
    .unwrap();
    let s = ErrorStats::compare(&to_f64(&fused), &to_f64(&plain), None);
    s.assert_within(DType::Bf16, &c);
    // And it is not vacuous: without the rotation the outputs differ grossly.
    let mut unrotated = vec![bf16::NAN; n];
    cpu::batch_decode(&h, &c.opts, &d.q, &pool, &d.pages, &mut unrotated, None).unwrap();
    let s = ErrorStats::compare(&to_f64(&unrotated), &to_f64(&plain), None);
    assert!(s.rel_l2 > 0.1, "rotation had no effect: {s:?}");
}

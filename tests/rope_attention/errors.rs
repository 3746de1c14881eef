//! Configurations neither backend can run: typed errors before any launch.
use super::*;

/// Configurations the kernels cannot run are typed errors at `set_rope` / `plan`, before any
/// launch; the CPU twin rejects bad offsets the same way.
#[test]
fn cpu_bad_rope_input_is_a_typed_error() {
    let h = HeadConfig::new(4, 1, 64).unwrap();
    let rope = RopeConfig {
        theta: 10_000.0,
        rotary_dim: 64,
        scaling: RopeScaling::None,
        style: RopeStyle::Half,
    };
    let lens = [5usize, 9];
    let mut r = rng(3);
    let (pages, num_pages) = shuffled_pages(&mut r, &lens, 4, 0);
    let (k, _) = random_values::<f16>(&mut r, 14 * 64, 1.0);
    let pool = host_pool(&h, 4, KvLayout::Nhd, &pages, num_pages, &lens, &k, &k);
    let q = vec![f16::ZERO; 2 * 4 * 64];
    let mut out = vec![f16::NAN; 2 * 4 * 64];
    let opts = AttentionOptions::default();
    let run = |rope: &RopeConfig, offsets: Option<&[i32]>, out: &mut [f16]| {
        cpu::batch_decode_rope(&h, &opts, rope, offsets, &q, &pool, &pages, out, None)
    };
    let e = run(&rope, Some(&[0]), &mut out).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = run(&rope, Some(&[0, -1]), &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let e = run(&rope, Some(&[0, i32::MAX - 3]), &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let odd = RopeConfig {
        rotary_dim: 63,
        ..rope
    };
    let e = run(&odd, None, &mut out).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    assert!(out.iter().all(|x| x.is_nan()), "an error wrote output");
}

/// The GPU op's typed errors: a rotary dim the lanes cannot pair, fp8 K/V, the tensor-core
/// kernel, bad offsets; nothing is launched.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_bad_rope_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("gpu_bad_rope_input_is_a_typed_error") else {
        return;
    };
    let h = HeadConfig::new(8, 2, 128).unwrap();
    let rope = RopeConfig {
        theta: 10_000.0,
        rotary_dim: 128,
        scaling: RopeScaling::None,
        style: RopeStyle::Half,
    };
    let mut op = BatchDecode::new(&gpu, h, DType::Bf16, AttentionOptions::default()).unwrap();
    let partial = RopeConfig {
        rotary_dim: 40,
        ..rope
    };
    let e = op.set_rope(Some(partial)).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // Interleaved pairs are lane-local: any even rotary dim works.
    op.set_rope(Some(RopeConfig {
        style: RopeStyle::Interleaved,
        ..partial
    }))
    .unwrap();
    op.set_rope(Some(rope)).unwrap();
    assert_eq!(op.kernel_kind(), DecodeKernel::CudaCore);
    let e = op.set_kernel(DecodeKernel::TensorCore).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = op.set_kv_dtype(KvDtype::E4m3).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(op.kernel_name().starts_with("decode_rope_bf16_d128"));
    let lens = [3usize, 20];
    let mut r = rng(5);
    let (pages, num_pages) = shuffled_pages(&mut r, &lens, 16, 1);
    let (k, _) = random_values::<bf16>(&mut r, 23 * 2 * 128, 1.0);
    let pool = gpu_pool(
        &gpu,
        &h,
        16,
        KvLayout::Nhd,
        &pages,
        num_pages,
        &lens,
        &k,
        &k,
    );
    let mut plan = op.plan(&pages, pool.config()).unwrap();
    let e = op
        .plan_into_with_offsets(&pages, pool.config(), &[1], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = op
        .plan_into_with_offsets(&pages, pool.config(), &[1, -2], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    // Switching RoPE off restores the plain kernel.
    op.set_rope(None).unwrap();
    assert!(op.kernel_name().starts_with("decode_bf16_d128"));

    // Prefill: the same rotary-dim rule, offsets checked at plan time, no custom mask.
    let mut pf = BatchPrefill::new(&gpu, h, DType::Bf16, AttentionOptions::default()).unwrap();
    let e = pf.set_rope(Some(partial)).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    pf.set_rope(Some(rope)).unwrap();
    let (qo, kv) = ([0, 1, 3], [0, 3, 23]);
    let mut plan = pf.plan_ragged(&qo, &kv).unwrap();
    let e = pf
        .plan_ragged_into_with_offsets(&qo, &kv, &[0], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = pf
        .plan_ragged_into_with_offsets(&qo, &kv, &[0, -5], &mut plan)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let mask = ferrinfer::mask::segment_packbits(&[true; 3 + 40], &[0, 3, 43]).unwrap();
    let e = pf
        .plan_ragged_masked(&qo, &kv, &mask)
        .err()
        .expect("mask with RoPE");
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}

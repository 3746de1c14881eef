//! Query groups 9–16: the tensor-core decode takes them, the CUDA-core kernel refuses them.
use super::*;

/// A random case with its group replaced by one of 9–16 (head dims 64 and 128, where the
/// tensor-core decode takes them).
fn large_group(mut c: Case) -> Case {
    let g = 9 + (c.seed % 8) as usize;
    let d = if c.heads.head_dim == 64 { 64 } else { 128 };
    let hkv = c.heads.num_kv_heads;
    c.heads = HeadConfig::new(hkv * g, hkv, d).unwrap();
    c
}

#[test]
fn cpu_batch_decode_large_groups_match_oracle() {
    cpu_cases(8, 8, 1200, large_group);
}

/// Groups 9–16 run on the tensor-core decode (the default there), planned freely and with a
/// 64-key split forcing the fused split merge, whose weights then fill 16 heads' worth of
/// shared memory; the CUDA-core kernel, and head dim 256, refuse them with a typed error.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_batch_decode_large_groups() {
    let Some(gpu) = gpu_or_skip("gpu_batch_decode_large_groups") else {
        return;
    };
    let h = HeadConfig::new(32, 2, 128).unwrap();
    let mut op = BatchDecode::new(&gpu, h, DType::F16, AttentionOptions::default()).unwrap();
    assert_eq!(op.kernel_kind(), DecodeKernel::TensorCore);
    assert!(matches!(
        op.set_kernel(DecodeKernel::CudaCore),
        Err(Error::Unsupported { .. })
    ));
    // Group 12 at head dim 256 (no tensor-core kernel there) and group 17 (above 16).
    for bad in [(24, 2, 256), (17, 1, 64)] {
        let h = HeadConfig::new(bad.0, bad.1, bad.2).unwrap();
        assert!(matches!(
            BatchDecode::new(&gpu, h, DType::F16, AttentionOptions::default()),
            Err(Error::Unsupported { .. })
        ));
    }
    let cases = proptest_cases(24);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(24, 5000), |(c, bf)| {
            let c = large_group(c);
            for split in [None, Some(64)] {
                let (dt, s) = if bf {
                    (DType::Bf16, run_gpu_split::<bf16>(&gpu, &c, None, split))
                } else {
                    (DType::F16, run_gpu_split::<f16>(&gpu, &c, None, split))
                };
                check(s, dt, &c);
                worst.set(worst.get().worst(s));
            }
            Ok(())
        })
        .unwrap();
    println!(
        "decode, groups 9-16: {cases} random batches, free and 64-key split, worst {:?}",
        worst.get()
    );
}

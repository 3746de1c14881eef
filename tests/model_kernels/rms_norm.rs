//! RMSNorm and residual-add + RMSNorm against `cpu::norm`.
use super::*;

fn run_norm<O: Out>(
    gpu: &Gpu,
    mk: &ModelKernels,
    seed: u64,
    rows: usize,
    dim: usize,
    add: bool,
) -> ErrorStats {
    let mut r = rng(seed);
    let eps = [1e-5f32, 1e-6, 1e-3][r.random_range(0..3)];
    let slack = r.random_range(0..5);
    let n = rows * dim;
    let x = uniform(&mut r, n, 2.0);
    let w = uniform(&mut r, dim, 1.5);
    let res0 = uniform(&mut r, n, 2.0);
    let mut want = vec![0.0f32; n];
    let mut res_want = res0.clone();
    if add {
        norm::add_rms_norm(&mut res_want, &x, &w, eps, &mut want).unwrap();
    } else {
        norm::rms_norm(&x, &w, eps, &mut want).unwrap();
    }
    let xd = gpu.upload(&padded(&x, slack, 0.0)).unwrap();
    let wd = gpu.upload(&w).unwrap();
    let mut out = gpu
        .upload(&padded(&vec![O::nan(); n], slack, O::nan()))
        .unwrap();
    let mut res = gpu.upload(&padded(&res0, slack, f32::NAN)).unwrap();
    if add {
        mk.add_rms_norm(&mut res, &xd, &wd, rows, eps, &mut out)
            .unwrap();
        // One f32 addition on both sides: bit-identical.
        let got = unpadded(gpu.download(&res).unwrap(), n, "residual");
        assert!(
            got.iter()
                .zip(&res_want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "residual differs from the CPU twin's residual + x"
        );
    } else {
        mk.rms_norm(&xd, &wd, rows, eps, &mut out).unwrap();
    }
    let got: Vec<f32> = unpadded(gpu.download(&out).unwrap(), n, "rms_norm out")
        .into_iter()
        .map(O::widen)
        .collect();
    // Both sides compute v · r · w with one shared r per row; they differ only in r. The GPU
    // sums the squares in f32 along chains of at most dim/256 + 13 terms (strided per thread,
    // then two 5-level shuffle trees and an 8-term sum): relative error ≤ 40·2⁻²⁴ ≈ 2.4·10⁻⁶ at
    // dim 8192, halved by the inverse square root, plus ~5 roundings (the CPU's r is f64
    // rounded once). 10⁻⁵ relative is ≥ 5× that; then the rounding to O (`out_bound`).
    check("rms_norm", &got, &want, out_bound::<O>(1e-5))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_rms_norm_matches_cpu_twin() {
    let Some(gpu) = gpu_or_skip("gpu_rms_norm_matches_cpu_twin") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    let strategy = (
        1usize..24,
        prop_oneof![
            prop::sample::select(vec![1usize, 7, 64, 576, 1000, 2048, 4096, 8192]),
            1usize..3000
        ],
        any::<bool>(),
        0usize..3,
        any::<u64>(),
    );
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&strategy, |(rows, dim, add, out, seed)| {
            let s = with_out!(out, run_norm(&gpu, &mk, seed, rows, dim, add));
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    // The model shapes explicitly: one token and a prefill chunk at SmolLM2's and Llama's dims.
    for (i, &(rows, dim)) in [(1, 576), (37, 576), (1, 4096), (5, 8192), (300, 576)]
        .iter()
        .enumerate()
    {
        for add in [false, true] {
            for out in 0..3 {
                let s = with_out!(out, run_norm(&gpu, &mk, 100 + i as u64, rows, dim, add));
                worst.set(worst.get().worst(s));
            }
        }
    }
    println!(
        "gpu rms_norm: {cases} random cases + model shapes, worst {:?}",
        worst.get()
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rms_norm_bad_input_is_a_typed_error() {
    let Some(gpu) = gpu_or_skip("rms_norm_bad_input_is_a_typed_error") else {
        return;
    };
    let mk = ModelKernels::new(&gpu).unwrap();
    let (rows, dim) = (3, 64);
    let x = gpu.alloc::<f32>(rows * dim).unwrap();
    let w = gpu.alloc::<f32>(dim).unwrap();
    let mut out = gpu.alloc::<f32>(rows * dim).unwrap();
    let mut res = gpu.alloc::<f32>(rows * dim).unwrap();
    let short = gpu.alloc::<f32>(rows * dim - 1).unwrap();
    let mut short_out = gpu.alloc::<f32>(rows * dim - 1).unwrap();
    let shape = |r: ferrinfer::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid = |r: ferrinfer::Result<()>| matches!(r, Err(Error::InvalidArgument { .. }));
    assert!(shape(mk.rms_norm(&short, &w, rows, 1e-5, &mut out)));
    assert!(shape(mk.rms_norm(&x, &w, rows, 1e-5, &mut short_out)));
    for eps in [0.0, -1e-5, f32::NAN, f32::INFINITY] {
        assert!(
            invalid(mk.rms_norm(&x, &w, rows, eps, &mut out)),
            "eps {eps}"
        );
        assert!(
            invalid(mk.add_rms_norm(&mut res, &x, &w, rows, eps, &mut out)),
            "eps {eps}"
        );
    }
    assert!(matches!(
        mk.rms_norm(&x, &w, usize::MAX / 2, 1e-5, &mut out),
        Err(Error::Overflow { .. })
    ));
    let mut short_res = gpu.alloc::<f32>(rows * dim - 1).unwrap();
    assert!(shape(mk.add_rms_norm(
        &mut short_res,
        &x,
        &w,
        rows,
        1e-5,
        &mut out
    )));
    assert!(shape(
        mk.add_rms_norm(&mut res, &short, &w, rows, 1e-5, &mut out)
    ));
    assert!(shape(mk.add_rms_norm(
        &mut res,
        &x,
        &w,
        rows,
        1e-5,
        &mut short_out
    )));
    // A weight longer than the rows' dim means rows of that length: x is then too short.
    let w_long = gpu.alloc::<f32>(dim + 1).unwrap();
    assert!(shape(mk.rms_norm(&x, &w_long, rows, 1e-5, &mut out)));
    // 16-bit outputs are checked alike.
    let mut short16 = gpu.alloc::<bf16>(rows * dim - 1).unwrap();
    assert!(shape(mk.rms_norm(&x, &w, rows, 1e-5, &mut short16)));
    assert!(shape(mk.add_rms_norm(
        &mut res,
        &x,
        &w,
        rows,
        1e-5,
        &mut short16
    )));
    // Valid calls, and zero rows is a no-op.
    mk.rms_norm(&x, &w, rows, 1e-5, &mut out).unwrap();
    mk.add_rms_norm(&mut res, &x, &w, 0, 1e-5, &mut out)
        .unwrap();
    gpu.synchronize().unwrap();
}

//! Batch decode on the paged KV cache: GPU and CPU backend against the f64 oracle, over random
//! batches (sizes 1–64, lengths 1–5000 including 1 and page-size multiples ±1, random page
//! permutations, groups, head dims, dtypes, layouts, options), empty requests, very long
//! contexts, CUDA-graph-mode plan reuse, and bad input.
use ferrinfer::kv::{
    AppendMeta, BatchPages, KvLayout, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows,
};
use ferrinfer::ops::{BatchDecode, DecodeKernel, GraphLimits};
use ferrinfer::reference::attention;
use ferrinfer::{cpu, AttentionOptions, DType, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::paged::{gpu_pool, per_request, pool_config, positions, shuffled_pages};
use ferrinfer_harness::{gpu_or_skip, proptest_cases, random_values, rng, to_f64, ErrorStats};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[derive(Clone, Debug)]
struct Case {
    heads: HeadConfig,
    page_size: usize,
    layout: KvLayout,
    lens: Vec<usize>,
    opts: AttentionOptions,
    seed: u64,
}

/// Host data of a case: per-request K/V rows (f64 images), q, page tables, rows for the append.
struct Data<T> {
    pages: BatchPages,
    num_pages: usize,
    q: Vec<T>,
    qf: Vec<f64>,
    rows_k: Vec<T>,
    rows_v: Vec<T>,
    batch_indices: Vec<i32>,
    positions: Vec<i32>,
    kf: Vec<Vec<f64>>,
    vf: Vec<Vec<f64>>,
}

fn make<T: Float16>(c: &Case) -> Data<T> {
    let h = c.heads;
    let mut r = rng(c.seed);
    let (pages, num_pages) = shuffled_pages(&mut r, &c.lens, c.page_size, 3);
    let row = h.num_kv_heads * h.head_dim;
    let n_rows: usize = c.lens.iter().sum();
    let (rows_k, kall) = random_values::<T>(&mut r, n_rows * row, 2.0);
    let (rows_v, vall) = random_values::<T>(&mut r, n_rows * row, 1.0);
    let (q, qf) = random_values::<T>(&mut r, c.lens.len() * h.num_qo_heads * h.head_dim, 2.0);
    let (batch_indices, positions) = positions(&c.lens, None);
    Data {
        pages,
        num_pages,
        q,
        qf,
        rows_k,
        rows_v,
        batch_indices,
        positions,
        kf: per_request(&kall, &c.lens, row),
        vf: per_request(&vall, &c.lens, row),
    }
}

fn pool_cfg(c: &Case) -> KvPoolConfig {
    pool_config(&c.heads, c.page_size, c.layout, 0)
}

fn compare<T: Float16>(c: &Case, d: &Data<T>, out: &[T], lse: &[f32]) -> ErrorStats {
    let h = c.heads;
    let row = h.num_qo_heads * h.head_dim;
    let mut worst = ErrorStats {
        lse_ok: true,
        ..Default::default()
    };
    for (b, &l) in c.lens.iter().enumerate() {
        let reference = attention(
            &d.qf[b * row..(b + 1) * row],
            &d.kf[b],
            &d.vf[b],
            &h,
            1,
            l,
            &c.opts,
        )
        .unwrap();
        let o = to_f64(&out[b * row..(b + 1) * row]);
        let ls: Vec<f64> = lse[b * h.num_qo_heads..(b + 1) * h.num_qo_heads]
            .iter()
            .map(|&x| x as f64)
            .collect();
        worst = worst.worst(ErrorStats::compare(
            &o,
            &reference.o,
            Some((&ls, &reference.lse)),
        ));
    }
    worst
}

fn run_gpu<T: Float16>(gpu: &Gpu, c: &Case, kind: Option<DecodeKernel>) -> ErrorStats {
    run_gpu_split::<T>(gpu, c, kind, None)
}

/// [`run_gpu`] with a fixed split-KV chunk (`Some(keys)`), to force the fused split merge.
fn run_gpu_split<T: Float16>(
    gpu: &Gpu,
    c: &Case,
    kind: Option<DecodeKernel>,
    split: Option<usize>,
) -> ErrorStats {
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
        &d.rows_k,
        &d.rows_v,
    );
    let mut op = BatchDecode::new(gpu, h, T::DTYPE, c.opts).unwrap();
    if let Some(k) = kind {
        op.set_kernel(k).unwrap();
    }
    op.set_fixed_split_size(split);
    let plan = op.plan(&d.pages, pool.config()).unwrap();
    let qd = gpu.upload(&d.q).unwrap();
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    let mut od = gpu.upload(&vec![T::nan(); n]).unwrap();
    let mut ld = gpu
        .upload(&vec![f32::NAN; c.lens.len() * h.num_qo_heads])
        .unwrap();
    op.run(&plan, &qd, &pool, &mut od, Some(&mut ld)).unwrap();
    compare(
        c,
        &d,
        &gpu.download(&od).unwrap(),
        &gpu.download(&ld).unwrap(),
    )
}

fn run_cpu<T: Float16>(c: &Case) -> ErrorStats {
    let d = make::<T>(c);
    let h = c.heads;
    let mut pool = KvPool::<T>::new_cpu(pool_cfg(c), PoolSize::Pages(d.num_pages)).unwrap();
    let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
    let meta = AppendMeta {
        batch_indices: &d.batch_indices,
        positions: &d.positions,
        pages: &d.pages,
    };
    pool.append(&meta, Rows::Host(&d.rows_k), rs, Rows::Host(&d.rows_v), rs)
        .unwrap();
    let n = c.lens.len() * h.num_qo_heads * h.head_dim;
    let mut out = vec![T::nan(); n];
    let mut lse = vec![f32::NAN; c.lens.len() * h.num_qo_heads];
    cpu::batch_decode(&h, &c.opts, &d.q, &pool, &d.pages, &mut out, Some(&mut lse)).unwrap();
    compare(c, &d, &out, &lse)
}

fn arb_case(max_batch: usize, max_len: usize) -> impl Strategy<Value = (Case, bool)> {
    (
        prop::sample::select(vec![64usize, 128, 256]),
        prop::sample::select(vec![1usize, 2, 3, 4, 5, 8]),
        1usize..=2,
        prop::sample::select(vec![1usize, 8, 16, 32]),
        any::<bool>(),
        prop::collection::vec(
            prop_oneof![
                Just(0usize),
                Just(1),
                1usize..max_len,
                Just(16),
                Just(17),
                Just(15),
                Just(32)
            ],
            1..max_batch,
        ),
        prop_oneof![Just(None), (1.0f32..50.0).prop_map(Some)],
        prop_oneof![Just(None), (0usize..3000).prop_map(Some)],
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(d, g, hkv, p, hnd, lens, cap, win, seed, bf)| {
            let opts = AttentionOptions {
                soft_cap: cap,
                window_left: win,
                ..Default::default()
            };
            let case = Case {
                heads: HeadConfig::new(hkv * g, hkv, d).unwrap(),
                page_size: p,
                layout: if hnd { KvLayout::Hnd } else { KvLayout::Nhd },
                lens,
                opts,
                seed,
            };
            (case, bf)
        })
}

fn check(s: ErrorStats, dtype: DType, c: &Case) {
    s.assert_within(dtype, c);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_batch_decode_random_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_batch_decode_random_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats {
        lse_ok: true,
        ..Default::default()
    });
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(64, 5000), |(c, bf)| {
            let (dt, s) = if bf {
                (DType::Bf16, run_gpu::<bf16>(&gpu, &c, None))
            } else {
                (DType::F16, run_gpu::<f16>(&gpu, &c, None))
            };
            check(s, dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu batch decode: {cases} random batches, worst {:?}",
        worst.get()
    );
}

/// The CPU backend on `cases` random cases of at most `max_batch` requests and `max_len` keys,
/// each first passed through `adapt`.
fn cpu_cases(cases: u32, max_batch: usize, max_len: usize, adapt: fn(Case) -> Case) {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(cases)))
        .run(&arb_case(max_batch, max_len), |(c, bf)| {
            let c = adapt(c);
            if bf {
                check(run_cpu::<bf16>(&c), DType::Bf16, &c);
            } else {
                check(run_cpu::<f16>(&c), DType::F16, &c);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn cpu_batch_decode_random_matches_oracle() {
    cpu_cases(16, 12, 1500, |c| c);
}

/// The benchmark geometry at small scale, empty requests and a very long context.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_batch_decode_edges() {
    let Some(gpu) = gpu_or_skip("gpu_batch_decode_edges") else {
        return;
    };
    let mk = |lens: Vec<usize>, p: usize, hq: usize, hkv: usize| Case {
        heads: HeadConfig::new(hq, hkv, 128).unwrap(),
        page_size: p,
        layout: KvLayout::Nhd,
        lens,
        opts: AttentionOptions::default(),
        seed: 9,
    };
    for c in [
        mk(vec![0, 5, 0, 16, 0], 16, 32, 8),
        mk(vec![0], 16, 8, 2),
        mk(vec![131_072], 16, 8, 1),
        mk(vec![4096; 3], 16, 32, 8),
        mk(vec![1; 64], 1, 32, 8),
    ] {
        for kind in [DecodeKernel::CudaCore, DecodeKernel::TensorCore] {
            check(run_gpu::<bf16>(&gpu, &c, Some(kind)), DType::Bf16, &c);
            check(run_gpu::<f16>(&gpu, &c, Some(kind)), DType::F16, &c);
        }
    }
}

/// Both kernel families on the same random batches (head dims the tensor-core path supports).
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_both_kernels_match_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_both_kernels_match_oracle") else {
        return;
    };
    let cases = proptest_cases(32);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&arb_case(32, 5000), |(mut c, bf)| {
            if c.heads.head_dim == 256 {
                c.heads = HeadConfig::new(c.heads.num_qo_heads, c.heads.num_kv_heads, 128).unwrap();
            }
            for kind in [DecodeKernel::CudaCore, DecodeKernel::TensorCore] {
                let (dt, s) = if bf {
                    (DType::Bf16, run_gpu::<bf16>(&gpu, &c, Some(kind)))
                } else {
                    (DType::F16, run_gpu::<f16>(&gpu, &c, Some(kind)))
                };
                check(s, dt, &c);
                worst.set(worst.get().worst(s));
            }
            Ok(())
        })
        .unwrap();
    println!(
        "both decode kernels: {cases} random batches each, worst {:?}",
        worst.get()
    );
}

mod groups;
mod plans;

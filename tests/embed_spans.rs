//! The embeddable core (issue #18 part 1) on the GPU: the span entry points on a borrowed
//! stream, in the primary context, with the plan in a caller workspace, give exactly what the
//! owned-buffer API gives (same kernels, same plan), and their checks refuse bad spans; a plan
//! made while the caller's stream is being captured is refused.
//! Skipped without a GPU (`gpu_or_skip` decides; the handles here are `Gpu::primary`).
use ferrinfer::kv::{AppendMeta, BatchPages, KvLayout, KvPool, RowStrides};
use ferrinfer::ops::{append_spans, AppendMetaSpans, BatchDecode, PagedKvSpans, RowSpans};
use ferrinfer::{AttentionOptions, Error, Float16, Gpu, HeadConfig};
use ferrinfer_harness::paged::{gpu_pool, pool_spans, positions, shuffled_pages};
use ferrinfer_harness::{gpu_or_skip, random_values, rng};
use half::f16;
use rand::rngs::StdRng;

const PAGE_SIZE: usize = 16;

/// A decode batch on the GPU: requests of `lens` tokens on shuffled pages of [`PAGE_SIZE`]
/// (`spare` pages unused), their random K/V rows appended to an NHD pool, random queries.
struct Batch {
    pages: BatchPages,
    rows_k: Vec<f16>,
    rows_v: Vec<f16>,
    q: Vec<f16>,
    pool: KvPool<f16>,
}

fn batch(gpu: &Gpu, h: &HeadConfig, lens: &[usize], r: &mut StdRng, spare: usize) -> Batch {
    let (pages, num_pages) = shuffled_pages(r, lens, PAGE_SIZE, spare);
    let row = h.num_kv_heads * h.head_dim;
    let n_rows: usize = lens.iter().sum();
    let (rows_k, _) = random_values::<f16>(r, n_rows * row, 2.0);
    let (rows_v, _) = random_values::<f16>(r, n_rows * row, 1.0);
    let (q, _) = random_values::<f16>(r, lens.len() * h.num_qo_heads * h.head_dim, 2.0);
    let (ps, layout) = (PAGE_SIZE, KvLayout::Nhd);
    let pool = gpu_pool(
        gpu, h, ps, layout, &pages, num_pages, lens, &rows_k, &rows_v,
    );
    Batch {
        pages,
        rows_k,
        rows_v,
        q,
        pool,
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_spans_on_a_borrowed_stream_match_the_owned_api() {
    if gpu_or_skip("gpu_spans_on_a_borrowed_stream_match_the_owned_api").is_none() {
        return;
    }
    let gpu = Gpu::primary(0).unwrap();
    assert!(
        gpu.same_context(&Gpu::primary(0).unwrap()),
        "one primary handle per device"
    );
    let h = HeadConfig::new(32, 8, 128).unwrap();
    let lens = vec![1usize, 17, 300, 1024];
    let Batch {
        pages,
        rows_k,
        rows_v,
        q,
        pool,
    } = batch(&gpu, &h, &lens, &mut rng(18), 3);
    let opts = AttentionOptions::default();

    // Owned API on the context's own stream.
    let op = BatchDecode::new(&gpu, h, f16::DTYPE, opts).unwrap();
    let plan = op.plan(&pages, pool.config()).unwrap();
    let qd = gpu.upload(&q).unwrap();
    let mut oa = gpu.alloc::<f16>(q.len()).unwrap();
    op.run(&plan, &qd, &pool, &mut oa, None).unwrap();
    let owned = gpu.download(&oa).unwrap();

    // Span API on a stream the "caller" owns, the plan in a caller workspace.
    let stream = gpu.context().new_stream().unwrap();
    // SAFETY: `stream` outlives `handle` (both dropped at the end of the test).
    let handle = unsafe { gpu.on_borrowed_stream(stream.cu_stream()) };
    let mut op2 = BatchDecode::new(&gpu, h, f16::DTYPE, opts).unwrap();
    op2.set_gpu(&handle).unwrap();
    let ws = gpu.alloc::<u8>(64 << 20).unwrap();
    // SAFETY: `ws` outlives the plan and every run of it (synchronised below).
    let plan2 = unsafe { op2.plan_in_workspace(&pages, pool.config(), ws.span()) }.unwrap();
    let (kb, vb) = pool.device_buffers().unwrap();
    let kv = pool_spans(&pool);
    let ob = gpu.alloc::<f16>(q.len()).unwrap();
    gpu.synchronize().unwrap(); // the pool and q were written on the context's stream
                                // SAFETY: every span is a live buffer of this test, synchronised before it is dropped.
    unsafe { op2.run_spans(&plan2, qd.span(), &kv, ob.span(), None) }.unwrap();
    stream.synchronize().unwrap();
    assert_eq!(
        gpu.download(&ob).unwrap(),
        owned,
        "span decode differs from the owned decode"
    );

    // A cache with fewer pages than the plan names, and a span of another length, are refused.
    let short = PagedKvSpans { num_pages: 1, ..kv };
    // SAFETY: refused before any launch.
    let e = unsafe { op2.run_spans(&plan2, qd.span(), &short, ob.span(), None) }.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    let wide = PagedKvSpans {
        k_strides: [kv.k_strides[0] * 4, kv.k_strides[1], kv.k_strides[2]],
        ..kv
    };
    // SAFETY: refused before any launch (the K extent exceeds its span).
    let e = unsafe { op2.run_spans(&plan2, qd.span(), &wide, ob.span(), None) }.unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");

    // The append over spans writes exactly what the pool's append wrote.
    let kz = gpu.alloc::<f16>(kb.len()).unwrap();
    let vz = gpu.alloc::<f16>(vb.len()).unwrap();
    let (bi, pos) = positions(&lens, None);
    let meta = AppendMeta {
        batch_indices: &bi,
        positions: &pos,
        pages: &pages,
    };
    let dev = [&bi, &pos, &pages.kv_indptr, &pages.kv_indices].map(|a| gpu.upload(a).unwrap());
    let (rk, rv) = (gpu.upload(&rows_k).unwrap(), gpu.upload(&rows_v).unwrap());
    let rs = RowStrides::contiguous(h.num_kv_heads, h.head_dim);
    gpu.synchronize().unwrap();
    let cache = PagedKvSpans {
        k: kz.span(),
        v: vz.span(),
        ..kv
    };
    // SAFETY: live buffers of this test; the device metadata is the upload of `meta`.
    unsafe {
        append_spans(
            &handle,
            &cache,
            &meta,
            &AppendMetaSpans {
                batch_indices: dev[0].span(),
                positions: dev[1].span(),
                kv_indptr: dev[2].span(),
                kv_indices: dev[3].span(),
            },
            &RowSpans {
                k: rk.span(),
                ks: rs,
                v: rv.span(),
                vs: rs,
            },
        )
    }
    .unwrap();
    stream.synchronize().unwrap();
    assert_eq!(gpu.download(&kz).unwrap(), gpu.download(kb).unwrap());
    assert_eq!(gpu.download(&vz).unwrap(), gpu.download(vb).unwrap());
}

/// A plan made while its stream is being captured into a CUDA graph is refused (its upload
/// would become a graph node re-reading a staging buffer that later plans refill), the
/// capture stays valid, and the previous plan still runs and gives the same output.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_plan_during_stream_capture_is_refused() {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    if gpu_or_skip("gpu_plan_during_stream_capture_is_refused").is_none() {
        return;
    }
    let gpu = Gpu::primary(0).unwrap();
    let h = HeadConfig::new(8, 2, 128).unwrap();
    let lens = vec![5usize, 40, 129];
    let mut r = rng(19);
    let Batch { pages, q, pool, .. } = batch(&gpu, &h, &lens, &mut r, 2);
    let stream = gpu.context().new_stream().unwrap();
    // SAFETY: `stream` outlives `handle` (both dropped at the end of the test).
    let handle = unsafe { gpu.on_borrowed_stream(stream.cu_stream()) };
    let mut op = BatchDecode::new(&gpu, h, f16::DTYPE, AttentionOptions::default()).unwrap();
    op.set_gpu(&handle).unwrap();
    let mut plan = op.plan(&pages, pool.config()).unwrap();
    let qd = gpu.upload(&q).unwrap();
    let run = |plan: &ferrinfer::ops::BatchDecodePlan| {
        // Poisoned output: an element the kernel does not write stays NaN.
        let mut o = gpu.upload(&vec![f16::NAN; q.len()]).unwrap();
        gpu.synchronize().unwrap(); // written on the context's stream, read on `stream`
        op.run(plan, &qd, &pool, &mut o, None).unwrap();
        handle.synchronize().unwrap();
        gpu.download(&o).unwrap()
    };
    let before = run(&plan);
    assert!(before.iter().all(|x| x.is_finite()), "unwritten output");

    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    let (other, _) = shuffled_pages(&mut r, &lens, PAGE_SIZE, 2);
    let err = op.plan_into(&other, pool.config(), &mut plan).unwrap_err();
    // Ending the capture succeeds: the refusal left the stream's capture intact.
    drop(stream.end_capture(CUgraphInstantiate_flags(0)).unwrap());
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("captured"), "{err}");
    let after = run(&plan);
    let bits = |x: &[f16]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&before), bits(&after), "the previous plan changed");
}

//! Batch prefill (ragged and paged) with RoPE against the oracle.
use super::*;

/// Prefill with RoPE inside attention: query token `i` of request `b` at its causal position
/// `offsets[b] + kv_len − qo_len + i`, key `t` at `offsets[b] + t`, against the f64 oracle fed
/// rotated rows; causal or not, window, soft-cap, both pairings and scalings. The GPU kernels
/// rotate K and Q tiles in shared memory and round them to the 16-bit type once (FlashInfer's
/// scheme, part of the op's definition on the GPU), so their oracle is fed the rotated rows
/// rounded the same way; with that the bounds stay the tolerance table's. (Against unrounded
/// rows the outputs still met the table, but the lse drifted by up to 0.01 at positions near
/// 10⁵, past the lse bound: that rounding, not an error of the kernel.) The CPU twin keeps
/// the rotated rows in f32 and meets the unrounded oracle.
fn prefill_strategy(
    max_batch: usize,
    max_len: usize,
) -> impl Strategy<Value = (Case, bool, Vec<usize>)> {
    (
        arb_case(max_batch, max_len),
        prop::collection::vec(0.0f64..=1.0, max_batch),
        any::<bool>(),
    )
        .prop_map(|((mut c, bf), frac, causal)| {
            c.opts.causal = causal;
            // Query tokens per request: a fraction of its keys (0 allowed).
            let qo = c
                .lens
                .iter()
                .zip(&frac)
                .map(|(&l, &f)| (l as f64 * f) as usize)
                .collect();
            (c, bf, qo)
        })
}

#[test]
fn cpu_rope_prefill_matches_oracle() {
    TestRunner::new(ProptestConfig::with_cases(proptest_cases(16)))
        .run(&prefill_strategy(6, 300), |(c, bf, qo)| {
            if bf {
                prefill::<bf16>(None, &c, &qo).assert_within(DType::Bf16, &c);
            } else {
                prefill::<f16>(None, &c, &qo).assert_within(DType::F16, &c);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_rope_prefill_matches_oracle() {
    let Some(gpu) = gpu_or_skip("gpu_rope_prefill_matches_oracle") else {
        return;
    };
    let cases = proptest_cases(48);
    let worst = std::cell::Cell::new(ErrorStats::default());
    TestRunner::new(ProptestConfig::with_cases(cases))
        .run(&prefill_strategy(8, 800), |(c, bf, qo)| {
            let (dt, s) = if bf {
                (DType::Bf16, prefill::<bf16>(Some(&gpu), &c, &qo))
            } else {
                (DType::F16, prefill::<f16>(Some(&gpu), &c, &qo))
            };
            s.assert_within(dt, &c);
            worst.set(worst.get().worst(s));
            Ok(())
        })
        .unwrap();
    println!(
        "gpu rope prefill (ragged and paged): {cases} random batches, worst {:?}",
        worst.get()
    );
}

/// Outputs and lse of one prefill backend: `[nnz_q, Hq, D]` and `[nnz_q, Hq]`.
type Outputs<T> = (Vec<T>, Vec<f32>);

/// Runs the ragged and the paged prefill with RoPE (on `gpu`, else the CPU backend) and
/// returns the worse of their errors against the oracle.
fn prefill<T: Float16>(gpu: Option<&Gpu>, c: &Case, qo: &[usize]) -> ErrorStats {
    let h = c.heads;
    let d = make::<T>(c);
    let mut r = rng(c.seed ^ 0xabc);
    let qrow = h.num_qo_heads * h.head_dim;
    let nq: usize = qo.iter().sum();
    let (q, mut qf) = random_values::<T>(&mut r, nq * qrow, 2.0);
    let inv_freq = c.rope.inv_freq(h.head_dim, None).unwrap();
    let mut qpos = Vec::with_capacity(nq);
    for (b, (&l, &n)) in c.lens.iter().zip(qo).enumerate() {
        qpos.extend((0..n).map(|i| c.offset(b) + (l - n + i) as u32));
    }
    rotate_rows(
        &mut qf,
        h.num_qo_heads,
        h.head_dim,
        &inv_freq,
        c.rope.style,
        |i| qpos[i],
    );
    let mut qo_indptr = vec![0i32];
    let mut kv_indptr = vec![0i32];
    for (&n, &l) in qo.iter().zip(&c.lens) {
        qo_indptr.push(qo_indptr.last().unwrap() + n as i32);
        kv_indptr.push(kv_indptr.last().unwrap() + l as i32);
    }
    let (ragged, paged): (Outputs<T>, Outputs<T>) = match gpu {
        None => prefill_cpu(c, &d, &q, &qo_indptr, &kv_indptr),
        Some(g) => prefill_gpu(g, c, &d, &q, &qo_indptr, &kv_indptr),
    };
    let mut d = d;
    if gpu.is_some() {
        // The kernels' rotated rows: computed in f32, rounded to T.
        let round = |v: &mut [f64]| {
            v.iter_mut()
                .for_each(|x| *x = T::from_f32(*x as f32).to_f32() as f64)
        };
        round(&mut qf);
        d.kf.iter_mut().for_each(|k| round(k));
    }
    let outs = [(&ragged.0[..], &ragged.1[..]), (&paged.0[..], &paged.1[..])];
    compare(c, &d, &qf, &qo_indptr, &outs)
}

fn prefill_cpu<T: Float16>(
    c: &Case,
    d: &Data<T>,
    q: &[T],
    qo_indptr: &[i32],
    kv_indptr: &[i32],
) -> (Outputs<T>, Outputs<T>) {
    let h = c.heads;
    let nq = *qo_indptr.last().unwrap() as usize;
    let fresh = || {
        (
            vec![T::nan(); nq * h.num_qo_heads * h.head_dim],
            vec![f32::NAN; nq * h.num_qo_heads],
        )
    };
    let offsets = c.offsets.as_deref();
    let (mut ro, mut rl) = fresh();
    cpu::batch_prefill_ragged_rope(
        &h,
        &c.opts,
        &c.rope,
        offsets,
        q,
        qo_indptr,
        &d.k,
        &d.v,
        kv_indptr,
        &mut ro,
        Some(&mut rl),
    )
    .unwrap();
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
    let (mut po, mut pl) = fresh();
    cpu::batch_prefill_paged_rope(
        &h,
        &c.opts,
        &c.rope,
        offsets,
        q,
        qo_indptr,
        &pool,
        &d.pages,
        &mut po,
        Some(&mut pl),
    )
    .unwrap();
    ((ro, rl), (po, pl))
}

fn prefill_gpu<T: Float16>(
    gpu: &Gpu,
    c: &Case,
    d: &Data<T>,
    q: &[T],
    qo_indptr: &[i32],
    kv_indptr: &[i32],
) -> (Outputs<T>, Outputs<T>) {
    let h = c.heads;
    let nq = *qo_indptr.last().unwrap() as usize;
    let mut op = BatchPrefill::new(gpu, h, T::DTYPE, c.opts).unwrap();
    op.set_rope(Some(c.rope)).unwrap();
    let zeros = vec![0; c.lens.len()];
    let offsets = c.offsets.as_deref().unwrap_or(&zeros);
    let qd = gpu.upload(q).unwrap();
    // Poisoned outputs of exactly the planned size (a batch of empty queries has none): a
    // missed element stays NaN.
    let n = nq * h.num_qo_heads * h.head_dim;
    let fresh = || {
        (
            gpu.upload(&vec![T::nan(); n]).unwrap(),
            gpu.upload(&vec![f32::NAN; nq * h.num_qo_heads]).unwrap(),
        )
    };
    let take = |o: &DeviceBuffer<T>, l: &DeviceBuffer<f32>| {
        let (o, l) = (gpu.download(o).unwrap(), gpu.download(l).unwrap());
        (o[..n].to_vec(), l[..nq * h.num_qo_heads].to_vec())
    };
    let mut plan = op.plan_ragged(qo_indptr, kv_indptr).unwrap();
    op.plan_ragged_into_with_offsets(qo_indptr, kv_indptr, offsets, &mut plan)
        .unwrap();
    // A batch of empty requests has no K/V rows: upload one unread element instead.
    let pad = [T::nan()];
    let rows = |x: &'_ [T]| -> DeviceBuffer<T> {
        gpu.upload(if x.is_empty() { &pad[..] } else { x }).unwrap()
    };
    let (kd, vd) = (rows(&d.k), rows(&d.v));
    let (mut ro, mut rl) = fresh();
    op.run_ragged(&plan, &qd, &kd, &vd, &mut ro, Some(&mut rl))
        .unwrap();
    let ragged = take(&ro, &rl);
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
    let mut plan = op.plan_paged(qo_indptr, &d.pages, pool.config()).unwrap();
    op.plan_paged_into_with_offsets(qo_indptr, &d.pages, pool.config(), offsets, &mut plan)
        .unwrap();
    let (mut po, mut pl) = fresh();
    op.run_paged(&plan, &qd, &pool, &mut po, Some(&mut pl))
        .unwrap();
    (ragged, take(&po, &pl))
}

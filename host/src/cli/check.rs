//! `ferrinfer check`: a randomized sweep of single decode and batch prefill against the f64 oracle, on the
//! GPU (or on the CPU backend when there is none). Prints the cases, the worst errors and
//! PASS/FAIL; the caller exits with 1 on failure.
use half::{bf16, f16};

use super::rand::XorShift;
use crate::dtype::{DType, Float16};
use crate::error::Result;
use crate::heads::HeadConfig;
use crate::ops::single_decode::{KvStrides, SingleDecode};
use crate::ops::BatchPrefill;
use crate::options::AttentionOptions;
use crate::reference::{attention, lse_tolerance, max_abs, rel_l2, tolerance, Reference};
use crate::runtime::Gpu;

/// Worst errors over a sweep.
#[derive(Clone, Copy, Debug, Default)]
pub struct Worst {
    /// Cases run.
    pub cases: usize,
    /// Cases outside tolerance.
    pub failures: usize,
    /// Worst relative L2 error of o.
    pub rel_l2: f64,
    /// Worst max abs error of o.
    pub max_abs: f64,
    /// Worst abs error of lse (finite references).
    pub lse_abs: f64,
}

struct Case {
    heads: HeadConfig,
    kv_len: usize,
    opts: AttentionOptions,
    dtype: DType,
}

fn draw(r: &mut XorShift) -> Case {
    let d = [64, 128, 256][r.range(0, 2)];
    let g = r.range(1, 8);
    let hkv = r.range(1, 4);
    let kv_len = match r.range(0, 5) {
        0 => [0, 1, 7, 15, 16, 17][r.range(0, 5)],
        1 => r.range(1, 300),
        2 => r.range(4000, 20000),
        _ => r.range(1, 4096),
    };
    let mut opts = AttentionOptions::default();
    if r.range(0, 3) == 0 {
        opts.soft_cap = Some(r.uniform(5.0, 50.0));
    }
    if r.range(0, 3) == 0 {
        opts.window_left = Some(r.range(0, 3000));
    }
    if r.range(0, 3) == 0 {
        opts.sm_scale = Some(r.uniform(0.02, 0.3));
    }
    Case {
        heads: HeadConfig {
            num_qo_heads: hkv * g,
            num_kv_heads: hkv,
            head_dim: d,
        },
        kv_len,
        opts,
        dtype: if r.range(0, 1) == 0 {
            DType::F16
        } else {
            DType::Bf16
        },
    }
}

fn run_case<T: Float16>(
    gpu: Option<&Gpu>,
    c: &Case,
    r: &mut XorShift,
    w: &mut Worst,
) -> Result<()> {
    let h = c.heads;
    let n_q = h.num_qo_heads * h.head_dim;
    let n_kv = c.kv_len * h.num_kv_heads * h.head_dim;
    let gen = |r: &mut XorShift, n: usize, s: f32| -> Vec<T> {
        (0..n).map(|_| T::from_f32(r.uniform(-s, s))).collect()
    };
    let q = gen(r, n_q, 2.0);
    let k = gen(r, n_kv.max(1), 2.0);
    let v = gen(r, n_kv.max(1), 1.0);
    let f = |x: &[T]| x.iter().map(|y| y.to_f32() as f64).collect::<Vec<f64>>();
    let reference = attention(
        &f(&q),
        &f(&k[..n_kv]),
        &f(&v[..n_kv]),
        &h,
        1,
        c.kv_len,
        &c.opts,
    )?;
    let (out, lse) = match gpu {
        Some(gpu) => {
            let mut op = SingleDecode::new(gpu, h, T::DTYPE, c.opts)?;
            let (qd, kd, vd) = (gpu.upload(&q)?, gpu.upload(&k)?, gpu.upload(&v)?);
            let mut od = gpu.upload(&vec![T::nan(); n_q])?;
            let mut ld = gpu.upload(&vec![f32::NAN; h.num_qo_heads])?;
            op.run(&qd, &kd, &vd, c.kv_len, &mut od, Some(&mut ld))?;
            (gpu.download(&od)?, gpu.download(&ld)?)
        }
        None => {
            let mut out = vec![T::nan(); n_q];
            let mut lse = vec![f32::NAN; h.num_qo_heads];
            let s = KvStrides::contiguous(&h);
            crate::cpu::decode::single_decode(
                &h,
                &c.opts,
                &q,
                &k,
                s,
                &v,
                s,
                c.kv_len,
                &mut out,
                Some(&mut lse),
            )?;
            (out, lse)
        }
    };
    let o = f(&out);
    if !w.score(c.dtype, &o, &lse, &reference) {
        println!(
            "FAIL single_decode {} Hq={} Hkv={} D={} kv_len={} {:?}",
            c.dtype, h.num_qo_heads, h.num_kv_heads, h.head_dim, c.kv_len, c.opts
        );
    }
    Ok(())
}

impl Worst {
    /// Scores one case's output against the oracle; returns whether it is within tolerance.
    fn score(&mut self, dtype: DType, o: &[f64], lse: &[f32], reference: &Reference) -> bool {
        let e_rel = rel_l2(o, &reference.o);
        let e_abs = max_abs(o, &reference.o);
        let mut lse_ok = true;
        let mut lse_abs: f64 = 0.0;
        for (&a, &b) in lse.iter().zip(&reference.lse) {
            let a = a as f64;
            if b.is_finite() {
                lse_abs = lse_abs.max((a - b).abs());
                lse_ok &= (a - b).abs() <= lse_tolerance(b);
            } else {
                lse_ok &= a == b;
            }
        }
        let tol = tolerance(dtype);
        let ok =
            lse_ok && e_rel <= tol.rel_l2 && e_abs <= tol.max_abs && !o.iter().any(|x| x.is_nan());
        self.cases += 1;
        self.rel_l2 = self.rel_l2.max(e_rel);
        self.max_abs = self.max_abs.max(e_abs);
        self.lse_abs = self.lse_abs.max(lse_abs);
        if !ok {
            self.failures += 1;
            println!("  rel_l2={e_rel:.2e} max_abs={e_abs:.2e} lse_abs={lse_abs:.2e}");
        }
        ok
    }
}

/// One random prefill case: a batch of 1–4 requests, ragged K/V.
struct PrefillCase {
    heads: HeadConfig,
    reqs: Vec<(usize, usize)>,
    opts: AttentionOptions,
    dtype: DType,
}

fn draw_prefill(r: &mut XorShift) -> PrefillCase {
    let d = [64, 128][r.range(0, 1)];
    let g = r.range(1, 8);
    let hkv = r.range(1, 3);
    let reqs = (0..r.range(1, 4))
        .map(|_| {
            let qo = match r.range(0, 3) {
                0 => [1, 15, 16, 17, 63, 64, 65][r.range(0, 6)],
                _ => r.range(1, 600),
            };
            (qo, qo + r.range(0, 1500))
        })
        .collect();
    let mut opts = AttentionOptions {
        causal: r.range(0, 3) != 0,
        ..Default::default()
    };
    if r.range(0, 3) == 0 {
        opts.soft_cap = Some(r.uniform(5.0, 50.0));
    }
    if r.range(0, 3) == 0 {
        opts.window_left = Some(r.range(0, 1000));
    }
    PrefillCase {
        heads: HeadConfig {
            num_qo_heads: hkv * g,
            num_kv_heads: hkv,
            head_dim: d,
        },
        reqs,
        opts,
        dtype: if r.range(0, 1) == 0 {
            DType::F16
        } else {
            DType::Bf16
        },
    }
}

fn run_prefill_case<T: Float16>(
    gpu: Option<&Gpu>,
    c: &PrefillCase,
    r: &mut XorShift,
    w: &mut Worst,
) -> Result<()> {
    let h = c.heads;
    let (qrow, krow) = (h.num_qo_heads * h.head_dim, h.num_kv_heads * h.head_dim);
    let nq: usize = c.reqs.iter().map(|x| x.0).sum();
    let nk: usize = c.reqs.iter().map(|x| x.1).sum();
    let gen = |r: &mut XorShift, n: usize, s: f32| -> Vec<T> {
        (0..n).map(|_| T::from_f32(r.uniform(-s, s))).collect()
    };
    let (q, k, v) = (
        gen(r, nq * qrow, 2.0),
        gen(r, nk * krow, 2.0),
        gen(r, nk * krow, 1.0),
    );
    let f = |x: &[T]| x.iter().map(|y| y.to_f32() as f64).collect::<Vec<f64>>();
    let (mut qo_indptr, mut kv_indptr) = (vec![0i32], vec![0i32]);
    let mut reference = Reference {
        o: Vec::new(),
        lse: Vec::new(),
    };
    for &(ql, kl) in &c.reqs {
        let (q0, k0) = (
            *qo_indptr.last().unwrap_or(&0) as usize,
            *kv_indptr.last().unwrap_or(&0) as usize,
        );
        let rf = attention(
            &f(&q[q0 * qrow..(q0 + ql) * qrow]),
            &f(&k[k0 * krow..(k0 + kl) * krow]),
            &f(&v[k0 * krow..(k0 + kl) * krow]),
            &h,
            ql,
            kl,
            &c.opts,
        )?;
        reference.o.extend_from_slice(&rf.o);
        reference.lse.extend_from_slice(&rf.lse);
        qo_indptr.push((q0 + ql) as i32);
        kv_indptr.push((k0 + kl) as i32);
    }
    let (out, lse) = match gpu {
        Some(gpu) => {
            let op = BatchPrefill::new(gpu, h, T::DTYPE, c.opts)?;
            let plan = op.plan_ragged(&qo_indptr, &kv_indptr)?;
            let (qd, kd, vd) = (gpu.upload(&q)?, gpu.upload(&k)?, gpu.upload(&v)?);
            let mut od = gpu.upload(&vec![T::nan(); nq * qrow])?;
            let mut ld = gpu.upload(&vec![f32::NAN; nq * h.num_qo_heads])?;
            op.run_ragged(&plan, &qd, &kd, &vd, &mut od, Some(&mut ld))?;
            (gpu.download(&od)?, gpu.download(&ld)?)
        }
        None => {
            let mut out = vec![T::nan(); nq * qrow];
            let mut lse = vec![f32::NAN; nq * h.num_qo_heads];
            crate::cpu::prefill::batch_prefill_ragged(
                &h,
                &c.opts,
                &q,
                &qo_indptr,
                &k,
                &v,
                &kv_indptr,
                &mut out,
                Some(&mut lse),
            )?;
            (out, lse)
        }
    };
    if !w.score(c.dtype, &f(&out), &lse, &reference) {
        println!(
            "FAIL batch_prefill {} Hq={} Hkv={} D={} reqs={:?} {:?}",
            c.dtype, h.num_qo_heads, h.num_kv_heads, h.head_dim, c.reqs, c.opts
        );
    }
    Ok(())
}

/// Runs `cases` random batch-prefill cases (seed `seed`) on `gpu`, or on the CPU backend.
pub fn prefill_sweep(gpu: Option<&Gpu>, cases: usize, seed: u64) -> Result<Worst> {
    let mut r = XorShift::new(seed ^ 0x9e37_79b9);
    let mut w = Worst::default();
    for _ in 0..cases {
        let c = draw_prefill(&mut r);
        match c.dtype {
            DType::F16 => run_prefill_case::<f16>(gpu, &c, &mut r, &mut w)?,
            DType::Bf16 => run_prefill_case::<bf16>(gpu, &c, &mut r, &mut w)?,
        }
    }
    Ok(w)
}

/// Runs `cases` random single-decode cases (seed `seed`) on `gpu`, or on the CPU backend.
pub fn sweep(gpu: Option<&Gpu>, cases: usize, seed: u64) -> Result<Worst> {
    let mut r = XorShift::new(seed);
    let mut w = Worst::default();
    for _ in 0..cases {
        let c = draw(&mut r);
        match c.dtype {
            DType::F16 => run_case::<f16>(gpu, &c, &mut r, &mut w)?,
            DType::Bf16 => run_case::<bf16>(gpu, &c, &mut r, &mut w)?,
        }
    }
    Ok(w)
}

/// The `check` command. Returns whether everything passed.
pub fn run(cases: usize, seed: u64) -> Result<bool> {
    let gpu = super::discover_or_say()?;
    let backend = if gpu.is_some() {
        "GPU"
    } else {
        "CPU backend (no GPU)"
    };
    println!("checking single_decode (+ split-KV merge) on the {backend} against the f64 oracle: {cases} random cases, seed {seed}");
    let w = sweep(gpu.as_ref(), cases, seed)?;
    println!(
        "single_decode: {} cases, {} failures, worst rel_l2 {:.3e}, worst max_abs {:.3e}, worst lse abs {:.3e}",
        w.cases, w.failures, w.rel_l2, w.max_abs, w.lse_abs
    );
    // Prefill cases cost ~10-100x a decode case on the CPU oracle: a quarter as many.
    let pcases = cases.div_ceil(4);
    println!("checking batch_prefill (ragged, 1-4 requests, split-KV where planned) on the {backend}: {pcases} random cases");
    let pw = prefill_sweep(gpu.as_ref(), pcases, seed)?;
    println!(
        "batch_prefill: {} cases, {} failures, worst rel_l2 {:.3e}, worst max_abs {:.3e}, worst lse abs {:.3e}",
        pw.cases, pw.failures, pw.rel_l2, pw.max_abs, pw.lse_abs
    );
    let pass = w.failures == 0 && pw.failures == 0;
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

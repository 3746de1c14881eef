//! `ferrinfer check`: a randomized sweep of every op that exists against the f64 oracle, on the
//! GPU (or on the CPU backend when there is none). Prints the cases, the worst errors and
//! PASS/FAIL; the caller exits with 1 on failure.
use half::{bf16, f16};

use super::rand::XorShift;
use crate::dtype::{DType, Float16};
use crate::error::Result;
use crate::heads::HeadConfig;
use crate::ops::single_decode::{KvStrides, SingleDecode};
use crate::options::AttentionOptions;
use crate::reference::{attention, lse_tolerance, max_abs, rel_l2, tolerance};
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
    let l: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    let e_rel = rel_l2(&o, &reference.o);
    let e_abs = max_abs(&o, &reference.o);
    let mut lse_ok = true;
    let mut lse_abs: f64 = 0.0;
    for (&a, &b) in l.iter().zip(&reference.lse) {
        if b.is_finite() {
            lse_abs = lse_abs.max((a - b).abs());
            lse_ok &= (a - b).abs() <= lse_tolerance(b);
        } else {
            lse_ok &= a == b;
        }
    }
    let tol = tolerance(c.dtype);
    let ok = lse_ok && e_rel <= tol.rel_l2 && e_abs <= tol.max_abs && !o.iter().any(|x| x.is_nan());
    w.cases += 1;
    w.rel_l2 = w.rel_l2.max(e_rel);
    w.max_abs = w.max_abs.max(e_abs);
    w.lse_abs = w.lse_abs.max(lse_abs);
    if !ok {
        w.failures += 1;
        println!(
            "FAIL single_decode {} Hq={} Hkv={} D={} kv_len={} {:?}: rel_l2={e_rel:.2e} max_abs={e_abs:.2e} lse_abs={lse_abs:.2e}",
            c.dtype, h.num_qo_heads, h.num_kv_heads, h.head_dim, c.kv_len, c.opts
        );
    }
    Ok(())
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
    let pass = w.failures == 0;
    println!("{}", if pass { "PASS" } else { "FAIL" });
    Ok(pass)
}

//! CPU multi-level cascade attention: the twin of [`crate::ops::CascadeAttention`], built the
//! same way from this backend's batch prefill ([`super::batch_prefill_paged`]) and state merge
//! ([`super::merge_state_in_place`]) over the levels [`crate::plan::cascade`] plans.
//!
//! The GPU op merges 16-bit level outputs into the 16-bit `out`; here the running state stays
//! in f32 and is rounded once at the end (the level outputs are the prefill's 16-bit values).
use crate::checked;
use crate::dtype::Float16;
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::kv::KvPool;
use crate::options::AttentionOptions;
use crate::plan::cascade::{plan as plan_levels, CascadeLevel};
use crate::validate;

const OP: &str = "cpu_cascade";

/// Cascade attention over a host-memory pool: q and out `[N, Hq, D]`, lse `[N, Hq]` (base 2)
/// when given; `levels` and `opts` as the GPU op's (no sliding window; causal masks the last
/// level). Nothing is written on error.
pub fn cascade_paged<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    levels: &[CascadeLevel<'_>],
    pool: &KvPool<T>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    heads.validate(OP)?;
    opts.validate(OP)?;
    if opts.window_left.is_some() {
        return Err(Error::unsupported(
            OP,
            "window_left",
            "a sliding window over cascade levels (use batch prefill)",
        ));
    }
    validate::pool_heads(OP, pool.config(), heads)?;
    let c = pool.config();
    let batches = plan_levels(OP, levels, c.page_size, c.num_pages, opts.causal)?;
    let n = levels[0].qo_indptr.last().copied().unwrap_or(0) as usize;
    let (hq, d) = (heads.num_qo_heads, heads.head_dim);
    let row = checked::mul(OP, "q row", hq, d)?;
    let values = checked::mul(OP, "q elements", n, row)?;
    validate::at_least(OP, "q elements", values, q.len())?;
    validate::at_least(OP, "out elements", values, out.len())?;
    if let Some(l) = lse.as_deref() {
        validate::at_least(OP, "lse elements", n * hq, l.len())?;
    }
    // Level by level into a scratch state, merged into the running f32 state.
    let mut level_out = checked::filled(OP, "level output", values, T::from_f32(0.0))?;
    let mut level_lse = checked::filled(OP, "level lse", n * hq, 0.0f32)?;
    let mut acc = checked::filled(OP, "running output", values, 0.0f32)?;
    let mut acc_lse = checked::filled(OP, "running lse", n * hq, 0.0f32)?;
    for (i, b) in batches.iter().enumerate() {
        let level_opts = AttentionOptions {
            causal: b.causal,
            ..*opts
        };
        super::batch_prefill_paged(
            heads,
            &level_opts,
            &q[..values],
            &b.qo_indptr,
            pool,
            &b.pages,
            &mut level_out,
            Some(&mut level_lse),
        )?;
        let level_f32: Vec<f32> = level_out.iter().map(|x| x.to_f32()).collect();
        if i == 0 {
            acc.copy_from_slice(&level_f32);
            acc_lse.copy_from_slice(&level_lse);
            continue;
        }
        for t in 0..n {
            super::merge_state_in_place(
                hq,
                d,
                &mut acc[t * row..(t + 1) * row],
                &mut acc_lse[t * hq..(t + 1) * hq],
                &level_f32[t * row..(t + 1) * row],
                &level_lse[t * hq..(t + 1) * hq],
            )?;
        }
    }
    for (o, &a) in out[..values].iter_mut().zip(&acc) {
        *o = T::from_f32(a);
    }
    if let Some(l) = lse {
        l[..n * hq].copy_from_slice(&acc_lse);
    }
    Ok(())
}

//! Single-request decode attention on the CPU: one query token per head against a contiguous
//! (or strided) K/V of `kv_len` tokens — the CPU twin of [`crate::ops::SingleDecode`].
//!
//! Semantics are those of the GPU op ([`crate::reference`], decode case `Lq = 1`,
//! `pos = kv_len − 1`): query head `h` reads KV head `h / group`; with a sliding window `w`
//! only keys `j >= kv_len − 1 − w` are attended; logits go through the shared
//! [`LogitTransform`] (sm_scale, optional soft-cap) into the base-2 domain and are folded with the
//! shared online-softmax [`State`], the very functions the device kernel runs. `lse` is base 2;
//! with no attended key the output row is 0 and `lse = −inf` (never NaN).
//!
//! Work is spread over query heads with rayon; every head accumulates in f32 and rounds to the
//! storage type once, at the end. Unlike the GPU op, any `head_dim >= 1`, any group size and
//! any strides (including overlapping or zero strides, since K and V are only read) are
//! accepted, as long as every addressed element lies inside the buffers.
use ferrinfer_kernels::math::fast::fmax;
use ferrinfer_kernels::math::softmax::{LogitTransform, State};
use rayon::prelude::*;

use super::merge;
use crate::dtype::{Float16, KvDtype, KvElem};
use crate::error::{Error, Result};
use crate::fp8::{Fp8, Fp8Format, KvScales};
use crate::heads::HeadConfig;
use crate::kv::KvPoolConfig;
use crate::ops::single_decode::KvStrides;
use crate::options::AttentionOptions;
use crate::rope::{RopeConfig, RopeStyle};
use crate::validate;

const OP: &str = "cpu::single_decode";

/// Keys whose logits are computed before the running maximum is updated (one rescale of the
/// accumulator per block instead of one per key).
const BLOCK: usize = 32;

/// Decode attention for contiguous `[kv_len, num_kv_heads, head_dim]` (NHD) K and V.
///
/// Same as [`single_decode`] with [`KvStrides::contiguous`] for both K and V.
#[allow(clippy::too_many_arguments)]
pub fn single_decode_contiguous<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[T],
    v: &[T],
    kv_len: usize,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let s = KvStrides::contiguous(heads);
    single_decode(heads, opts, q, k, s, v, s, kv_len, out, lse)
}

/// Decode attention with explicit K and V strides: element `(t, h, d)` of K is
/// `k[t*k_strides.stride_n + h*k_strides.stride_h + d]`, likewise for V.
///
/// `q` and `out` are `[num_qo_heads, head_dim]` (at least that many elements; only the first
/// `num_qo_heads * head_dim` of `out` are written); `lse`, when given, receives the base-2
/// log-sum-exp of each head in its first `num_qo_heads` entries.
///
/// # Errors
/// Every check runs before anything is written, so on error `out` and `lse` are untouched:
/// - [`Error::InvalidArgument`]: invalid heads (zero counts, `num_qo_heads` not a multiple of
///   `num_kv_heads`, zero `head_dim`), non-finite `sm_scale`, soft-cap not finite and `> 0`,
///   `kv_len > 2^31 − 1` (the GPU op's limit);
/// - [`Error::Shape`]: `q`, `out`, `lse`, `k` or `v` too short;
/// - [`Error::Overflow`]: sizes or extents not representable in `usize`.
#[allow(clippy::too_many_arguments)]
pub fn single_decode<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[T],
    k_strides: KvStrides,
    v: &[T],
    v_strides: KvStrides,
    kv_len: usize,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    single_decode_scaled(
        heads,
        opts,
        q,
        KvView::strided(k, k_strides, v, v_strides),
        kv_len,
        KvScales::ONE,
        Extras::NONE,
        out,
        lse,
    )
}

/// [`single_decode`] over fp8 K and V ([`Fp8`] codes; element `(t, h, d)` at the same strided
/// offsets) read with `scales`: the real K (V) is the code's value times `scales.k`
/// (`scales.v`). q and out stay 16-bit.
///
/// # Errors
/// Those of [`single_decode`], and [`Error::InvalidArgument`] (`k_scale` / `v_scale`) for a
/// scale that is not finite and > 0.
#[allow(clippy::too_many_arguments)]
pub fn single_decode_fp8<T: Float16, F: Fp8Format>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[Fp8<F>],
    k_strides: KvStrides,
    v: &[Fp8<F>],
    v_strides: KvStrides,
    kv_len: usize,
    scales: KvScales,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    single_decode_scaled(
        heads,
        opts,
        q,
        KvView::strided(k, k_strides, v, v_strides),
        kv_len,
        scales,
        Extras::NONE,
        out,
        lse,
    )
}

/// What a decode may add to plain attention: one row of a custom mask (`crate::mask`; key `t`
/// is attended only when bit `row + t` of the little-endian packed bits is set, and the window
/// allows it; the caller has checked that the row lies inside the bits) and RoPE inside
/// attention ([`RowRope`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Extras<'a> {
    pub(crate) mask_row: Option<(&'a [u8], usize)>,
    pub(crate) rope: Option<RowRope<'a>>,
}

impl Extras<'_> {
    /// Plain attention.
    pub(crate) const NONE: Extras<'static> = Extras {
        mask_row: None,
        rope: None,
    };
}

/// [`single_decode`] over K/V elements of any pool type `S`, read with `scales` (validated),
/// with `extras`: the one body behind every CPU decode and prefill entry point.
#[allow(clippy::too_many_arguments)]
pub(crate) fn single_decode_scaled<T: Float16, S: KvElem>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    kv: KvView<'_, S>,
    kv_len: usize,
    scales: KvScales,
    extras: Extras<'_>,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    scales.validate(OP)?;
    let lse_len = lse.as_deref().map(<[f32]>::len);
    let mut job = Job::new(heads, opts, q, kv, kv_len, out.len(), lse_len, scales)?;
    job.mask_row = extras.mask_row;
    job.rope = extras.rope;
    job.run(out, lse, T::from_f32);
    Ok(())
}

/// RoPE inside attention for one request's decode: q rotated to `q_pos`, key `t` to
/// `k_pos0 + t` (`inv_freq` validated against the head dim by the caller).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowRope<'a> {
    pub(crate) inv_freq: &'a [f32],
    pub(crate) style: RopeStyle,
    pub(crate) k_pos0: u32,
    pub(crate) q_pos: u32,
}

/// RoPE inside attention for a batch: the frequency table, the pairing and each request's
/// position offset (key `t` of request `b` at `offsets[b] + t`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchRope<'a> {
    pub(crate) inv_freq: &'a [f32],
    pub(crate) style: RopeStyle,
    pub(crate) offsets: &'a [i32],
}

/// The owned side of a [`BatchRope`]: the frequency table of `rope` and the checked offsets
/// (zeros when none are given).
pub(crate) struct RopeTable {
    inv_freq: Vec<f32>,
    style: RopeStyle,
    offsets: Vec<i32>,
}

impl RopeTable {
    /// Validates `rope` for the head dim and `offsets` (one per request, ≥ 0, every position
    /// within i32) for requests of `kv_lens` keys.
    pub(crate) fn new(
        op: &'static str,
        rope: &RopeConfig,
        head_dim: usize,
        offsets: Option<&[i32]>,
        kv_lens: &[usize],
    ) -> Result<Self> {
        let inv_freq = rope.inv_freq(head_dim, None)?;
        let offsets = offsets.map_or_else(|| vec![0; kv_lens.len()], <[i32]>::to_vec);
        crate::ops::rope_attn::check_offsets(op, &offsets, kv_lens)?;
        Ok(Self {
            inv_freq,
            style: rope.style,
            offsets,
        })
    }

    pub(crate) fn batch(&self) -> BatchRope<'_> {
        BatchRope {
            inv_freq: &self.inv_freq,
            style: self.style,
            offsets: &self.offsets,
        }
    }
}

impl<'a> BatchRope<'a> {
    /// Request `b`'s rotation with its query at sequence index `q_index` (its causal
    /// position).
    pub(crate) fn row(&self, b: usize, q_index: usize) -> RowRope<'a> {
        let k_pos0 = self.offsets[b] as u32;
        RowRope {
            inv_freq: self.inv_freq,
            style: self.style,
            k_pos0,
            q_pos: k_pos0 + q_index as u32,
        }
    }
}

/// [`single_decode`] with RoPE inside attention (FlashInfer's `ROPE_LLAMA`; the twin of
/// [`crate::ops::BatchDecode::set_rope`] for one request): q and every key are rotated on the
/// fly by `rope`, key `t` at position `offset + t` and the query at `offset + kv_len − 1`.
///
/// # Errors
/// Those of [`single_decode`], an invalid `rope` ([`RopeConfig::validate`]) and positions past
/// `2^31 − 1` ([`Error::InvalidArgument`]).
#[allow(clippy::too_many_arguments)]
pub fn single_decode_rope<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    rope: &RopeConfig,
    offset: u32,
    q: &[T],
    k: &[T],
    k_strides: KvStrides,
    v: &[T],
    v_strides: KvStrides,
    kv_len: usize,
    out: &mut [T],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let inv_freq = rope.inv_freq(heads.head_dim, None)?;
    if offset as u64 + kv_len as u64 > i32::MAX as u64 {
        return Err(Error::invalid(
            OP,
            "rope offset",
            format!("{offset} + kv_len {kv_len} exceeds 2^31 − 1"),
        ));
    }
    let r = RowRope {
        inv_freq: &inv_freq,
        style: rope.style,
        k_pos0: offset,
        q_pos: (offset + kv_len as u32).saturating_sub(1),
    };
    let extras = Extras {
        mask_row: None,
        rope: Some(r),
    };
    let one = KvScales::ONE;
    let kv = KvView::strided(k, k_strides, v, v_strides);
    single_decode_scaled(heads, opts, q, kv, kv_len, one, extras, out, lse)
}

/// Decode attention that returns the attention *state* in f32: the normalised output
/// `o [num_qo_heads, head_dim]` without rounding to 16 bits, and the base-2 `lse
/// [num_qo_heads]` (required).
///
/// This is what split-KV and cascade feed to [`crate::cpu::merge`]: merging f32 states rounds
/// once at the very end, as the GPU's f32 partial buffers do. Inputs, semantics and errors are
/// those of [`single_decode`] (with `o` in place of `out`).
#[allow(clippy::too_many_arguments)]
pub fn single_decode_state<T: Float16>(
    heads: &HeadConfig,
    opts: &AttentionOptions,
    q: &[T],
    k: &[T],
    k_strides: KvStrides,
    v: &[T],
    v_strides: KvStrides,
    kv_len: usize,
    o: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    let kv = KvView::strided(k, k_strides, v, v_strides);
    let job = Job::new(
        heads,
        opts,
        q,
        kv,
        kv_len,
        o.len(),
        Some(lse.len()),
        KvScales::ONE,
    )?;
    job.run(o, Some(lse), |x| x);
    Ok(())
}

/// Where one request's key and value rows lie in the `k` and `v` slices of a [`KvView`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum KvRows<'a> {
    /// Row `(t, h)` at `t · stride_n + h · stride_h`, with K's and V's own strides.
    Strided { k: KvStrides, v: KvStrides },
    /// Row `(t, h)` in page `pages[t / page_size]` of a pool of geometry `cfg`, at the same
    /// offset in K and V: decode reads a paged cache in place (gathering it first cost a
    /// copy of the whole context per request and layer, and the re-read of that copy).
    Paged { pages: &'a [i32], cfg: KvPoolConfig },
}

/// One request's K and V as the CPU attention reads them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvView<'a, S> {
    pub(crate) k: &'a [S],
    pub(crate) v: &'a [S],
    pub(crate) rows: KvRows<'a>,
}

impl<'a, S> KvView<'a, S> {
    /// Strided K and V (each with its own strides).
    pub(crate) fn strided(k: &'a [S], ks: KvStrides, v: &'a [S], vs: KvStrides) -> Self {
        Self {
            k,
            v,
            rows: KvRows::Strided { k: ks, v: vs },
        }
    }

    /// Checks that every row of `kv_len` tokens lies inside `k` and `v`: the strided extents,
    /// or for pages that the request has enough of, each below `cfg.num_pages` (checked on
    /// the table, so the rows read below are in bounds), and that the pool's arrays hold
    /// `cfg.num_pages` pages.
    fn validate(&self, heads: &HeadConfig, kv_len: usize) -> Result<()> {
        match self.rows {
            KvRows::Strided { k, v } => {
                validate::kv_extent(OP, "k elements", heads, k, kv_len, self.k.len())?;
                validate::kv_extent(OP, "v elements", heads, v, kv_len, self.v.len())?;
                Ok(())
            }
            KvRows::Paged { pages, cfg } => {
                let need = kv_len.div_ceil(cfg.page_size);
                validate::at_least(OP, "pages of the request", need, pages.len())?;
                if let Some(&p) = pages[..need]
                    .iter()
                    .find(|&&p| p < 0 || p as usize >= cfg.num_pages)
                {
                    return Err(Error::PageOutOfRange {
                        op: OP,
                        page: p as i64,
                        num_pages: cfg.num_pages,
                    });
                }
                let n = cfg.pool_elems()?;
                validate::at_least(OP, "k elements", n, self.k.len())?;
                validate::at_least(OP, "v elements", n, self.v.len())
            }
        }
    }

    /// Offsets in K and in V of the rows of head `kvh` for tokens `t0..t0 + out.len()`.
    #[inline(always)]
    fn offsets(&self, t0: usize, kvh: usize, out: &mut [(usize, usize)]) {
        match self.rows {
            KvRows::Strided { k, v } => {
                for (u, o) in out.iter_mut().enumerate() {
                    let t = t0 + u;
                    *o = (
                        t * k.stride_n + kvh * k.stride_h,
                        t * v.stride_n + kvh * v.stride_h,
                    );
                }
            }
            KvRows::Paged { pages, cfg } => {
                let (ps, st) = (cfg.page_size, cfg.strides());
                let (sp, sn) = (st.stride_page as usize, st.stride_n as usize);
                let head = kvh * st.stride_h as usize;
                let (mut p, mut e) = (t0 / ps, t0 % ps);
                for o in out.iter_mut() {
                    let at = pages[p] as usize * sp + e * sn + head;
                    *o = (at, at);
                    e += 1;
                    if e == ps {
                        (p, e) = (p + 1, 0);
                    }
                }
            }
        }
    }
}

/// Everything one query head needs (validated inputs). K/V elements `S` are read through
/// [`KvElem::load`]; their scales are folded in outside the element loop (K's into the logit
/// scale, V's into the output normaliser), so 16-bit K/V (scale 1) compute exactly as before.
struct Job<'a, T, S> {
    q: &'a [T],
    kv: KvView<'a, S>,
    /// V's scale, applied with the softmax normaliser.
    v_scale: f32,
    num_qo_heads: usize,
    head_dim: usize,
    group: usize,
    kv_begin: usize,
    kv_end: usize,
    logit: LogitTransform,
    /// A custom mask's row: key `t` attended only when bit `row + t` of the packed bits is set.
    mask_row: Option<(&'a [u8], usize)>,
    /// RoPE inside attention.
    rope: Option<RowRope<'a>>,
}

impl<'a, T: Float16, S: KvElem> Job<'a, T, S> {
    /// Validates every input (nothing is written yet) and plans the key range.
    #[allow(clippy::too_many_arguments)]
    fn new(
        heads: &HeadConfig,
        opts: &AttentionOptions,
        q: &'a [T],
        kv: KvView<'a, S>,
        kv_len: usize,
        out_len: usize,
        lse_len: Option<usize>,
        scales: KvScales,
    ) -> Result<Self> {
        heads.validate(OP)?;
        opts.validate(OP)?;
        let (hq, d) = (heads.num_qo_heads, heads.head_dim);
        let qo = hq.checked_mul(d).ok_or(Error::Overflow {
            op: OP,
            what: "q/out elements",
        })?;
        validate::at_least(OP, "q elements", qo, q.len())?;
        validate::at_least(OP, "out elements", qo, out_len)?;
        if let Some(l) = lse_len {
            validate::at_least(OP, "lse elements", hq, l)?;
        }
        validate::kv_len(OP, kv_len)?;
        kv.validate(heads, kv_len)?;
        let kv_begin = match opts.window_left {
            Some(w) => kv_len.saturating_sub(w.saturating_add(1)),
            None => 0,
        };
        Ok(Job {
            q,
            kv,
            v_scale: scales.v,
            num_qo_heads: hq,
            head_dim: d,
            group: heads.group(),
            kv_begin,
            kv_end: kv_len,
            // q·(k·k_scale) = (q·k)·k_scale: K's scale is part of the logit scale (before the
            // soft-cap's tanh, where the real logit is).
            logit: LogitTransform::new(opts.scale(heads) * scales.k, opts.soft_cap),
            mask_row: None,
            rope: None,
        })
    }

    /// Runs every KV head's query group in parallel, writing the output rows through `conv`
    /// (lengths were validated by [`Job::new`]).
    fn run<O: Send>(&self, out: &mut [O], lse: Option<&mut [f32]>, conv: impl Fn(f32) -> O + Sync) {
        let chunks = split_keys(self.kv_begin, self.kv_end);
        if chunks.len() > 1 {
            return self.run_split(&chunks, out, lse, conv);
        }
        let all = (self.kv_begin, self.kv_end);
        self.per_kv_head(out, lse, |kvh, rows, l| {
            self.group_heads_best(kvh, all, rows, l, &conv)
        });
    }

    /// Calls `f(kvh, rows, lse)` in parallel for every KV head with its query group's output
    /// rows (`group × head_dim`) and, when `lse` is given, their lse entries.
    fn per_kv_head<O: Send>(
        &self,
        out: &mut [O],
        lse: Option<&mut [f32]>,
        f: impl Fn(usize, &mut [O], Option<&mut [f32]>) + Sync,
    ) {
        let (hq, d, g) = (self.num_qo_heads, self.head_dim, self.group);
        let groups = out[..hq * d].par_chunks_mut(g * d);
        match lse {
            Some(l) => groups
                .zip(l[..hq].par_chunks_mut(g))
                .enumerate()
                .for_each(|(kvh, (rows, l))| f(kvh, rows, Some(l))),
            None => groups
                .enumerate()
                .for_each(|(kvh, rows)| f(kvh, rows, None)),
        }
    }

    /// [`Job::run`] over a long key range cut into `chunks` ([`split_keys`]): every (KV head,
    /// chunk) is its own task, so a request with fewer KV heads than threads keeps them all
    /// busy; each head's chunk states are then merged in chunk order ([`merge::merge_states`],
    /// the split-KV merge of the device).
    fn run_split<O: Send>(
        &self,
        chunks: &[(usize, usize)],
        out: &mut [O],
        lse: Option<&mut [f32]>,
        conv: impl Fn(f32) -> O + Sync,
    ) {
        let (hq, d, g) = (self.num_qo_heads, self.head_dim, self.group);
        let n = chunks.len();
        let mut so = vec![0.0f32; hq * n * d];
        let mut sl = vec![0.0f32; hq * n];
        so.par_chunks_mut(g * d)
            .zip(sl.par_chunks_mut(g))
            .enumerate()
            .for_each(|(i, (o, l))| {
                let (kvh, c) = (i / n, i % n);
                self.group_heads_best(kvh, chunks[c], o, Some(l), &|x| x);
            });
        self.per_kv_head(out, lse, |kvh, rows, l| {
            let (mut o, mut m) = (vec![0.0f32; g * d], vec![0.0f32; g]);
            let states = (
                &so[kvh * n * g * d..][..n * g * d],
                &sl[kvh * n * g..][..n * g],
            );
            // Inputs are this job's own states: an Err means a NaN lse (NaN inputs), which
            // the unsplit path would have spread to the output as well.
            if merge::merge_states(n, g, d, states.0, states.1, &mut o, &mut m).is_err() {
                o.fill(f32::NAN);
                m.fill(f32::NAN);
            }
            for (r, x) in rows.iter_mut().zip(&o) {
                *r = conv(*x);
            }
            if let Some(l) = l {
                l.copy_from_slice(&m);
            }
        });
    }

    /// [`Job::group_heads`], compiled for AVX2 and F16C when this CPU has them (the crate
    /// targets baseline x86-64, whose vectors are SSE2's four lanes and which converts f16 rows
    /// through a call per eight elements). Only the vector width and the (exact) row
    /// conversion change: Rust never fuses a multiply and an add or reorders float operations
    /// by itself, so every lane does the same operations in the same order and the results are
    /// the same bits either way (`tests::avx2_attention_is_bit_identical`).
    fn group_heads_best<O>(
        &self,
        kvh: usize,
        keys: (usize, usize),
        out: &mut [O],
        lse: Option<&mut [f32]>,
        conv: &impl Fn(f32) -> O,
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2() {
            // SAFETY: this CPU has AVX2 and F16C (checked just above).
            return unsafe { self.group_heads_avx2(kvh, keys, out, lse, conv) };
        }
        self.group_heads::<O, false>(kvh, keys, out, lse, conv)
    }

    /// [`Job::group_heads`] inlined into a function compiled with AVX2 and F16C, its rows
    /// converted by [`load_row_f16c`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn group_heads_avx2<O>(
        &self,
        kvh: usize,
        keys: (usize, usize),
        out: &mut [O],
        lse: Option<&mut [f32]>,
        conv: &impl Fn(f32) -> O,
    ) {
        self.group_heads::<O, true>(kvh, keys, out, lse, conv)
    }

    /// Attends the query heads of KV head `kvh` over keys `[keys.0, keys.1)`: writes their output
    /// rows (`out`: `group × head_dim`) and, when asked, their base-2 lse. Each K and V row is
    /// converted to f32 (and rotated, under RoPE) once for the whole group; every head's own
    /// arithmetic — its dot products, running max, rescales and accumulation order — is what
    /// it would be alone, so the results do not depend on the grouping.
    ///
    /// `F16C`: rows converted by [`load_row_f16c`] (only inside [`Job::group_heads_avx2`]).
    #[inline(always)]
    fn group_heads<O, const F16C: bool>(
        &self,
        kvh: usize,
        keys: (usize, usize),
        out: &mut [O],
        lse: Option<&mut [f32]>,
        conv: &impl Fn(f32) -> O,
    ) {
        let (d, g) = (self.head_dim, self.group);
        let mut q: Vec<f32> = self.q[kvh * g * d..][..g * d]
            .iter()
            .map(|x| x.to_f32())
            .collect();
        // RoPE: q rotated once; each key row rotated in its f32 copy before its dot products.
        if let Some(r) = self.rope {
            for qh in q.chunks_exact_mut(d) {
                super::rope::rotate_head(qh, r.q_pos, r.inv_freq, r.style);
            }
        }
        // Offsets of the block's K and V rows in the view (one page lookup per row).
        let mut offs = [(0usize, 0usize); BLOCK];
        let mut acc = vec![0.0f32; g * d];
        // Rows converted to f32 at once (exact), then the f32 dot products and updates.
        let mut row32 = vec![0.0f32; d];
        // Logits of the block, head-major: x[j · BLOCK + u].
        let mut x = vec![0.0f32; g * BLOCK];
        let mut st = vec![State::EMPTY; g];
        let mut m_new = vec![0.0f32; g];
        let (mut t0, end) = keys;
        while t0 < end {
            let n = BLOCK.min(end - t0);
            for (m, s) in m_new.iter_mut().zip(&st) {
                *m = s.m;
            }
            self.kv.offsets(t0, kvh, &mut offs[..n]);
            for u in 0..n {
                let row = &self.kv.k[offs[u].0..][..d];
                load_row::<S, F16C>(row, &mut row32);
                if let Some(r) = self.rope {
                    let pos = r.k_pos0 + (t0 + u) as u32;
                    super::rope::rotate_head(&mut row32, pos, r.inv_freq, r.style);
                }
                // A hidden key: logit −inf, weight 0 (the State's convention).
                let hidden = self
                    .mask_row
                    .is_some_and(|(bits, r)| !crate::mask::row_bit(bits, r + t0 + u));
                for (j, qh) in q.chunks_exact(d).enumerate() {
                    let xu = if hidden {
                        f32::NEG_INFINITY
                    } else {
                        self.logit.apply(dot(qh, &row32))
                    };
                    x[j * BLOCK + u] = xu;
                    m_new[j] = fmax(m_new[j], xu);
                }
            }
            for (j, a) in acc.chunks_exact_mut(d).enumerate() {
                let r = st[j].rescale_to(m_new[j]);
                if r != 1.0 {
                    a.iter_mut().for_each(|a| *a *= r);
                }
            }
            for u in 0..n {
                let row = &self.kv.v[offs[u].1..][..d];
                load_row::<S, F16C>(row, &mut row32);
                for (j, a) in acc.chunks_exact_mut(d).enumerate() {
                    let p = st[j].weight(x[j * BLOCK + u]);
                    for (a, vv) in a.iter_mut().zip(&row32) {
                        *a += p * vv;
                    }
                }
            }
            t0 += n;
        }
        for (j, (o, a)) in out.chunks_exact_mut(d).zip(acc.chunks_exact(d)).enumerate() {
            let inv = st[j].inv_denominator() * self.v_scale;
            for (o, a) in o.iter_mut().zip(a) {
                *o = conv(a * inv);
            }
        }
        if let Some(l) = lse {
            for (l, s) in l.iter_mut().zip(&st) {
                *l = s.lse();
            }
        }
    }
}

/// Keys per task above which one request's attention is cut into chunks ([`split_keys`]).
const SPLIT_KEYS: usize = 1024;

/// `[begin, end)` cut into the fewest chunks of at most [`SPLIT_KEYS`] keys, of equal sizes
/// (±1): one chunk up to `SPLIT_KEYS` keys (the results are then exactly the unsplit loop's).
/// The cut depends on the range alone, never on the batch or the thread count, so a request's
/// results do not depend on what else runs.
fn split_keys(begin: usize, end: usize) -> Vec<(usize, usize)> {
    let len = end.saturating_sub(begin);
    let n = len.div_ceil(SPLIT_KEYS).max(1);
    (0..n)
        .map(|c| (begin + c * len / n, begin + (c + 1) * len / n))
        .collect()
}

/// A K/V row as f32: [`KvElem::load_row`], or with `F16C` [`load_row_f16c`].
#[inline(always)]
fn load_row<S: KvElem, const F16C: bool>(src: &[S], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if F16C {
        // SAFETY: `F16C` is true only in code reached from `Job::group_heads_avx2`, which runs
        // after `avx2()` found AVX2 and F16C.
        return unsafe { load_row_f16c(src, dst) };
    }
    S::load_row(src, dst)
}

/// [`KvElem::load_row`] in AVX2/F16C code: f16 by `vcvtph2ps` eight at a time, inline (the
/// `half` crate's slice conversion is a call per eight elements from baseline code), bf16 by
/// a shift; both exact, so the values equal `load_row`'s. Other elements: `load_row`.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn load_row_f16c<S: KvElem>(src: &[S], dst: &mut [f32]) {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    match S::KV_DTYPE {
        KvDtype::F16 | KvDtype::Bf16 => {
            // SAFETY: `S` is f16 or bf16 (its tag), both 16-bit `repr(transparent)` over u16.
            let bits: &[u16] = unsafe { std::slice::from_raw_parts(src.as_ptr().cast(), n) };
            if matches!(S::KV_DTYPE, KvDtype::Bf16) {
                for (d, &b) in dst.iter_mut().zip(bits) {
                    *d = f32::from_bits(u32::from(b) << 16);
                }
                return;
            }
            let mut i = 0;
            while i + 8 <= n {
                // SAFETY: `i + 8 ≤ n` elements of both slices; unaligned loads and stores.
                unsafe {
                    let h = _mm_loadu_si128(bits.as_ptr().add(i).cast());
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                }
                i += 8;
            }
            for j in i..n {
                dst[j] = half::f16::from_bits(bits[j]).to_f32();
            }
        }
        _ => S::load_row(src, dst),
    }
}

/// Whether this CPU has AVX2 and F16C (detected once; `FERRINFER_CPU_SIMD=baseline` turns the AVX2
/// build of the attention loop off, for comparisons).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("f16c")
            && std::env::var("FERRINFER_CPU_SIMD").map_or(true, |v| v != "baseline")
    })
}

/// `q · k` in f32 with 8 independent partial sums (lets the compiler vectorise).
#[inline]
fn dot(q: &[f32], k: &[f32]) -> f32 {
    const L: usize = 8;
    let mut part = [0.0f32; L];
    let qc = q.chunks_exact(L);
    let kc = k.chunks_exact(L);
    let (qr, kr) = (qc.remainder(), kc.remainder());
    for (a, b) in qc.zip(kc) {
        for i in 0..L {
            part[i] += a[i] * b[i];
        }
    }
    let mut s = 0.0f32;
    for (a, b) in qr.iter().zip(kr) {
        s += a * b;
    }
    part.iter().sum::<f32>() + s
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;

//! Single-request prefill attention on the GPU (tensor cores): `qo_len` query tokens against
//! `kv_len` contiguous K/V tokens (the query tokens are the last `qo_len` of the context),
//! causal or not, with sliding window, soft-cap and lse.
//!
//! Device side: `kernels-gpu/src/prefill.rs`. One
//! request, contiguous (strided) K/V, head dims 64, 128 and 256, no split-KV: the prefill kernel's
//! single-request mode, which needs no plan or device tables (a CTA per query tile streams its
//! whole KV range). Batches, paged KV and split-KV: [`crate::ops::BatchPrefill`]; the tile
//! policy and launch path both share: [`super::policy`], [`super::launch`].
use ferrinfer_kernels::abi::PrefillParams;
use ferrinfer_kernels::kernel_key::KeyKv;
use ferrinfer_kernels::math::fastdiv::FastDiv;
use ferrinfer_kernels::math::softmax::LogitTransform;

use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::heads::HeadConfig;
use crate::ops::single_decode::KvStrides;
use crate::options::AttentionOptions;
use crate::runtime::{DeviceBuffer, Gpu, LaunchDims};
use crate::validate;

use super::launch::{launch_prefill, ragged_tensor_maps, PrefillKernels, RaggedRows};
use super::mask::DeviceMask;
use super::policy::{mean_keys_per_query, PrefillTile};

const OP: &str = "single_prefill";

/// Single-request prefill for one head configuration, dtype and option set.
pub struct SinglePrefill {
    gpu: Gpu,
    heads: HeadConfig,
    dtype: DType,
    opts: AttentionOptions,
    tile: Option<PrefillTile>,
    /// K/V tiles of the Hopper tile loaded with TMA ([`SinglePrefill::set_tma`]).
    tma: bool,
    /// The ragged prefill kernels, resolved by `new`.
    kernels: PrefillKernels,
}

impl SinglePrefill {
    /// Validates the configuration: head dims 64, 128 and 256, groups 1–32, f16/bf16.
    pub fn new(gpu: &Gpu, heads: HeadConfig, dtype: DType, opts: AttentionOptions) -> Result<Self> {
        heads.validate(OP)?;
        validate::kernel_options(OP, &opts)?;
        validate::kernel_heads(OP, &heads, validate::PREFILL_MAX_GROUP)?;
        Ok(Self {
            gpu: gpu.clone(),
            heads,
            dtype,
            opts,
            tile: None,
            tma: true,
            kernels: PrefillKernels::resolve(gpu, dtype, heads.head_dim, false, false)?,
        })
    }

    /// Whether the Hopper tile loads K/V tiles with TMA (the default) or with `cp.async`
    /// (see `BatchPrefill::set_tma`). Other tiles ignore it.
    pub fn set_tma(&mut self, tma: bool) {
        self.tma = tma;
    }

    /// Fixes the CTA tile; `None` (the default) chooses per call with [`PrefillTile::auto`].
    pub fn set_tile(&mut self, tile: Option<PrefillTile>) -> Result<()> {
        PrefillTile::check(OP, tile, self.heads.head_dim, self.gpu.info().arch)?;
        self.tile = tile;
        Ok(())
    }

    /// Runs prefill: q and out `[qo_len, num_qo_heads, D]`, K and V `[kv_len, num_kv_heads, D]`
    /// (contiguous), lse `[qo_len, num_qo_heads]` (base 2) when given. With the causal mask,
    /// `qo_len ≤ kv_len` is required.
    #[allow(clippy::too_many_arguments)]
    pub fn run<T: Float16>(
        &self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        qo_len: usize,
        kv_len: usize,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let s = KvStrides::contiguous(&self.heads);
        self.run_strided(q, k, s, v, s, qo_len, kv_len, out, lse)
    }

    /// Runs prefill with explicit K and V strides (e.g. views into a fused QKV projection's
    /// output, `stride_n = (Hq + 2·Hkv)·D`). Strides must keep rows 16-byte aligned
    /// (multiples of 8 elements).
    #[allow(clippy::too_many_arguments)]
    pub fn run_strided<T: Float16>(
        &self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        k_strides: KvStrides,
        v: &DeviceBuffer<T>,
        v_strides: KvStrides,
        qo_len: usize,
        kv_len: usize,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let kv = [(k, k_strides), (v, v_strides)];
        self.launch(q, kv, qo_len, kv_len, None, out, lse)
    }

    /// [`SinglePrefill::run`] under a custom mask: one request's `[qo_len, kv_len]` bit matrix
    /// ([`crate::mask::PackedMask::single`] uploaded as a [`DeviceMask`]), combined with the
    /// causal flag and window. Runs the 64-row tile's `_mask` kernel.
    #[allow(clippy::too_many_arguments)]
    pub fn run_masked<T: Float16>(
        &self,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        qo_len: usize,
        kv_len: usize,
        mask: &DeviceMask,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let s = KvStrides::contiguous(&self.heads);
        self.launch(q, [(k, s), (v, s)], qo_len, kv_len, Some(mask), out, lse)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch<T: Float16>(
        &self,
        q: &DeviceBuffer<T>,
        [(k, k_strides), (v, v_strides)]: [(&DeviceBuffer<T>, KvStrides); 2],
        qo_len: usize,
        kv_len: usize,
        mask: Option<&DeviceMask>,
        out: &mut DeviceBuffer<T>,
        lse: Option<&mut DeviceBuffer<f32>>,
    ) -> Result<()> {
        let h = self.heads;
        if T::DTYPE != self.dtype {
            return Err(Error::shape(OP, "element type", self.dtype, T::DTYPE));
        }
        for b in [q, k, v] {
            self.gpu.check_buffer(OP, b)?;
        }
        self.gpu.check_buffer(OP, out)?;
        if qo_len > kv_len {
            return Err(Error::invalid(
                OP,
                "qo_len",
                format!("{qo_len} > kv_len {kv_len} (query tokens are the last of the context)"),
            ));
        }
        let rows = qo_len.checked_mul(h.num_qo_heads).ok_or(Error::Overflow {
            op: OP,
            what: "q rows",
        })?;
        if kv_len > i32::MAX as usize
            || rows
                .checked_mul(h.head_dim)
                .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::Overflow {
                op: OP,
                what: "lengths",
            });
        }
        let nq = rows * h.head_dim;
        for st in [k_strides, v_strides] {
            if st.stride_n % 8 != 0
                || st.stride_h % 8 != 0
                || st.stride_n > u32::MAX as usize
                || st.stride_h > u32::MAX as usize
            {
                return Err(Error::invalid(
                    OP,
                    "k/v strides",
                    format!(
                        "{}/{} (multiples of 8 elements below 2^32 required)",
                        st.stride_n, st.stride_h
                    ),
                ));
            }
        }
        validate::at_least(OP, "q elements", nq, q.len())?;
        validate::at_least(OP, "out elements", nq, out.len())?;
        validate::kv_extent(OP, "k elements", &h, k_strides, kv_len, k.len())?;
        validate::kv_extent(OP, "v elements", &h, v_strides, kv_len, v.len())?;
        if let Some(l) = lse.as_deref() {
            self.gpu.check_buffer(OP, l)?;
            validate::at_least(OP, "lse elements", rows, l.len())?;
        }
        if let Some(m) = mask {
            super::mask::check_head_dim(OP, h.head_dim)?;
            self.gpu.check_buffer(OP, m.buffer())?;
            m.check(OP, std::iter::once((qo_len, kv_len)))?;
        }
        if qo_len == 0 {
            return Ok(());
        }
        let d = h.head_dim as u32;
        let g = h.group() as u32;
        // A mask runs the 64-row tile: the only one with a masked form.
        let fixed_tile = if mask.is_some() {
            Some(PrefillTile::Rows64)
        } else {
            self.tile
        };
        let tile = fixed_tile.unwrap_or_else(|| {
            PrefillTile::auto(
                qo_len,
                1,
                mean_keys_per_query(&[qo_len], &[kv_len], &self.opts),
                h.group(),
                h.head_dim,
                self.gpu.info().arch,
            )
        });
        let p = PrefillParams {
            q: q.addr(),
            o: out.addr(),
            lse: lse.as_deref().map_or(0, |l| l.addr()),
            k: k.addr(),
            v: v.addr(),
            q_stride_n: h.num_qo_heads as u32 * d,
            q_stride_h: d,
            o_stride_n: h.num_qo_heads as u32 * d,
            o_stride_h: d,
            k_stride_n: k_strides.stride_n as u32,
            k_stride_h: k_strides.stride_h as u32,
            v_stride_n: v_strides.stride_n as u32,
            v_stride_h: v_strides.stride_h as u32,
            page_size: FastDiv::new(1),
            qo_len: qo_len as u32,
            kv_len: kv_len as u32,
            num_qo_heads: h.num_qo_heads as u32,
            group: FastDiv::new(g),
            tile_tokens: tile.tokens(g as usize) as u32,
            window_left: self.opts.window_left.map_or(u32::MAX, |w| w as u32),
            causal: self.opts.causal as u32,
            logit: LogitTransform::new(self.opts.scale(&h), self.opts.soft_cap),
            // One request: its bits start at the mask's first byte (no offsets table).
            mask: mask.map_or(0, |m| m.addrs().0),
            // Single-request mode: no work items, tables or partial buffers.
            ..PrefillParams::default()
        };
        // Grid (KV heads, query tiles): KV head fastest in launch order, last tile first in the
        // kernel; grid.y holds at most 65535 tiles.
        let tiles = u32::try_from(qo_len.div_ceil(tile.tokens(g as usize)))
            .ok()
            .filter(|&n| n <= 65_535)
            .ok_or(Error::Overflow {
                op: OP,
                what: "query tiles (grid.y holds at most 65535)",
            })?;
        let dims = LaunchDims {
            grid: (h.num_kv_heads as u32, tiles, 1),
            block: (32 * tile.warps(), 1, 1),
            smem_bytes: tile.smem_bytes(h.head_dim),
        };
        let hopper = tile == PrefillTile::Rows128Wgmma;
        let maps = if hopper && self.tma {
            let rows = |addr, st: KvStrides| RaggedRows {
                addr,
                stride_n: st.stride_n as u64,
                stride_h: st.stride_h as u64,
            };
            ragged_tensor_maps(
                self.dtype,
                &h,
                kv_len,
                rows(k.addr(), k_strides),
                rows(v.addr(), v_strides),
            )?
        } else {
            None
        };
        // SAFETY: every extent above was checked against the kernel's contract (q/out/k/v/lse
        // lengths, qo_len ≤ kv_len, contiguous 16-byte rows from whole allocations); the
        // tensor maps describe this call's K/V rows.
        unsafe {
            launch_prefill(
                &self.gpu,
                &self.kernels,
                KeyKv::Ragged,
                tile,
                false,
                maps,
                dims,
                p,
                None,
                None,
            )
        }
    }
}

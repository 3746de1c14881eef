//! Attention-state merge on the GPU: `merge_state(a, b)`, its in-place form and the n-ary
//! `merge_states` over `(v, lse)` pairs (FlashInfer's cascade building blocks), plus the
//! variable-length merge that combines split-KV prefill partials.
//!
//! A state is the normalised attention output `v` of a key subset with its base-2 log-sum-exp
//! `s`; merging states of disjoint key sets gives the state of their union (CPU twin
//! `cpu::merge`). Empty states (`s = −inf`) weigh nothing; if every state of a row is
//! empty the result is `v = 0`, `s = −inf`. NaN lse inputs are not detected on the device.
//!
//! Device side: `kernels-gpu/src/merge.rs` (one warp per row and head).
use ferrinfer_kernels::abi::MergeParams;
use ferrinfer_kernels::kernel_key::KernelKey;

use crate::dtype::{DType, Float16};
use crate::error::{Error, Result};
use crate::runtime::{DeviceBuffer, DeviceSpan, Gpu, Kernel, LaunchDims};
use crate::validate::at_least;

const OP: &str = "merge_states";

/// Geometry of a merge: `seq_len` rows (tokens) of `num_heads` heads × `head_dim` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeShape {
    /// Rows.
    pub seq_len: usize,
    /// Heads per row.
    pub num_heads: usize,
    /// Values per head: 64, 128 or 256.
    pub head_dim: usize,
}

impl MergeShape {
    fn validate(&self, op: &'static str) -> Result<()> {
        if !matches!(self.head_dim, 64 | 128 | 256) {
            return Err(Error::unsupported(
                op,
                "head_dim",
                format!("{} (supported: 64, 128, 256)", self.head_dim),
            ));
        }
        if self.num_heads == 0 || self.num_heads > 65_535 {
            return Err(Error::invalid(
                op,
                "num_heads",
                format!("{} (must be in 1..=65535)", self.num_heads),
            ));
        }
        // Offsets are u32 row × stride products in the kernel.
        if self
            .seq_len
            .checked_mul(self.num_heads * self.head_dim)
            .is_none_or(|n| n > u32::MAX as usize)
        {
            return Err(Error::Overflow {
                op,
                what: "rows × heads × head_dim",
            });
        }
        Ok(())
    }

    fn values(&self) -> usize {
        self.seq_len * self.num_heads * self.head_dim
    }

    fn lses(&self) -> usize {
        self.seq_len * self.num_heads
    }
}

/// Key of the merge kernel writing `out` outputs from states in f32 (`f32_states`, the
/// split-KV prefill partials) or in `out`.
pub(crate) fn key(f32_states: bool, out: DType, head_dim: usize) -> KernelKey {
    KernelKey::Merge {
        dtype: out.key(),
        head_dim: head_dim as u32,
        f32_states,
    }
}

/// Launches merge kernel `kernel` over `p.num_rows` rows and `p.num_heads` heads.
///
/// # Safety
/// Every address and stride in `p` must describe existing memory for `p.num_rows` rows.
pub(crate) unsafe fn launch(gpu: &Gpu, kernel: &Kernel, p: MergeParams) -> Result<()> {
    if p.num_rows == 0 {
        return Ok(());
    }
    let dims = LaunchDims {
        grid: (p.num_rows.div_ceil(4), p.num_heads, 1),
        block: (128, 1, 1),
        smem_bytes: 0,
    };
    // SAFETY: forwarded contract.
    unsafe { gpu.launch_kernel(kernel, dims, p) }
}

/// Element-offset difference `b − a` of two buffers of `T` (signed: the kernel addresses state
/// `j` at `a + j·(b − a)`, which is how two unrelated buffers become states 0 and 1).
fn stride_between(a: u64, b: u64, elem: u64) -> i64 {
    (b as i64).wrapping_sub(a as i64) / elem as i64
}

/// Parameters merging two state tensors `v[0..2]`/`s[0..2]` (16-bit values, f32 lse) of
/// `shape` into `o`/`lse` (`lse` 0: not written).
fn pair_params(shape: MergeShape, v: [u64; 2], s: [u64; 2], o: u64, lse: u64) -> MergeParams {
    let hd = (shape.num_heads * shape.head_dim) as u32;
    MergeParams {
        v: v[0],
        s: s[0],
        o,
        lse,
        rows: 0,
        num_rows_dev: 0,
        v_stride_row: hd as i64,
        v_stride_state: stride_between(v[0], v[1], 2),
        s_stride_row: shape.num_heads as i64,
        s_stride_state: stride_between(s[0], s[1], 4),
        v_stride_h: shape.head_dim as u32,
        s_stride_h: 1,
        o_stride_row: hd,
        o_stride_h: shape.head_dim as u32,
        lse_stride_row: shape.num_heads as u32,
        num_rows: shape.seq_len as u32,
        num_states: 2,
        num_heads: shape.num_heads as u32,
    }
}

/// `(v_out, s_out) = (v_a, s_a) ⊕ (v_b, s_b)`: values `[seq_len, num_heads, head_dim]`, lse
/// `[seq_len, num_heads]` (base 2). `s_out` is optional.
///
/// # Safety
/// Every span must name live device memory of `gpu`'s context until the launch has run.
#[allow(clippy::too_many_arguments)]
pub unsafe fn merge_state_spans<T: Float16>(
    gpu: &Gpu,
    shape: MergeShape,
    v_a: DeviceSpan<T>,
    s_a: DeviceSpan<f32>,
    v_b: DeviceSpan<T>,
    s_b: DeviceSpan<f32>,
    v_out: DeviceSpan<T>,
    s_out: Option<DeviceSpan<f32>>,
) -> Result<()> {
    const OP2: &str = "merge_state";
    shape.validate(OP2)?;
    for b in [v_a, v_b] {
        gpu.check_span(OP2, &b)?;
        at_least(OP2, "state values", shape.values(), b.len())?;
    }
    for b in [s_a, s_b] {
        gpu.check_span(OP2, &b)?;
        at_least(OP2, "state lse", shape.lses(), b.len())?;
    }
    gpu.check_span(OP2, &v_out)?;
    at_least(OP2, "v_out elements", shape.values(), v_out.len())?;
    if let Some(s) = s_out {
        gpu.check_span(OP2, &s)?;
        at_least(OP2, "s_out elements", shape.lses(), s.len())?;
    }
    let p = pair_params(
        shape,
        [v_a.addr(), v_b.addr()],
        [s_a.addr(), s_b.addr()],
        v_out.addr(),
        s_out.map_or(0, |s| s.addr()),
    );
    let kernel = gpu.kernel(key(false, T::DTYPE, shape.head_dim), 0)?;
    // SAFETY: both states, the output and the lse were checked to hold `shape`; each lane reads
    // its elements of both states before writing the same elements of the output, so v_out may
    // alias v_a or v_b.
    unsafe { launch(gpu, &kernel, p) }
}

/// In place: `(v, s) ← (v, s) ⊕ (v_other, s_other)`.
///
/// # Safety
/// Every span must name live device memory of `gpu`'s context until the launch has run.
pub unsafe fn merge_state_in_place_spans<T: Float16>(
    gpu: &Gpu,
    shape: MergeShape,
    v: DeviceSpan<T>,
    s: DeviceSpan<f32>,
    v_other: DeviceSpan<T>,
    s_other: DeviceSpan<f32>,
) -> Result<()> {
    const OP2: &str = "merge_state_in_place";
    shape.validate(OP2)?;
    gpu.check_span(OP2, &v)?;
    gpu.check_span(OP2, &s)?;
    gpu.check_span(OP2, &v_other)?;
    gpu.check_span(OP2, &s_other)?;
    at_least(OP2, "v elements", shape.values(), v.len())?;
    at_least(OP2, "v_other elements", shape.values(), v_other.len())?;
    at_least(OP2, "s elements", shape.lses(), s.len())?;
    at_least(OP2, "s_other elements", shape.lses(), s_other.len())?;
    let p = pair_params(
        shape,
        [v.addr(), v_other.addr()],
        [s.addr(), s_other.addr()],
        v.addr(),
        s.addr(),
    );
    let kernel = gpu.kernel(key(false, T::DTYPE, shape.head_dim), 0)?;
    // SAFETY: as merge_state: each lane reads its value elements of both states before writing
    // the same elements, and the kernel's shuffle orders every lane's lse reads before lane 0
    // stores the merged lse.
    unsafe { launch(gpu, &kernel, p) }
}

/// `(v_out, s_out) = ⊕_j (v[:, j], s[:, j])`: `v` `[seq_len, num_states, num_heads, head_dim]`,
/// `s` `[seq_len, num_states, num_heads]`; outputs `[seq_len, num_heads, head_dim]` and
/// `[seq_len, num_heads]`. `num_states = 0` gives `v_out = 0`, `s_out = −inf`.
///
/// # Safety
/// Every span must name live device memory of `gpu`'s context until the launch has run.
pub unsafe fn merge_states_spans<T: Float16>(
    gpu: &Gpu,
    shape: MergeShape,
    num_states: usize,
    v: DeviceSpan<T>,
    s: DeviceSpan<f32>,
    v_out: DeviceSpan<T>,
    s_out: Option<DeviceSpan<f32>>,
) -> Result<()> {
    shape.validate(OP)?;
    gpu.check_span(OP, &v)?;
    gpu.check_span(OP, &s)?;
    gpu.check_span(OP, &v_out)?;
    let nv = shape
        .values()
        .checked_mul(num_states)
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or(Error::Overflow {
            op: OP,
            what: "states × rows × heads × head_dim",
        })?;
    at_least(OP, "v elements", nv, v.len())?;
    at_least(OP, "s elements", shape.lses() * num_states, s.len())?;
    at_least(OP, "v_out elements", shape.values(), v_out.len())?;
    if let Some(l) = s_out {
        gpu.check_span(OP, &l)?;
        at_least(OP, "s_out elements", shape.lses(), l.len())?;
    }
    let hd = shape.num_heads * shape.head_dim;
    let p = MergeParams {
        v: v.addr(),
        s: s.addr(),
        o: v_out.addr(),
        lse: s_out.map_or(0, |l| l.addr()),
        rows: 0,
        num_rows_dev: 0,
        v_stride_row: (num_states * hd) as i64,
        v_stride_state: hd as i64,
        s_stride_row: (num_states * shape.num_heads) as i64,
        s_stride_state: shape.num_heads as i64,
        v_stride_h: shape.head_dim as u32,
        s_stride_h: 1,
        o_stride_row: hd as u32,
        o_stride_h: shape.head_dim as u32,
        lse_stride_row: shape.num_heads as u32,
        num_rows: shape.seq_len as u32,
        num_states: num_states as u32,
        num_heads: shape.num_heads as u32,
    };
    let kernel = gpu.kernel(key(false, T::DTYPE, shape.head_dim), 0)?;
    // SAFETY: the state tensors hold num_states states of `shape`, the outputs hold `shape`.
    unsafe { launch(gpu, &kernel, p) }
}

/// `(v_out, s_out) = (v_a, s_a) ⊕ (v_b, s_b)`: values `[seq_len, num_heads, head_dim]`, lse
/// `[seq_len, num_heads]` (base 2). `s_out` is optional. Over caller memory:
/// [`merge_state_spans`].
#[allow(clippy::too_many_arguments)]
pub fn merge_state<T: Float16>(
    gpu: &Gpu,
    shape: MergeShape,
    v_a: &DeviceBuffer<T>,
    s_a: &DeviceBuffer<f32>,
    v_b: &DeviceBuffer<T>,
    s_b: &DeviceBuffer<f32>,
    v_out: &mut DeviceBuffer<T>,
    s_out: Option<&mut DeviceBuffer<f32>>,
) -> Result<()> {
    let s_out = s_out.map(|s| s.span());
    // SAFETY: owned buffers, alive and borrowed for the call.
    unsafe {
        merge_state_spans(
            gpu,
            shape,
            v_a.span(),
            s_a.span(),
            v_b.span(),
            s_b.span(),
            v_out.span(),
            s_out,
        )
    }
}

/// In place: `(v, s) ← (v, s) ⊕ (v_other, s_other)`. Over caller memory:
/// [`merge_state_in_place_spans`].
pub fn merge_state_in_place<T: Float16>(
    gpu: &Gpu,
    shape: MergeShape,
    v: &mut DeviceBuffer<T>,
    s: &mut DeviceBuffer<f32>,
    v_other: &DeviceBuffer<T>,
    s_other: &DeviceBuffer<f32>,
) -> Result<()> {
    // SAFETY: owned buffers, alive and borrowed for the call.
    unsafe {
        merge_state_in_place_spans(
            gpu,
            shape,
            v.span(),
            s.span(),
            v_other.span(),
            s_other.span(),
        )
    }
}

/// `(v_out, s_out) = ⊕_j (v[:, j], s[:, j])`: `v` `[seq_len, num_states, num_heads, head_dim]`,
/// `s` `[seq_len, num_states, num_heads]`; outputs `[seq_len, num_heads, head_dim]` and
/// `[seq_len, num_heads]`. `num_states = 0` gives `v_out = 0`, `s_out = −inf`. Over caller
/// memory: [`merge_states_spans`].
pub fn merge_states<T: Float16>(
    gpu: &Gpu,
    shape: MergeShape,
    num_states: usize,
    v: &DeviceBuffer<T>,
    s: &DeviceBuffer<f32>,
    v_out: &mut DeviceBuffer<T>,
    s_out: Option<&mut DeviceBuffer<f32>>,
) -> Result<()> {
    let s_out = s_out.map(|s| s.span());
    // SAFETY: owned buffers, alive and borrowed for the call.
    unsafe {
        merge_states_spans(
            gpu,
            shape,
            num_states,
            v.span(),
            s.span(),
            v_out.span(),
            s_out,
        )
    }
}

//! FlashInfer's `merge_state`, `merge_state_in_place` and `merge_states` on CUDA tensors,
//! over the library's span merges on the caller's stream. Values are f16/bf16 (the GPU merge
//! kernels' types; f32 values raise `NotImplementedError`), lse float32, all contiguous.
use ferrinfer::ops::{self, MergeShape};
use ferrinfer::Float16;
use half::{bf16, f16};
use pyo3::exceptions::{PyNotImplementedError, PyTypeError};
use pyo3::prelude::*;

use crate::cuda::{cuda, gpu_on, span, SpanElem};
use crate::errors::lib;
use crate::tensor::{disjoint, Dt, RawTensor, Tensor};

/// Checks a state `(v [seq_len, .., H, D], s [seq_len, .., H])` of rank `rank` and returns the
/// merge shape (`seq_len` rows of `H` heads of `D` values).
fn state(op: &str, v: &Tensor, s: &Tensor, rank: usize, layout: &str) -> PyResult<MergeShape> {
    if v.dtype == Dt::F32 {
        return Err(PyNotImplementedError::new_err(format!(
            "{op}: float32 values on CUDA (the GPU merge takes float16 or bfloat16)"
        )));
    }
    v.expect_dtype(&[Dt::F16, Dt::Bf16])?;
    v.expect_rank(rank, layout)?;
    v.expect_contiguous()?;
    s.expect_dtype(&[Dt::F32])?;
    s.expect_shape(&v.shape[..rank - 1])?;
    s.expect_contiguous()?;
    Ok(MergeShape {
        seq_len: v.shape[0],
        num_heads: v.shape[rank - 2],
        head_dim: v.shape[rank - 1],
    })
}

fn pair<T: Float16 + SpanElem>(
    stream: usize,
    device: usize,
    shape: MergeShape,
    t: [&Tensor; 5],
    s_out: Option<&Tensor>,
) -> PyResult<()> {
    let gpu = gpu_on(device, stream)?;
    let [v_a, s_a, v_b, s_b, v_out] = t;
    let s_out = s_out.map(|s| span::<f32>(&gpu, s)).transpose()?;
    // SAFETY: checked CUDA tensors of this device held by the Python layer for the call; the
    // kernel reads each element of both states before writing it (in place is allowed).
    lib(unsafe {
        ops::merge_state_spans(
            &gpu,
            shape,
            span::<T>(&gpu, v_a)?,
            span::<f32>(&gpu, s_a)?,
            span::<T>(&gpu, v_b)?,
            span::<f32>(&gpu, s_b)?,
            span::<T>(&gpu, v_out)?,
            s_out,
        )
    })
}

/// `(v_out, s_out) = (v_a, s_a) ⊕ (v_b, s_b)` on CUDA; `merge_state_in_place` is the same call
/// with the outputs being `(v_a, s_a)`.
#[pyfunction]
#[pyo3(signature = (stream, device, v_a, s_a, v_b, s_b, v_out, s_out=None, in_place=false))]
#[allow(clippy::too_many_arguments)]
fn merge_state_cuda(
    stream: usize,
    device: usize,
    v_a: RawTensor,
    s_a: RawTensor,
    v_b: RawTensor,
    s_b: RawTensor,
    v_out: RawTensor,
    s_out: Option<RawTensor>,
    in_place: bool,
) -> PyResult<()> {
    let op = if in_place {
        "merge_state_in_place"
    } else {
        "merge_state"
    };
    let (v_a, s_a, v_b, s_b) = (
        cuda(v_a, device)?,
        cuda(s_a, device)?,
        cuda(v_b, device)?,
        cuda(s_b, device)?,
    );
    let v_out = cuda(v_out, device)?;
    let s_out = s_out.map(|s| cuda(s, device)).transpose()?;
    let layout = "[seq_len, num_heads, head_dim]";
    let shape = state(op, &v_a, &s_a, 3, layout)?;
    state(op, &v_b, &s_b, 3, layout)?;
    v_b.expect_shape(&v_a.shape)?;
    v_b.expect_same_dtype(&v_a)?;
    v_out.expect_same_dtype(&v_a)?;
    v_out.expect_shape(&v_a.shape)?;
    v_out.expect_contiguous()?;
    v_out.expect_writable()?;
    if let Some(s) = &s_out {
        s.expect_dtype(&[Dt::F32])?;
        s.expect_shape(&s_a.shape)?;
        s.expect_contiguous()?;
    }
    if !in_place {
        let mut all = vec![&v_a, &s_a, &v_b, &s_b, &v_out];
        all.extend(s_out.as_ref());
        let mut outs = vec![&v_out];
        outs.extend(s_out.as_ref());
        disjoint(&outs, &all)?;
    }
    let t = [&v_a, &s_a, &v_b, &s_b, &v_out];
    match v_a.dtype {
        Dt::F16 => pair::<f16>(stream, device, shape, t, s_out.as_ref()),
        _ => pair::<bf16>(stream, device, shape, t, s_out.as_ref()),
    }
}

fn many<T: Float16 + SpanElem>(
    stream: usize,
    device: usize,
    shape: MergeShape,
    num_states: usize,
    t: [&Tensor; 3],
    s_out: Option<&Tensor>,
) -> PyResult<()> {
    let gpu = gpu_on(device, stream)?;
    let [v, s, v_out] = t;
    let s_out = s_out.map(|s| span::<f32>(&gpu, s)).transpose()?;
    // SAFETY: checked CUDA tensors of this device held for the call; outputs disjoint.
    lib(unsafe {
        ops::merge_states_spans(
            &gpu,
            shape,
            num_states,
            span::<T>(&gpu, v)?,
            span::<f32>(&gpu, s)?,
            span::<T>(&gpu, v_out)?,
            s_out,
        )
    })
}

/// `(v_out, s_out) = ⊕_j (v[:, j], s[:, j])` on CUDA: `v [seq_len, num_states, H, D]`.
#[pyfunction]
#[pyo3(signature = (stream, device, v, s, v_out, s_out=None))]
fn merge_states_cuda(
    stream: usize,
    device: usize,
    v: RawTensor,
    s: RawTensor,
    v_out: RawTensor,
    s_out: Option<RawTensor>,
) -> PyResult<()> {
    let (v, s, v_out) = (cuda(v, device)?, cuda(s, device)?, cuda(v_out, device)?);
    let s_out = s_out.map(|x| cuda(x, device)).transpose()?;
    let shape = state(
        "merge_states",
        &v,
        &s,
        4,
        "[seq_len, num_states, num_heads, head_dim]",
    )?;
    let num_states = v.shape[1];
    let out_shape = [shape.seq_len, shape.num_heads, shape.head_dim];
    v_out.expect_same_dtype(&v)?;
    v_out.expect_shape(&out_shape)?;
    v_out.expect_contiguous()?;
    v_out.expect_writable()?;
    if let Some(l) = &s_out {
        l.expect_dtype(&[Dt::F32])?;
        l.expect_shape(&out_shape[..2])?;
        l.expect_contiguous()?;
    }
    let mut all = vec![&v, &s, &v_out];
    all.extend(s_out.as_ref());
    let mut outs = vec![&v_out];
    outs.extend(s_out.as_ref());
    disjoint(&outs, &all)?;
    let t = [&v, &s, &v_out];
    match v.dtype {
        Dt::F16 => many::<f16>(stream, device, shape, num_states, t, s_out.as_ref()),
        Dt::Bf16 => many::<bf16>(stream, device, shape, num_states, t, s_out.as_ref()),
        _ => Err(PyTypeError::new_err("merge_states: v dtype")),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(merge_state_cuda, m)?)?;
    m.add_function(wrap_pyfunction!(merge_states_cuda, m)?)?;
    Ok(())
}

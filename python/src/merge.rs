//! Attention-state merges (FlashInfer's `merge_state`, `merge_state_in_place`, `merge_states`)
//! over `ferrinfer::cpu::merge`. States are `v [seq_len, H, D]` (f16, bf16 or f32) with base-2
//! `s [seq_len, H]` (f32); the merge is per (row, head), so `seq_len · H` rows are one call of
//! the library with `num_heads = seq_len · H`. Values are widened to f32 once and rounded once
//! to the output type, as the GPU merge does.
use ferrinfer::cpu;
use half::{bf16, f16};
use pyo3::prelude::*;

use crate::errors::lib;
use crate::tensor::{disjoint, Dt, Elem, RawTensor, Tensor};

const VALUE_TYPES: [Dt; 3] = [Dt::F16, Dt::Bf16, Dt::F32];

/// Checks a state `(v [.., H, D], s [.., H])`, both contiguous, and returns `(rows, D)` where
/// rows counts every (row, head) pair.
fn state(v: &Tensor, s: &Tensor, rank: usize, layout: &str) -> PyResult<(usize, usize)> {
    v.expect_dtype(&VALUE_TYPES)?;
    v.expect_rank(rank, layout)?;
    v.expect_contiguous()?;
    s.expect_dtype(&[Dt::F32])?;
    s.expect_shape(&v.shape[..rank - 1])?;
    s.expect_contiguous()?;
    let d = v.shape[rank - 1];
    Ok((s.numel()?, d))
}

/// The first `n` values of `t` widened to f32.
fn widen(t: &Tensor, n: usize) -> PyResult<Vec<f32>> {
    fn go<T: Elem>(t: &Tensor, n: usize) -> PyResult<Vec<f32>> {
        // SAFETY: the Python layer holds the array for the call; it is only read here.
        Ok(unsafe { t.slice::<T>()? }[..n]
            .iter()
            .map(|x| x.widen())
            .collect())
    }
    match t.dtype {
        Dt::F16 => go::<f16>(t, n),
        Dt::Bf16 => go::<bf16>(t, n),
        _ => go::<f32>(t, n),
    }
}

/// Rounds `src` into the first elements of `t`.
fn narrow(t: &Tensor, src: &[f32]) -> PyResult<()> {
    fn go<T: Elem>(t: &Tensor, src: &[f32]) -> PyResult<()> {
        // SAFETY: the Python layer holds the array; outputs were checked disjoint from inputs.
        let dst = unsafe { t.slice_mut::<T>()? };
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, &x)| *d = T::narrow(x));
        Ok(())
    }
    match t.dtype {
        Dt::F16 => go::<f16>(t, src),
        Dt::Bf16 => go::<bf16>(t, src),
        _ => go::<f32>(t, src),
    }
}

fn tensors(raw: Vec<RawTensor>) -> PyResult<Vec<Tensor>> {
    raw.into_iter().map(Tensor::from_raw).collect()
}

/// `merge_state(v_a, s_a, v_b, s_b, v_out, s_out)`.
#[pyfunction]
fn merge_state(
    py: Python<'_>,
    v_a: RawTensor,
    s_a: RawTensor,
    v_b: RawTensor,
    s_b: RawTensor,
    v_out: RawTensor,
    s_out: RawTensor,
) -> PyResult<()> {
    let t = tensors(vec![v_a, s_a, v_b, s_b, v_out, s_out])?;
    let layout = "[seq_len, num_heads, head_dim]";
    let (rows, d) = state(&t[0], &t[1], 3, layout)?;
    for i in [2, 4] {
        t[i].expect_same_dtype(&t[0])?;
        t[i].expect_shape(&t[0].shape)?;
        state(&t[i], &t[i + 1], 3, layout)?;
    }
    disjoint(&[&t[4], &t[5]], &t.iter().collect::<Vec<_>>())?;
    if rows == 0 || d == 0 {
        return Ok(());
    }
    py.detach(|| {
        let n = rows * d;
        let (a, b) = (widen(&t[0], n)?, widen(&t[2], n)?);
        let (mut o, mut l) = (vec![0f32; n], vec![0f32; rows]);
        // SAFETY: the Python layer holds the arrays; s_a and s_b are only read.
        let (la, lb) = unsafe { (t[1].slice::<f32>()?, t[3].slice::<f32>()?) };
        lib(cpu::merge_state(rows, d, &a, la, &b, lb, &mut o, &mut l))?;
        narrow(&t[4], &o)?;
        narrow(&t[5], &l)
    })
}

/// `merge_state_in_place(v, s, v_other, s_other)`: `(v, s) ← (v, s) ⊕ (v_other, s_other)`.
#[pyfunction]
fn merge_state_in_place(
    py: Python<'_>,
    v: RawTensor,
    s: RawTensor,
    v_other: RawTensor,
    s_other: RawTensor,
) -> PyResult<()> {
    let t = tensors(vec![v, s, v_other, s_other])?;
    let layout = "[seq_len, num_heads, head_dim]";
    let (rows, d) = state(&t[0], &t[1], 3, layout)?;
    t[2].expect_same_dtype(&t[0])?;
    t[2].expect_shape(&t[0].shape)?;
    state(&t[2], &t[3], 3, layout)?;
    disjoint(&[&t[0], &t[1]], &t.iter().collect::<Vec<_>>())?;
    if rows == 0 || d == 0 {
        return Ok(());
    }
    py.detach(|| {
        let n = rows * d;
        let (mut o, other) = (widen(&t[0], n)?, widen(&t[2], n)?);
        let mut l = widen(&t[1], rows)?;
        // SAFETY: the Python layer holds the array; it is only read.
        let lo = unsafe { t[3].slice::<f32>()? };
        lib(cpu::merge_state_in_place(
            rows, d, &mut o, &mut l, &other, lo,
        ))?;
        narrow(&t[0], &o)?;
        narrow(&t[1], &l)
    })
}

/// `merge_states(v, s, v_out, s_out)`: `v [seq_len, num_states, H, D]`, `s [seq_len,
/// num_states, H]` → `v_out [seq_len, H, D]`, `s_out [seq_len, H]`.
#[pyfunction]
fn merge_states(
    py: Python<'_>,
    v: RawTensor,
    s: RawTensor,
    v_out: RawTensor,
    s_out: RawTensor,
) -> PyResult<()> {
    let t = tensors(vec![v, s, v_out, s_out])?;
    state(
        &t[0],
        &t[1],
        4,
        "[seq_len, num_states, num_heads, head_dim]",
    )?;
    let (seq, n, h, d) = (t[0].shape[0], t[0].shape[1], t[0].shape[2], t[0].shape[3]);
    t[2].expect_same_dtype(&t[0])?;
    t[2].expect_shape(&[seq, h, d])?;
    state(&t[2], &t[3], 3, "[seq_len, num_heads, head_dim]")?;
    disjoint(&[&t[2], &t[3]], &t.iter().collect::<Vec<_>>())?;
    if seq * h * d == 0 {
        return Ok(());
    }
    py.detach(|| {
        let states = widen(&t[0], seq * n * h * d)?;
        // SAFETY: the Python layer holds the array; it is only read.
        let lse_in = unsafe { t[1].slice::<f32>()? };
        let (mut o, mut l) = (vec![0f32; seq * h * d], vec![0f32; seq * h]);
        for r in 0..seq {
            lib(cpu::merge_states(
                n,
                h,
                d,
                &states[r * n * h * d..(r + 1) * n * h * d],
                &lse_in[r * n * h..(r + 1) * n * h],
                &mut o[r * h * d..(r + 1) * h * d],
                &mut l[r * h..(r + 1) * h],
            ))?;
        }
        narrow(&t[2], &o)?;
        narrow(&t[3], &l)
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(merge_state, m)?)?;
    m.add_function(wrap_pyfunction!(merge_state_in_place, m)?)?;
    m.add_function(wrap_pyfunction!(merge_states, m)?)?;
    Ok(())
}

//! Attention over K/V held in ordinary candle tensors (no cache): single-request decode and
//! prefill, and batch prefill over ragged (packed) K/V. Each is one [`CustomOp3`] on `(q, k, v)`
//! whose CPU forward calls ferrinfer's CPU backend.
//!
//! Layouts are ferrinfer's (and FlashInfer's) NHD: tokens, then heads, then `head_dim`. GQA is
//! expressed by the head counts: query head `h` reads KV head `h / (Hq / Hkv)`.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use ferrinfer::{AttentionOptions, HeadConfig};
use half::{bf16, f16};

use crate::error::{invalid, wrap};
use crate::tensors::{dims, elems, indptr, same_dtype_and_device, Half};

/// Decode attention of one request: `q [Hq, D]` against `k, v [kv_len, Hkv, D]`; returns
/// `[Hq, D]` in `q`'s dtype. The query sits at position `kv_len − 1`, so `opts.window_left`
/// applies and `opts.causal` is vacuous.
///
/// # Errors
/// Wrong ranks or mismatched dims, dtypes other than f16/bf16 or differing between tensors,
/// tensors on different devices or off the CPU, `Hq` not a multiple of `Hkv`, invalid
/// options: all refused before any work.
pub fn decode(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    const OP: &str = "decode";
    let [hq, d] = dims(OP, "q", "[Hq, D]", q)?;
    let kv = kv_dims(OP, k, v, d)?;
    let op = Contiguous::new(OP, hq, kv, opts, Kind::Decode { kv_len: kv.len })?;
    op.apply(q, k, v)
}

/// Prefill of one request: `q [qo_len, Hq, D]` against `k, v [kv_len, Hkv, D]` with
/// `qo_len ≤ kv_len`; query row `t` sits at position `kv_len − qo_len + t` (the queries are
/// the last `qo_len` tokens, as after an append). Returns `[qo_len, Hq, D]`.
///
/// # Errors
/// As [`decode`], and `qo_len > kv_len`.
pub fn prefill(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
    const OP: &str = "prefill";
    let [qo_len, hq, d] = dims(OP, "q", "[qo_len, Hq, D]", q)?;
    let kv = kv_dims(OP, k, v, d)?;
    if qo_len > kv.len {
        return Err(invalid(OP, format!("qo_len {qo_len} > kv_len {}", kv.len)));
    }
    let kind = Kind::Prefill {
        qo_len,
        kv_len: kv.len,
    };
    let op = Contiguous::new(OP, hq, kv, opts, kind)?;
    op.apply(q, k, v)
}

/// Batch prefill over packed K/V (FlashInfer's ragged wrapper): request `b` owns the next
/// `qo_lens[b]` rows of `q [Σ qo_lens, Hq, D]` and the next `kv_lens[b]` rows of
/// `k, v [Σ kv_lens, Hkv, D]`, with `qo_lens[b] ≤ kv_lens[b]`. Returns `[Σ qo_lens, Hq, D]`.
///
/// # Errors
/// As [`prefill`], and `qo_lens`/`kv_lens` of different lengths or not summing to the rows of
/// `q` and `k`.
pub fn prefill_ragged(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    qo_lens: &[usize],
    kv_lens: &[usize],
    opts: &AttentionOptions,
) -> Result<Tensor> {
    const OP: &str = "prefill_ragged";
    let [nnz_q, hq, d] = dims(OP, "q", "[Σ qo_lens, Hq, D]", q)?;
    let kv = kv_dims(OP, k, v, d)?;
    if qo_lens.len() != kv_lens.len() {
        return Err(invalid(
            OP,
            format!(
                "{} qo_lens but {} kv_lens (one of each per request)",
                qo_lens.len(),
                kv_lens.len()
            ),
        ));
    }
    let qo_indptr = indptr(OP, "qo_lens", qo_lens.iter().copied())?;
    let kv_indptr = indptr(OP, "kv_lens", kv_lens.iter().copied())?;
    for (what, sum, rows) in [
        ("qo_lens", qo_indptr[qo_indptr.len() - 1], nnz_q),
        ("kv_lens", kv_indptr[kv_indptr.len() - 1], kv.len),
    ] {
        if sum as usize != rows {
            return Err(invalid(
                OP,
                format!("{what} sum to {sum}, the tensor has {rows} rows"),
            ));
        }
    }
    if let Some(b) = (0..qo_lens.len()).find(|&b| qo_lens[b] > kv_lens[b]) {
        return Err(invalid(
            OP,
            format!("request {b}: qo_len {} > kv_len {}", qo_lens[b], kv_lens[b]),
        ));
    }
    let kind = Kind::Ragged {
        qo_indptr,
        kv_indptr,
    };
    let op = Contiguous::new(OP, hq, kv, opts, kind)?;
    op.apply(q, k, v)
}

/// `k`/`v` geometry, checked: same `[kv_len, Hkv, D]` shape, `D` equal to q's.
#[derive(Clone, Copy)]
struct KvDims {
    len: usize,
    heads: usize,
    head_dim: usize,
}

fn kv_dims(op: &str, k: &Tensor, v: &Tensor, d: usize) -> Result<KvDims> {
    let [len, heads, head_dim] = dims(op, "k", "[kv_len, Hkv, D]", k)?;
    if v.dims() != k.dims() {
        return Err(invalid(
            op,
            format!("v has shape {:?}, k has {:?}", v.dims(), k.dims()),
        ));
    }
    if head_dim != d {
        return Err(invalid(
            op,
            format!("k/v head_dim {head_dim}, q head_dim {d}"),
        ));
    }
    Ok(KvDims {
        len,
        heads,
        head_dim,
    })
}

/// Which ferrinfer CPU function runs, with its lengths.
enum Kind {
    Decode {
        kv_len: usize,
    },
    Prefill {
        qo_len: usize,
        kv_len: usize,
    },
    Ragged {
        qo_indptr: Vec<i32>,
        kv_indptr: Vec<i32>,
    },
}

/// The custom op: validated geometry and options, applied to `(q, k, v)`.
struct Contiguous {
    name: &'static str,
    heads: HeadConfig,
    opts: AttentionOptions,
    kind: Kind,
}

impl Contiguous {
    /// Validates the heads and options (ferrinfer's own checks) before any tensor is touched.
    fn new(
        name: &'static str,
        hq: usize,
        kv: KvDims,
        opts: &AttentionOptions,
        kind: Kind,
    ) -> Result<Self> {
        let heads = HeadConfig::new(hq, kv.heads, kv.head_dim).map_err(wrap)?;
        opts.validate(name).map_err(wrap)?;
        Ok(Self {
            name,
            heads,
            opts: *opts,
            kind,
        })
    }

    /// Checks dtypes and devices, then runs the op; the output has `q`'s shape.
    fn apply(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        same_dtype_and_device(self.name, ("q", q), &[("k", k), ("v", v)])?;
        q.contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, self)
    }

    fn run<T: Half>(
        &self,
        q: (&CpuStorage, &Layout),
        k: (&CpuStorage, &Layout),
        v: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let (qs, ks, vs) = (
            elems::<T>(self.name, q.0, q.1)?,
            elems::<T>(self.name, k.0, k.1)?,
            elems::<T>(self.name, v.0, v.1)?,
        );
        let mut out = vec![T::default(); qs.len()];
        let (h, o) = (&self.heads, &self.opts);
        match &self.kind {
            Kind::Decode { kv_len } => {
                ferrinfer::cpu::single_decode_contiguous(h, o, qs, ks, vs, *kv_len, &mut out, None)
            }
            Kind::Prefill { qo_len, kv_len } => {
                ferrinfer::cpu::single_prefill(h, o, qs, ks, vs, *qo_len, *kv_len, &mut out, None)
            }
            Kind::Ragged {
                qo_indptr,
                kv_indptr,
            } => ferrinfer::cpu::batch_prefill_ragged(
                h, o, qs, qo_indptr, ks, vs, kv_indptr, &mut out, None,
            ),
        }
        .map_err(wrap)?;
        Ok((T::to_cpu_storage_owned(out), q.1.shape().clone()))
    }
}

impl Kind {
    /// The op as one batch-prefill step over ragged K/V (the CUDA forward): a decode is one
    /// query row at position `kv_len − 1`, which sees every key.
    #[cfg(feature = "cuda")]
    fn indptrs(&self) -> (Vec<i32>, Vec<i32>) {
        let one = |qo: usize, kv: usize| (vec![0, qo as i32], vec![0, kv as i32]);
        match self {
            Kind::Decode { kv_len } => one(1, *kv_len),
            Kind::Prefill { qo_len, kv_len } => one(*qo_len, *kv_len),
            Kind::Ragged {
                qo_indptr,
                kv_indptr,
            } => (qo_indptr.clone(), kv_indptr.clone()),
        }
    }
}

impl CustomOp3 for Contiguous {
    fn name(&self) -> &'static str {
        self.name
    }

    /// ferrinfer's batch prefill kernels on candle's stream, over the tensors' own memory.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (qo, kv) = self.kind.indptrs();
        let (h, o, name) = (&self.heads, &self.opts, self.name);
        let (q, k, v) = ((s1, l1), (s2, l2), (s3, l3));
        let out = match s1.dtype() {
            candle_core::DType::F16 => crate::cuda::ragged::<f16>(name, h, o, &qo, &kv, q, k, v),
            candle_core::DType::BF16 => crate::cuda::ragged::<bf16>(name, h, o, &qo, &kv, q, k, v),
            other => Err(invalid(name, format!("dtype {other:?} reached the op"))),
        }?;
        Ok((out, l1.shape().clone()))
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let args = ((s1, l1), (s2, l2), (s3, l3));
        match s1 {
            CpuStorage::F16(_) => self.run::<f16>(args.0, args.1, args.2),
            CpuStorage::BF16(_) => self.run::<bf16>(args.0, args.1, args.2),
            other => Err(invalid(
                self.name,
                format!("dtype {:?} reached the op", other.dtype()),
            )),
        }
    }
}

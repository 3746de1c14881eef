//! Tensor intake: a caller's array as the Python layer (`ferrinfer/_tensor.py`) describes it —
//! address, shape, strides in elements, dtype, device — checked here before any byte of it is
//! read or written, and turned into slices of the caller's own memory (zero-copy).
//!
//! The Python side only reads attributes (`__array_interface__`, `data_ptr()`/`stride()`);
//! every rule about what an op accepts lives here, so a tensor that is too small, of the wrong
//! type, non-contiguous or on the wrong device is refused with an exception naming the
//! argument, never read out of bounds.
use half::{bf16, f16};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// Element types the bindings read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dt {
    F16,
    Bf16,
    F32,
    I32,
    /// fp8 E4M3 (torch's and ml_dtypes' `float8_e4m3fn`): K/V caches only.
    F8E4m3,
    /// fp8 E5M2 (`float8_e5m2`): K/V caches only.
    F8E5m2,
}

impl Dt {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "float16" => Dt::F16,
            "bfloat16" => Dt::Bf16,
            "float32" => Dt::F32,
            "int32" => Dt::I32,
            "float8_e4m3fn" => Dt::F8E4m3,
            "float8_e5m2" => Dt::F8E5m2,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Dt::F16 => "float16",
            Dt::Bf16 => "bfloat16",
            Dt::F32 => "float32",
            Dt::I32 => "int32",
            Dt::F8E4m3 => "float8_e4m3fn",
            Dt::F8E5m2 => "float8_e5m2",
        }
    }

    fn size(self) -> usize {
        match self {
            Dt::F8E4m3 | Dt::F8E5m2 => 1,
            Dt::F16 | Dt::Bf16 => 2,
            Dt::F32 | Dt::I32 => 4,
        }
    }
}

/// The descriptor tuple `_tensor.view()` builds:
/// `(name, address, shape, strides, dtype, device, device_index, writable, owner)`. `owner` is
/// the array itself: the tuple keeps it (and so its memory) alive for the whole call, even when
/// the caller passed a temporary.
#[derive(FromPyObject)]
pub struct RawTensor(
    String,
    usize,
    Vec<i64>,
    Vec<i64>,
    String,
    String,
    i64,
    bool,
    Py<PyAny>,
);

/// A checked tensor on the host: shape and strides in elements, every stride non-negative and
/// the addressed span inside one allocation the caller keeps alive for the call.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub addr: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub dtype: Dt,
    pub writable: bool,
    /// The CUDA device the address belongs to (`None`: host memory).
    pub cuda: Option<usize>,
}

fn value_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

impl Tensor {
    /// Checks the descriptor of a CPU tensor: known dtype, non-negative strides, and a span
    /// whose byte extent is representable. A tensor on another device is a `ValueError` (a
    /// call's tensors must all be on one device).
    pub fn from_raw(raw: RawTensor) -> PyResult<Self> {
        Self::intake(raw, None)
    }

    /// As [`Tensor::from_raw`] for a tensor on CUDA device `index` (its address is a device
    /// pointer: never read on the host, see [`Tensor::slice`]).
    pub fn from_cuda(raw: RawTensor, index: usize) -> PyResult<Self> {
        Self::intake(raw, Some(index))
    }

    fn intake(raw: RawTensor, cuda: Option<usize>) -> PyResult<Self> {
        let RawTensor(name, addr, shape, strides, dtype, device, index, writable, _owner) = raw;
        match (cuda, device.as_str()) {
            (None, "cpu") => {}
            (Some(want), "cuda") if usize::try_from(index).is_ok_and(|i| i == want) => {}
            (None, _) => {
                return Err(value_err(format!(
                    "{name}: on device {device}:{index} but this call runs on the CPU \
                     (every tensor of a call must be on one device)"
                )))
            }
            (Some(want), _) => {
                return Err(value_err(format!(
                    "{name}: on device {device}:{index} but this call runs on cuda:{want} \
                     (every tensor of a call must be on one device)"
                )))
            }
        }
        let dtype = Dt::parse(&dtype).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "{name}: unsupported dtype {dtype} (float16, bfloat16, float32, int32, or \
                 float8_e4m3fn / float8_e5m2 for K/V caches)"
            ))
        })?;
        if shape.len() != strides.len() {
            return Err(value_err(format!(
                "{name}: shape and strides differ in rank"
            )));
        }
        let to_usize = |what: &str, v: &[i64]| -> PyResult<Vec<usize>> {
            v.iter()
                .map(|&x| {
                    usize::try_from(x).map_err(|_| {
                        value_err(format!("{name}: negative {what} {x} not supported"))
                    })
                })
                .collect()
        };
        let t = Tensor {
            shape: to_usize("dimension", &shape)?,
            strides: to_usize("stride", &strides)?,
            name,
            addr,
            dtype,
            writable,
            cuda,
        };
        t.span_bytes()?;
        if t.numel()? > 0 && (addr == 0 || addr % dtype.size() != 0) {
            return Err(value_err(format!(
                "{}: misaligned or null data pointer",
                t.name
            )));
        }
        Ok(t)
    }

    pub fn numel(&self) -> PyResult<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| value_err(format!("{}: element count overflows", self.name)))
    }

    /// Elements from the first addressed element to one past the last (0 when empty).
    pub fn span(&self) -> PyResult<usize> {
        if self.numel()? == 0 {
            return Ok(0);
        }
        let overflow = || value_err(format!("{}: extent overflows", self.name));
        let mut last = 0usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            last = (d - 1)
                .checked_mul(s)
                .and_then(|x| x.checked_add(last))
                .ok_or_else(overflow)?;
        }
        last.checked_add(1).ok_or_else(overflow)
    }

    fn span_bytes(&self) -> PyResult<usize> {
        let bytes = self
            .span()?
            .checked_mul(self.dtype.size())
            .filter(|b| self.addr.checked_add(*b).is_some() && *b <= isize::MAX as usize)
            .ok_or_else(|| value_err(format!("{}: extent overflows", self.name)))?;
        Ok(bytes)
    }

    /// `[addr, addr + bytes)` of the addressed span.
    pub fn byte_range(&self) -> PyResult<(usize, usize)> {
        Ok((self.addr, self.addr + self.span_bytes()?))
    }

    pub fn expect_dtype(&self, allowed: &[Dt]) -> PyResult<()> {
        if allowed.contains(&self.dtype) {
            return Ok(());
        }
        let names: Vec<_> = allowed.iter().map(|d| d.name()).collect();
        Err(PyTypeError::new_err(format!(
            "{}: dtype {} not supported here (expected {})",
            self.name,
            self.dtype.name(),
            names.join(" or ")
        )))
    }

    pub fn expect_same_dtype(&self, other: &Tensor) -> PyResult<()> {
        if self.dtype != other.dtype {
            return Err(PyTypeError::new_err(format!(
                "{}: dtype {} differs from {}'s {}",
                self.name,
                self.dtype.name(),
                other.name,
                other.dtype.name()
            )));
        }
        Ok(())
    }

    pub fn expect_rank(&self, rank: usize, layout: &str) -> PyResult<()> {
        if self.shape.len() != rank {
            return Err(value_err(format!(
                "{}: expected a {rank}-d tensor {layout}, got shape {:?}",
                self.name, self.shape
            )));
        }
        Ok(())
    }

    pub fn expect_shape(&self, shape: &[usize]) -> PyResult<()> {
        if self.shape != shape {
            return Err(value_err(format!(
                "{}: expected shape {shape:?}, got {:?}",
                self.name, self.shape
            )));
        }
        Ok(())
    }

    /// Row-major contiguous (dimensions of size 1 may have any stride, as in torch/numpy).
    pub fn expect_contiguous(&self) -> PyResult<()> {
        let mut want = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != want {
                return Err(value_err(format!(
                    "{}: must be contiguous (shape {:?}, strides {:?} in elements); \
                     call .contiguous() / np.ascontiguousarray first",
                    self.name, self.shape, self.strides
                )));
            }
            want = want.saturating_mul(d);
        }
        Ok(())
    }

    /// The last dimension is contiguous (stride 1), as every kernel reads whole head rows.
    pub fn expect_unit_last_stride(&self) -> PyResult<()> {
        match (self.shape.last(), self.strides.last()) {
            (Some(&d), Some(&s)) if d > 1 && s != 1 => Err(value_err(format!(
                "{}: the last dimension must be contiguous (stride 1), got stride {s}",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// A device address must never become a host slice (it would fault, or worse, alias).
    fn expect_host(&self) -> PyResult<()> {
        match self.cuda {
            None => Ok(()),
            Some(i) => Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
                "{}: internal error: host access to a tensor on cuda:{i}",
                self.name
            ))),
        }
    }

    pub fn expect_writable(&self) -> PyResult<()> {
        if !self.writable {
            return Err(value_err(format!("{}: is read-only", self.name)));
        }
        Ok(())
    }

    /// The addressed span as a slice of `T` (element `i` of the span at offset `i`).
    ///
    /// # Safety
    /// The descriptor must describe live memory of the caller for the duration of the borrow
    /// (the Python layer holds the array), and nothing may write it meanwhile.
    pub unsafe fn slice<T: Elem>(&self) -> PyResult<&[T]> {
        self.expect_host()?;
        self.expect_dtype(&[T::DT])?;
        let n = self.span()?;
        if n == 0 {
            return Ok(&[]);
        }
        // SAFETY: the span was checked to fit the address space and the caller guarantees it
        // is live and unaliased by writers; the address is aligned (from_raw).
        Ok(unsafe { std::slice::from_raw_parts(self.addr as *const T, n) })
    }

    /// Like [`Self::slice`], mutable; the tensor must be writable.
    ///
    /// # Safety
    /// As [`Self::slice`], and no other slice of this memory may be alive (see [`disjoint`]).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<T: Elem>(&self) -> PyResult<&mut [T]> {
        self.expect_host()?;
        self.expect_dtype(&[T::DT])?;
        self.expect_writable()?;
        let n = self.span()?;
        if n == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as `slice`; exclusivity is the caller's contract.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, n) })
    }
}

/// Refuses outputs whose memory overlaps any other tensor of the call: the ops read their
/// inputs while writing, and Rust slices must not alias.
pub fn disjoint(outputs: &[&Tensor], all: &[&Tensor]) -> PyResult<()> {
    for o in outputs {
        let (a0, a1) = o.byte_range()?;
        for t in all {
            if std::ptr::eq(*o, *t) {
                continue;
            }
            let (b0, b1) = t.byte_range()?;
            if a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1 {
                return Err(value_err(format!(
                    "{}: overlaps the memory of {} (outputs must not alias inputs)",
                    o.name, t.name
                )));
            }
        }
    }
    Ok(())
}

/// Element types with a dtype tag, readable as f32.
pub trait Elem: Copy + Send + Sync + 'static {
    const DT: Dt;
    /// The value as f32 (exact for the float types).
    fn widen(self) -> f32;
    /// Rounds an f32 to this type (nearest even).
    fn narrow(x: f32) -> Self;
}

impl Elem for f16 {
    const DT: Dt = Dt::F16;
    fn widen(self) -> f32 {
        f16::to_f32(self)
    }
    fn narrow(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl Elem for bf16 {
    const DT: Dt = Dt::Bf16;
    fn widen(self) -> f32 {
        bf16::to_f32(self)
    }
    fn narrow(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl<F: ferrinfer::fp8::Fp8Format> Elem for ferrinfer::fp8::Fp8<F> {
    const DT: Dt = match F::KIND {
        ferrinfer::fp8::Fp8Kind::E4m3 => Dt::F8E4m3,
        ferrinfer::fp8::Fp8Kind::E5m2 => Dt::F8E5m2,
    };
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn narrow(x: f32) -> Self {
        Self::quantize(x, 1.0)
    }
}

impl Elem for f32 {
    const DT: Dt = Dt::F32;
    fn widen(self) -> f32 {
        self
    }
    fn narrow(x: f32) -> Self {
        x
    }
}

impl Elem for i32 {
    const DT: Dt = Dt::I32;
    fn widen(self) -> f32 {
        self as f32
    }
    fn narrow(x: f32) -> Self {
        x as i32
    }
}

/// A 1-d int32 host array (indptr, indices, ...) copied into a `Vec` (metadata is small and
/// the CSR checks want plain slices).
pub fn index_array(raw: RawTensor) -> PyResult<Vec<i32>> {
    let t = Tensor::from_raw(raw)?;
    t.expect_rank(1, "of int32")?;
    t.expect_dtype(&[Dt::I32])?;
    let s = t.strides[0];
    // SAFETY: the Python caller holds the array for this call and nothing writes it.
    let all = unsafe { t.slice::<i32>()? };
    Ok((0..t.shape[0]).map(|i| all[i * s]).collect())
}

//! GGUF model files: a memory-mapped file, its parsed directory ([`GgufFile`]), and tensors
//! converted to f32 on request.
mod reader;
mod types;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use reader::{GgufFile, TensorInfo, Value};
pub use types::{decode_block, GgmlType};

use crate::error::{EngineError, Result};

/// An open GGUF file.
pub struct ModelFile {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Metadata and tensor directory.
    pub gguf: GgufFile,
}

impl ModelFile {
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e| EngineError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this process; ferrinfer never writes
        // the file. Another process truncating it while mapped would fault (SIGBUS), as with any
        // mmap-based loader (llama.cpp, candle); the bytes are only read while loading.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let gguf = GgufFile::parse(&map)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            gguf,
        })
    }

    /// Where it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory entry of tensor `name`.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.gguf
            .tensor(name)
            .ok_or_else(|| EngineError::Model(format!("tensor {name} is missing")))
    }

    /// Tensor `name` as f32, checked to have ggml dimensions `dims` (fastest-varying first).
    pub fn tensor_f32(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        if t.dims.len() != dims.len() || t.dims.iter().zip(dims).any(|(&a, &b)| a != b as u64) {
            return Err(EngineError::Model(format!(
                "tensor {name} has dimensions {:?}, expected {dims:?}",
                t.dims
            )));
        }
        let n = t.elements() as usize;
        let mut out = Vec::new();
        out.try_reserve_exact(n)
            .map_err(|_| EngineError::Model(format!("tensor {name}: cannot allocate {n} f32")))?;
        out.resize(n, 0.0);
        let src = &self.map[t.range.clone()];
        // Convert in parallel, a row at a time (rows are whole blocks).
        let row = t.dims[0] as usize;
        let row_bytes =
            t.ty.bytes_for(row as u64, row as u64)
                .map_err(EngineError::Model)? as usize;
        out.par_chunks_mut(row)
            .zip(src.par_chunks(row_bytes))
            .try_for_each(|(o, s)| t.ty.to_f32(s, o))
            .map_err(|e| EngineError::Model(format!("tensor {name}: {e}")))?;
        Ok(out)
    }

    /// The raw bytes of tensor `name` (checked to have ggml dimensions `dims`) and its format.
    pub fn tensor_bytes(&self, name: &str, dims: &[usize]) -> Result<(GgmlType, &[u8])> {
        let t = self.info(name)?;
        if t.dims.len() != dims.len() || t.dims.iter().zip(dims).any(|(&a, &b)| a != b as u64) {
            return Err(EngineError::Model(format!(
                "tensor {name} has dimensions {:?}, expected {dims:?}",
                t.dims
            )));
        }
        Ok((t.ty, &self.map[t.range.clone()]))
    }

    /// A metadata value, required.
    pub fn meta(&self, key: &str) -> Result<&Value> {
        self.gguf
            .get(key)
            .ok_or_else(|| EngineError::Model(format!("metadata {key} is missing")))
    }
}

//! The GGUF container (version 2 and 3): header, metadata key/values, tensor directory.
//!
//! Every read is bounds-checked against the file: a truncated or hostile file is a typed
//! [`EngineError::Gguf`], never a panic or an out-of-bounds read. Counts taken from the file
//! (array lengths, tensor counts, dimensions) are checked against the bytes that remain before
//! anything is allocated for them, so a header claiming 2^60 entries cannot exhaust memory.
use std::collections::HashMap;

use super::types::GgmlType;
use crate::error::{EngineError, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's limit on tensor rank.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array (of one element type).
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's directory entry.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// ggml dimensions, fastest-varying first (`[in_features, out_features]` for a matrix).
    pub dims: Vec<u64>,
    /// Element or block format.
    pub ty: GgmlType,
    /// Byte range of the data within the file (already checked to lie inside it).
    pub range: std::ops::Range<usize>,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: metadata and tensor directory; the data stays in the caller's bytes.
#[derive(Debug)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: HashMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn bad(what: impl Into<String>) -> EngineError {
    EngineError::Gguf(what.into())
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| bad(format!("file ends inside {what} (offset {})", self.pos)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items of at least `min_item_bytes` each: refused if the rest of the file
    /// cannot hold that many (before anything is allocated for them).
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes as u64) > left {
            return Err(bad(format!(
                "{what} {n} does not fit in the {left} bytes left"
            )));
        }
        usize::try_from(n).map_err(|_| bad(format!("{what} {n} too large")))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.array::<1>("u8")?[0] as u64),
            1 => Value::I64(self.array::<1>("i8")?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.array("u16")?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.array("i16")?) as i64),
            4 => Value::U64(self.u32("u32")? as u64),
            5 => Value::I64(i32::from_le_bytes(self.array("i32")?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.array("f32")?) as f64),
            7 => Value::Bool(match self.array::<1>("bool")?[0] {
                0 => false,
                1 => true,
                b => return Err(bad(format!("bool byte {b}"))),
            }),
            8 => Value::Str(self.string("string")?),
            9 => {
                if depth > 0 {
                    return Err(bad("nested arrays are not supported"));
                }
                let et = self.u32("array type")?;
                let min = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => 1,
                };
                let n = self.count("array length", min)?;
                let mut v = Vec::new();
                v.try_reserve_exact(n)
                    .map_err(|_| bad(format!("array of {n} values")))?;
                for _ in 0..n {
                    v.push(self.value(et, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64("u64")?),
            11 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            12 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            t => return Err(bad(format!("unknown metadata type {t}"))),
        })
    }
}

impl GgufFile {
    /// Parses the header, metadata and tensor directory of `bytes` (a whole GGUF file) and
    /// checks that every tensor's data lies inside the file.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4, "magic")? != MAGIC {
            return Err(bad("not a GGUF file (magic)"));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("version {version} (supported: 2, 3)")));
        }
        // A tensor entry is at least 8 (name length) + 4 (rank) + 4 (type) + 8 (offset) bytes.
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 12)?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let v = c.value(ty, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(bad(format!("duplicate metadata key {key}")));
            }
        }
        let mut raw = Vec::new();
        raw.try_reserve_exact(n_tensors)
            .map_err(|_| bad("tensor directory too large"))?;
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let rank = c.u32("tensor rank")?;
            if rank == 0 || rank > MAX_DIMS {
                return Err(bad(format!("tensor {name}: rank {rank}")));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(c.u64("tensor dimension")?);
            }
            let ty = GgmlType::from_id(c.u32("tensor type")?)
                .map_err(|id| bad(format!("tensor {name}: unknown ggml type {id}")))?;
            let offset = c.u64("tensor offset")?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| bad("general.alignment is not a power of two"))?,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for (name, dims, ty, offset) in raw {
            if !names.insert(name.clone()) {
                return Err(bad(format!("duplicate tensor {name}")));
            }
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor {name}: element count overflows")))?;
            let nbytes = ty
                .bytes_for(elements, dims[0])
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "tensor {name}: offset {offset} not a multiple of {alignment}"
                )));
            }
            let start = data_start
                .checked_add(offset)
                .ok_or_else(|| bad(format!("tensor {name}: offset {offset}")))?;
            let end = start
                .checked_add(nbytes)
                .filter(|&e| e <= bytes.len() as u64)
                .ok_or_else(|| {
                    bad(format!(
                        "tensor {name}: data [{start}, {start}+{nbytes}) beyond the file's {} bytes",
                        bytes.len()
                    ))
                })?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                range: start as usize..end as usize,
            });
        }
        Ok(Self {
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF v3 file: one string, one u32 array, one F32 tensor [2, 3].
    pub(crate) fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, t: &str| {
            b.extend_from_slice(&(t.len() as u64).to_le_bytes());
            b.extend_from_slice(t.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "x.list");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        b.extend_from_slice(&9u32.to_le_bytes());
        s(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..6 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_a_small_file() {
        let b = tiny();
        let f = GgufFile::parse(&b).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(
            f.get("general.architecture").unwrap().as_str(),
            Some("llama")
        );
        let list = f.get("x.list").unwrap().as_array().unwrap();
        assert_eq!(list, &[Value::U64(7), Value::U64(9)]);
        let t = f.tensor("w").unwrap();
        assert_eq!(t.dims, vec![2, 3]);
        assert_eq!(t.range.len(), 24);
        assert_eq!(&b[t.range.clone()][4..8], &1f32.to_le_bytes());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = tiny();
        for n in 0..b.len() {
            assert!(
                GgufFile::parse(&b[..n]).is_err(),
                "prefix of {n} bytes parsed"
            );
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut b = tiny();
        // tensor count = 2^62
        b[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = GgufFile::parse(&b).unwrap_err();
        assert!(e.to_string().contains("tensor count"), "{e}");
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let b = tiny();
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut c = b.clone();
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = (state as usize) % c.len();
                c[i] = (state >> 32) as u8;
            }
            let _ = GgufFile::parse(&c);
        }
    }
}

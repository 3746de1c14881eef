//! Head geometry shared by every attention op.
use crate::error::{Error, Result};

/// Query/KV head counts and head dimension. Query head `h` reads KV head `h / group()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeadConfig {
    /// Query (and output) heads.
    pub num_qo_heads: usize,
    /// Key/value heads (GQA: fewer than query heads; MQA: 1).
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl HeadConfig {
    /// Builds and validates a head configuration (`num_qo_heads` a positive multiple of
    /// `num_kv_heads`, positive head dim, a token's row of q — `num_qo_heads · head_dim`
    /// elements — at most 2^31 − 1, see [`HeadConfig::validate`]).
    pub fn new(num_qo_heads: usize, num_kv_heads: usize, head_dim: usize) -> Result<Self> {
        let h = Self {
            num_qo_heads,
            num_kv_heads,
            head_dim,
        };
        h.validate("heads")?;
        Ok(h)
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.num_qo_heads / self.num_kv_heads.max(1)
    }

    /// Checks the invariants for op `op`.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.num_kv_heads == 0 || self.num_qo_heads == 0 {
            return Err(Error::invalid(op, "heads", "head counts must be positive"));
        }
        if !self.num_qo_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::invalid(
                op,
                "heads",
                format!(
                    "num_qo_heads {} is not a multiple of num_kv_heads {}",
                    self.num_qo_heads, self.num_kv_heads
                ),
            ));
        }
        if self.head_dim == 0 {
            return Err(Error::invalid(op, "head_dim", "must be positive"));
        }
        // The kernels address a token's row of q/out (and so of K/V, which is no wider) with
        // 32-bit offsets, and every size product downstream (tokens × row, both ≤ 2^31 − 1)
        // then fits in 64 bits: the limit is checked once, here, where the geometry enters.
        let row = self.num_qo_heads.checked_mul(self.head_dim);
        if row.is_none_or(|r| r > crate::checked::I32_LIMIT) {
            return Err(Error::invalid(
                op,
                "heads",
                format!(
                    "num_qo_heads {} × head_dim {} exceeds 2^31-1 elements per token",
                    self.num_qo_heads, self.head_dim
                ),
            ));
        }
        Ok(())
    }
}

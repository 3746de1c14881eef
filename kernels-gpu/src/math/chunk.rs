//! Index arithmetic for splitting a KV range across CTAs (split-KV).

/// `ceil(a / b)` for `b > 0`.
#[inline(always)]
pub const fn ceil_div(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// The half-open token range `[begin, end)` of chunk `c` when `[kv_begin, kv_end)` is cut into
/// chunks of `chunk_len` tokens (the last one may be shorter; chunks past the end are empty).
#[inline(always)]
pub fn chunk_range(kv_begin: u32, kv_end: u32, chunk_len: u32, c: u32) -> (u32, u32) {
    let begin = kv_begin.saturating_add(c.saturating_mul(chunk_len));
    let begin = if begin > kv_end { kv_end } else { begin };
    let end = begin.saturating_add(chunk_len);
    let end = if end > kv_end { kv_end } else { end };
    (begin, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_partition_the_range() {
        for &(b, e) in &[
            (0u32, 0u32),
            (0, 1),
            (5, 1000),
            (0, 4096),
            (17, 18),
            (3, 131_072),
        ] {
            for &len in &[1u32, 7, 64, 256, 1000, 5000] {
                let n = ceil_div(e - b, len).max(1);
                let mut next = b;
                for c in 0..n {
                    let (cb, ce) = chunk_range(b, e, len, c);
                    assert_eq!(cb, next);
                    assert!(ce >= cb && ce - cb <= len);
                    next = ce;
                }
                assert_eq!(next, e);
                assert_eq!(chunk_range(b, e, len, n + 3), (e, e));
            }
        }
    }
}

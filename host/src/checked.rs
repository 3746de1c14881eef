//! Checked size arithmetic, limits and fallible allocation: the one set of helpers every size
//! product, offset, i32/u32 table entry and caller-sized allocation goes through (issue #15).
//!
//! Why one module: a size computed with plain `*` wraps in release builds (and panics with
//! overflow checks on), and a `vec![x; n]` of a caller-chosen `n` aborts the process when the
//! allocation fails. Both turn one bad request into silent corruption or a dead server. Every
//! helper here returns the crate's typed [`Error`] instead: [`Error::Overflow`] for arithmetic
//! that does not fit, [`Error::InvalidArgument`] naming the limit for values beyond an i32/u32
//! table, [`Error::OutOfMemory`] for allocations the allocator refuses.
use crate::error::{Error, Result};

/// Largest count that may end up in an `i32` table (`kv_indptr`, positions, lengths...).
pub(crate) const I32_LIMIT: usize = i32::MAX as usize;

/// `a · b`, or [`Error::Overflow`] naming `what`.
pub(crate) fn mul(op: &'static str, what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or(Error::Overflow { op, what })
}

/// `a + b`, or [`Error::Overflow`] naming `what`.
pub(crate) fn add(op: &'static str, what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_add(b).ok_or(Error::Overflow { op, what })
}

/// The product of `factors`, or [`Error::Overflow`] naming `what`.
pub(crate) fn product(op: &'static str, what: &'static str, factors: &[usize]) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| mul(op, what, acc, f))
}

/// The sum of `terms`, or [`Error::Overflow`] naming `what`.
pub(crate) fn sum(
    op: &'static str,
    what: &'static str,
    terms: impl IntoIterator<Item = usize>,
) -> Result<usize> {
    terms
        .into_iter()
        .try_fold(0usize, |acc, t| add(op, what, acc, t))
}

/// `x` as an `i32` table entry, or [`Error::InvalidArgument`] naming the 2^31 − 1 limit.
pub(crate) fn to_i32(op: &'static str, what: &'static str, x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| Error::invalid(op, what, format!("{x} exceeds 2^31-1")))
}

/// `x` as a `u32` kernel parameter, or [`Error::InvalidArgument`] naming the 2^32 − 1 limit.
pub(crate) fn to_u32(op: &'static str, what: &'static str, x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::invalid(op, what, format!("{x} exceeds 2^32-1")))
}

/// Checks `x ≤ limit` (a value entering an i32 table or a kernel parameter), or returns
/// [`Error::InvalidArgument`] naming the limit.
pub(crate) fn at_most(
    op: &'static str,
    what: &'static str,
    x: usize,
    limit: usize,
) -> Result<usize> {
    if x > limit {
        return Err(Error::invalid(
            op,
            what,
            format!("{x} exceeds the limit {limit}"),
        ));
    }
    Ok(x)
}

/// The machine's physical memory in bytes (Linux: `MemTotal` of /proc/meminfo), read once;
/// `None` where it cannot be read.
fn physical_memory() -> Option<u64> {
    static MEM: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MEM.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// Grows `v` by room for `additional` more elements, or [`Error::OutOfMemory`]: a size the
/// allocator refuses is an error, never an abort. A size beyond the machine's physical memory
/// is refused before asking the allocator: under Linux's memory overcommit such a request can
/// succeed and the process be killed later, when the memory is touched.
pub(crate) fn reserve<T>(
    v: &mut Vec<T>,
    op: &'static str,
    what: &'static str,
    additional: usize,
) -> Result<()> {
    let bytes = additional.saturating_mul(size_of::<T>());
    let oom = || Error::OutOfMemory { op, what, bytes };
    if physical_memory().is_some_and(|m| bytes as u64 > m) {
        return Err(oom());
    }
    v.try_reserve(additional).map_err(|_| oom())
}

/// An empty vector with room for `n` elements, or [`Error::OutOfMemory`].
pub(crate) fn with_capacity<T>(op: &'static str, what: &'static str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    reserve(&mut v, op, what, n)?;
    Ok(v)
}

/// `n` copies of `value` (`vec![value; n]` that returns [`Error::OutOfMemory`] instead of
/// aborting).
pub(crate) fn filled<T: Clone>(
    op: &'static str,
    what: &'static str,
    n: usize,
    value: T,
) -> Result<Vec<T>> {
    let mut v = with_capacity(op, what, n)?;
    v.resize(n, value);
    Ok(v)
}

/// Collects `iter` (of exactly `n` items) into a vector allocated fallibly.
pub(crate) fn collect<T>(
    op: &'static str,
    what: &'static str,
    n: usize,
    iter: impl IntoIterator<Item = T>,
) -> Result<Vec<T>> {
    let mut v = with_capacity(op, what, n)?;
    v.extend(iter);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_limits_are_typed_errors() {
        assert!(matches!(
            mul("t", "x", usize::MAX, 2),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            product("t", "x", &[1 << 32, 1 << 32]),
            Err(Error::Overflow { .. })
        ));
        assert_eq!(product("t", "x", &[3, 4, 5]).unwrap(), 60);
        assert!(matches!(
            sum("t", "x", [usize::MAX, 1]),
            Err(Error::Overflow { .. })
        ));
        assert!(matches!(
            to_i32("t", "x", 1 << 31),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(to_i32("t", "x", (1 << 31) - 1).unwrap(), i32::MAX);
        assert!(matches!(
            to_u32("t", "x", 1 << 32),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            at_most("t", "x", 5, 4),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    fn impossible_allocations_are_out_of_memory() {
        // 2^62 u64s = 2^65 bytes: no allocator can serve it; must not abort.
        let e = filled("t", "x", 1usize << 62, 0u64).unwrap_err();
        assert!(matches!(e, Error::OutOfMemory { .. }), "{e}");
        assert_eq!(filled("t", "x", 3, 7u8).unwrap(), vec![7, 7, 7]);
    }
}

//! Division by a runtime divisor without a divide instruction (Granlund–Montgomery): the host
//! computes a multiplier and shift once, the device does `mul.hi` + add + shift. Used for
//! `position / page_size` in the paged kernels.

/// A precomputed divider for `n / d` with `n < 2^31`, `d ≥ 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastDiv {
    /// The divisor.
    pub d: u32,
    /// Magic multiplier.
    pub m: u32,
    /// Shift (`ceil(log2 d)`).
    pub l: u32,
}

impl FastDiv {
    /// Divider for `d` (`d = 0` is treated as 1).
    pub const fn new(d: u32) -> Self {
        let d = if d == 0 { 1 } else { d };
        let mut l = 0u32;
        while (1u64 << l) < d as u64 {
            l += 1;
        }
        // m = floor(2^32 (2^l − d) / d) + 1
        let m = ((((1u64 << l) - d as u64) << 32) / d as u64 + 1) as u32;
        Self { d, m, l }
    }

    /// `n / d` for `n < 2^31`.
    #[inline(always)]
    pub fn div(&self, n: u32) -> u32 {
        let t = ((n as u64 * self.m as u64) >> 32) as u32;
        ((t as u64 + n as u64) >> self.l) as u32
    }

    /// `(n / d, n % d)` for `n < 2^31`.
    #[inline(always)]
    pub fn divmod(&self, n: u32) -> (u32, u32) {
        let q = self.div(n);
        (q, n - q * self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_divisors_exhaustive_prefix() {
        for d in 1..=300u32 {
            let f = FastDiv::new(d);
            for n in 0..5000u32 {
                assert_eq!(f.divmod(n), (n / d, n % d), "{n} / {d}");
            }
            let n = (1u32 << 31) - 1;
            assert_eq!(f.div(n), n / d);
        }
    }

    proptest! {
        #[test]
        fn matches_division(d in 1u32..u32::MAX, n in 0u32..(1 << 31)) {
            prop_assert_eq!(FastDiv::new(d).divmod(n), (n / d, n % d));
        }
    }
}

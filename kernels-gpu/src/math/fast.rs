//! Special functions used by the kernels: `exp2`, `log2`, reciprocal, `tanh`.
//!
//! Device: one PTX instruction each (`ex2.approx.ftz.f32`, `lg2.approx.ftz.f32`,
//! `rcp.approx.ftz.f32`, `tanh.approx.f32`; see `arch::fast`). Host (feature `std` or tests):
//! the `std` functions, so the CPU backend computes the same formulas with correctly rounded
//! building blocks. The approximations' errors (2 ulp for ex2, ~2^-11 relative for tanh) are far
//! below bf16 resolution.

/// 2^x. `exp2(-inf) = 0`.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::ex2_approx(x)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.exp2()
    }
}

/// log2(x). `log2(0) = -inf`.
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::lg2_approx(x)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.log2()
    }
}

/// 1/x.
#[inline(always)]
pub fn rcp(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::rcp_approx(x)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        1.0 / x
    }
}

/// tanh(x).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::tanh_approx(x)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.tanh()
    }
}

/// √x, correctly rounded (`sqrt.rn.f32` on the device).
#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::sqrt_rn(x)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        x.sqrt()
    }
}

/// SiLU, `g · σ(g) = g / (1 + e^{−g})`, with `e^{−g}` as `exp2(−g·log2 e)` (on the device the
/// 2-ulp `ex2.approx`; relative error below 10⁻⁶ for `|g| ≤ 16`) and a correctly rounded
/// division. Large negative `g` gives `−0` (`e^{−g}` overflows to `inf`), large positive `g`
/// gives `g`.
#[inline(always)]
pub fn silu(g: f32) -> f32 {
    g / (1.0 + exp2(-g * core::f32::consts::LOG2_E))
}

/// `a·b + c` with one rounding (`fma.rn.f32` on the device).
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::fma(a, b, c)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        a.mul_add(b, c)
    }
}

/// max without NaN special-casing (inputs here are never NaN). On the device one `max.f32`
/// (`FMNMX`): written as a compare and select, LLVM kept both (`FSETP` + `FSEL` in SASS).
#[inline(always)]
pub fn fmax(a: f32, b: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::arch::fast::max(a, b)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        if a > b {
            a
        } else {
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_log2_edges() {
        assert_eq!(exp2(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2(0.0), 1.0);
        assert_eq!(log2(0.0), f32::NEG_INFINITY);
        assert_eq!(log2(8.0), 3.0);
        assert_eq!(rcp(4.0), 0.25);
        assert!((tanh(0.5) - 0.462_117_16).abs() < 1e-6);
        assert_eq!(fmax(f32::NEG_INFINITY, -3.0), -3.0);
        assert_eq!(sqrt(6.25), 2.5);
    }

    #[test]
    fn silu_matches_its_definition() {
        for i in -1600..=1600 {
            let g = i as f32 * 0.01;
            let want = g as f64 / (1.0 + (-g as f64).exp());
            let got = silu(g) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "{g}: {got} vs {want}"
            );
        }
        assert_eq!(silu(0.0), 0.0);
        assert_eq!(silu(-200.0), 0.0);
        assert_eq!(silu(200.0), 200.0);
    }
}

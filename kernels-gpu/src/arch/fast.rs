//! Special-function-unit approximations (`math::fast` is the portable front end).
use core::arch::asm;

macro_rules! unary_f32 {
    ($(#[$doc:meta] $name:ident => $ins:literal;)*) => {$(
        #[$doc]
        #[inline(always)]
        pub fn $name(x: f32) -> f32 {
            let r: f32;
            // SAFETY: register-only arithmetic.
            unsafe { asm!(concat!($ins, " {0}, {1};"), out(reg32) r, in(reg32) x, options(pure, nomem, nostack)) };
            r
        }
    )*};
}

unary_f32! {
    /// `ex2.approx.ftz.f32`: 2^x (max 2 ulp error; `-inf` → 0).
    ex2_approx => "ex2.approx.ftz.f32";
    /// `lg2.approx.ftz.f32`: log2(x) (`0` → `-inf`).
    lg2_approx => "lg2.approx.ftz.f32";
    /// `rcp.approx.ftz.f32`: 1/x (1 ulp).
    rcp_approx => "rcp.approx.ftz.f32";
    /// `tanh.approx.f32` (sm_75+): tanh(x), relative error about 2^-11.
    tanh_approx => "tanh.approx.f32";
    /// `sin.approx.ftz.f32`: sin(x), abs. error ~2^-21 on [-π, π] (reduce first: `sincos_fast`).
    sin_approx => "sin.approx.ftz.f32";
    /// `cos.approx.ftz.f32`: cos(x), as `sin_approx`.
    cos_approx => "cos.approx.ftz.f32";
}

/// `fma.rn.f32`: `a*b + c` with one rounding.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let r: f32;
    // SAFETY: register-only arithmetic.
    unsafe {
        asm!("fma.rn.f32 {0}, {1}, {2}, {3};", out(reg32) r, in(reg32) a, in(reg32) b, in(reg32) c,
             options(pure, nomem, nostack))
    };
    r
}

/// `sqrt.rn.f32`: √x, correctly rounded.
#[inline(always)]
pub fn sqrt_rn(x: f32) -> f32 {
    let r: f32;
    // SAFETY: register-only arithmetic.
    unsafe {
        asm!("sqrt.rn.f32 {0}, {1};", out(reg32) r, in(reg32) x, options(pure, nomem, nostack))
    };
    r
}

/// `max.f32`: the larger of `a` and `b` (`FMNMX`).
#[inline(always)]
pub fn max(a: f32, b: f32) -> f32 {
    let r: f32;
    // SAFETY: register-only arithmetic.
    unsafe {
        asm!("max.f32 {0}, {1}, {2};", out(reg32) r, in(reg32) a, in(reg32) b,
             options(pure, nomem, nostack))
    };
    r
}

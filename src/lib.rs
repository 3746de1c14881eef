//! ferrinfer-harness: helpers shared by the GPU-vs-oracle tests (`tests/`) and the benchmarks
//! (`benches/`): GPU discovery with the skip/require policy, random data, the one tolerance
//! table, and error statistics.
use std::io::Write;
use std::sync::OnceLock;

pub use ferrinfer::reference::{lse_tolerance, tolerance, Tolerance};
use ferrinfer::reference::{max_abs, rel_l2};
use ferrinfer::runtime::Discovery;
use ferrinfer::{Float16, Gpu};
use rand::{Rng, SeedableRng};

pub mod fp8;
pub mod merge;
pub mod paged;
pub mod record;
pub mod rope;

/// Environment variable that turns a missing GPU into a test failure.
pub const REQUIRE_GPU_ENV: &str = "FERRINFER_REQUIRE_GPU";

/// Whether `FERRINFER_REQUIRE_GPU=1` is set.
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}

static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();

/// The test GPU, discovered once per process.
///
/// Every test that calls this is `#[ignore = "needs a CUDA GPU"]` (`scripts/check-gpu-ignores.sh`
/// checks it), so it runs only with `--include-ignored`/`--ignored`, as the GPU runner passes.
/// Without a GPU this prints `skipped: no CUDA device (<reason>)` and returns `None`, or
/// panics when `FERRINFER_REQUIRE_GPU=1` (so a GPU run can never pass by skipping).
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    let found = GPU.get_or_init(|| match Gpu::discover(0) {
        Ok(Discovery::Found(g)) => Ok(g),
        Ok(Discovery::NotFound(why)) => Err(why),
        Err(e) => Err(format!("GPU discovery failed: {e}")),
    });
    match found {
        Ok(g) => Some(g.clone()),
        Err(why) => {
            if gpu_required() {
                panic!("{test}: {REQUIRE_GPU_ENV}=1 but there is no usable GPU: {why}");
            }
            // Written straight to the process's stderr: libtest captures `println!`/`eprintln!`,
            // and a skip must be visible in every test log.
            let _ = writeln!(std::io::stderr(), "{test}: skipped: no CUDA device ({why})");
            None
        }
    }
}

/// The `main` of a GPU benchmark: runs `run` on GPU 0 and exits 1 if it fails. Without a GPU it
/// prints `<bench> bench: skipped: no CUDA device (<reason>)` and exits 0 — or 1 when
/// `FERRINFER_REQUIRE_GPU=1`, so a GPU run can never pass by skipping.
pub fn bench_main<E: std::fmt::Display>(bench: &str, run: impl FnOnce(&Gpu) -> Result<(), E>) {
    match Gpu::discover(0) {
        Ok(Discovery::Found(g)) => {
            if let Err(e) = run(&g) {
                eprintln!("{bench} bench failed: {e}");
                std::process::exit(1);
            }
        }
        Ok(Discovery::NotFound(why)) => {
            println!("{bench} bench: skipped: no CUDA device ({why})");
            if gpu_required() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("{bench} bench: GPU discovery failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Proptest case count: `PROPTEST_CASES` when set (the GPU bundle lowers it under the
/// sanitizer), else `default`.
pub fn proptest_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seeded RNG (`rand::rngs::StdRng`).
pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale]`, rounded to `T`; returns the rounded values and their
/// exact f64 images (what the oracle must be fed). Never all zeros.
pub fn random_values<T: Float16>(rng: &mut impl Rng, n: usize, scale: f32) -> (Vec<T>, Vec<f64>) {
    let v: Vec<T> = (0..n)
        .map(|_| T::from_f32(rng.random_range(-scale..=scale)))
        .collect();
    let f = v.iter().map(|x| x.to_f32() as f64).collect();
    (v, f)
}

/// f64 images of 16-bit values.
pub fn to_f64<T: Float16>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| x.to_f32() as f64).collect()
}

/// Errors of one output against the oracle. `Default` is the identity of [`ErrorStats::worst`]
/// (zero errors, lse within bounds).
#[derive(Clone, Copy, Debug)]
pub struct ErrorStats {
    /// ‖out − ref‖ / ‖ref‖.
    pub rel_l2: f64,
    /// max |out − ref|.
    pub max_abs: f64,
    /// max |lse − lse_ref| (0 when lse is not compared).
    pub lse_abs: f64,
    /// Whether any output or lse value was NaN (unwritten poison or a real NaN).
    pub has_nan: bool,
    /// Whether every lse value is within [`lse_tolerance`] of its reference (−inf must match
    /// exactly).
    pub lse_ok: bool,
}

impl Default for ErrorStats {
    fn default() -> Self {
        ErrorStats {
            rel_l2: 0.0,
            max_abs: 0.0,
            lse_abs: 0.0,
            has_nan: false,
            lse_ok: true,
        }
    }
}

impl ErrorStats {
    /// Compares `out` (and optionally `lse`) with the oracle.
    pub fn compare(out: &[f64], reference: &[f64], lse: Option<(&[f64], &[f64])>) -> ErrorStats {
        let mut s = ErrorStats {
            rel_l2: rel_l2(out, reference),
            max_abs: max_abs(out, reference),
            has_nan: out.iter().any(|x| x.is_nan()),
            ..Default::default()
        };
        if let Some((l, r)) = lse {
            s.has_nan |= l.iter().any(|x| x.is_nan());
            s.lse_abs = max_abs(l, r);
            s.lse_ok = l.iter().zip(r).all(|(&a, &b)| {
                if b.is_finite() {
                    (a - b).abs() <= lse_tolerance(b)
                } else {
                    a == b
                }
            });
        }
        s
    }

    /// Whether these errors are within `tol` (and the lse bound, when lse was compared).
    pub fn within(&self, tol: Tolerance) -> bool {
        !self.has_nan && self.lse_ok && self.rel_l2 <= tol.rel_l2 && self.max_abs <= tol.max_abs
    }

    /// Panics (naming `case`) unless these errors are within the tolerance of `dtype`.
    pub fn assert_within(&self, dtype: ferrinfer::DType, case: &dyn std::fmt::Debug) {
        let tol = tolerance(dtype);
        assert!(
            self.within(tol),
            "{dtype} {case:?}: {self:?} exceeds {tol:?}"
        );
    }

    /// Folds another case into a worst-case summary.
    pub fn worst(self, o: ErrorStats) -> ErrorStats {
        ErrorStats {
            rel_l2: self.rel_l2.max(o.rel_l2),
            max_abs: self.max_abs.max(o.max_abs),
            lse_abs: self.lse_abs.max(o.lse_abs),
            has_nan: self.has_nan || o.has_nan,
            lse_ok: self.lse_ok && o.lse_ok,
        }
    }
}

/// Benchmarks: shuffles page ids in place, deterministically (xorshift64 seeded with `x`), so
/// every run reads the pool in the same random page order.
pub fn shuffle_pages(v: &mut [i32], mut x: u64) {
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Benchmarks: page tables for `batch` sequences of `len` tokens each over pages of
/// `page_size`, pages in random order ([`shuffle_pages`] with `seed`); returns the tables and
/// the number of pages the pool needs.
pub fn random_page_tables(
    batch: usize,
    len: usize,
    page_size: usize,
    seed: u64,
) -> (ferrinfer::kv::BatchPages, usize) {
    let per = len.div_ceil(page_size);
    let mut ids: Vec<i32> = (0..(batch * per) as i32).collect();
    shuffle_pages(&mut ids, seed);
    (
        ferrinfer::kv::BatchPages {
            kv_indptr: (0..=batch).map(|b| (b * per) as i32).collect(),
            kv_indices: ids,
            kv_last_page_len: vec![((len.max(1) - 1) % page_size + 1) as i32; batch],
        },
        batch * per,
    )
}

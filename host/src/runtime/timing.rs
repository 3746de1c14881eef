//! GPU timing with CUDA events: warm-up, then one event pair around every call, median and
//! percentiles. Used by the benchmarks and the CLI demo (never by tests).
use cudarc::driver::sys::CUevent_flags;

use super::{DeviceBuffer, Gpu};
use crate::error::{Error, Result};

/// Summary of repeated GPU timings, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    /// Median.
    pub median_us: f64,
    /// 10th percentile.
    pub p10_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// Number of timed calls.
    pub iters: usize,
}

impl Timing {
    /// Summarises raw samples (µs). `None` when empty.
    pub fn from_samples(mut s: Vec<f64>) -> Option<Timing> {
        if s.is_empty() {
            return None;
        }
        s.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        Some(Timing {
            median_us: at(0.5),
            p10_us: at(0.1),
            p90_us: at(0.9),
            iters: s.len(),
        })
    }
}

/// How [`Gpu::time_with`] isolates each timed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOpts {
    /// Warm-up calls (untimed).
    pub warmup: usize,
    /// Timed calls.
    pub iters: usize,
    /// Bytes of a buffer zeroed before each call to evict L2 (0 = no flush).
    pub flush_bytes: usize,
    /// Microseconds of GPU spin queued before each start event, so host launch gaps stay out
    /// of the figure (0 = none).
    pub spin_us: u32,
}

impl Gpu {
    /// Times `f(i)` per [`TimeOpts`]: optional L2 flush and spin before each start event, one
    /// event pair per call.
    pub fn time_with<F>(&self, o: TimeOpts, mut f: F) -> Result<Timing>
    where
        F: FnMut(usize) -> Result<()>,
    {
        let mut flush = if o.flush_bytes > 0 {
            Some(self.alloc::<u8>(o.flush_bytes)?)
        } else {
            None
        };
        for i in 0..o.warmup {
            f(i)?;
        }
        self.synchronize()?;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut samples = Vec::with_capacity(o.iters);
        for i in 0..o.iters {
            if let Some(b) = flush.as_mut() {
                self.stream().memset_zeros(&mut b.slice)?;
            }
            if o.spin_us > 0 {
                let dims = super::LaunchDims {
                    grid: (1, 1, 1),
                    block: (1, 1, 1),
                    smem_bytes: 0,
                };
                let p = ferrinfer_kernels::abi::SpinParams {
                    ns: o.spin_us as u64 * 1000,
                };
                // SAFETY: util_spin touches no memory.
                unsafe { self.launch("util_spin", dims, p)? };
            }
            let a = self.context().new_event(flags)?;
            let b = self.context().new_event(flags)?;
            a.record(self.stream())?;
            f(o.warmup + i)?;
            b.record(self.stream())?;
            samples.push(a.elapsed_ms(&b)? as f64 * 1e3);
        }
        Timing::from_samples(samples).ok_or(Error::invalid("time", "iters", "must be > 0"))
    }

    /// Times `f(i)` on this GPU's stream: `warmup` untimed calls, then `iters` calls each
    /// bracketed by its own event pair. `i` counts calls, so the caller can rotate inputs.
    pub fn time<F>(&self, warmup: usize, iters: usize, mut f: F) -> Result<Timing>
    where
        F: FnMut(usize) -> Result<()>,
    {
        for i in 0..warmup {
            f(i)?;
        }
        self.synchronize()?;
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(iters);
        for i in 0..iters {
            let a = self.context().new_event(flags)?;
            let b = self.context().new_event(flags)?;
            a.record(self.stream())?;
            f(warmup + i)?;
            b.record(self.stream())?;
            events.push((a, b));
        }
        let mut samples = Vec::with_capacity(iters);
        for (a, b) in &events {
            samples.push(a.elapsed_ms(b)? as f64 * 1e3);
        }
        Timing::from_samples(samples).ok_or(Error::invalid("time", "iters", "must be > 0"))
    }

    /// Device-to-device copy of `src` into `dst` (same length) on this GPU's stream.
    pub fn copy<T: cudarc::driver::DeviceRepr>(
        &self,
        src: &DeviceBuffer<T>,
        dst: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        if src.len() != dst.len() {
            return Err(Error::shape("copy", "dst length", src.len(), dst.len()));
        }
        self.stream().memcpy_dtod(&src.slice, &mut dst.slice)?;
        Ok(())
    }

    /// The copy roofline: bandwidth of a device-to-device copy of `bytes` bytes, counting bytes
    /// read plus bytes written, in TB/s (median of `iters`).
    pub fn copy_bandwidth(&self, bytes: usize, iters: usize) -> Result<(f64, Timing)> {
        let n = bytes / 4;
        let src = self.alloc::<u32>(n)?;
        let mut dst = self.alloc::<u32>(n)?;
        let t = self.time(3, iters, |_| self.copy(&src, &mut dst))?;
        Ok((2.0 * (n * 4) as f64 / (t.median_us * 1e-6) / 1e12, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let t = Timing::from_samples((1..=11).map(|x| x as f64).collect()).unwrap();
        assert_eq!(t.median_us, 6.0);
        assert_eq!(t.p10_us, 2.0);
        assert_eq!(t.p90_us, 10.0);
        assert!(Timing::from_samples(vec![]).is_none());
    }
}

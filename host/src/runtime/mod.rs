//! The CUDA runtime layer on `cudarc` (driver API, loaded at run time): device discovery,
//! context + stream, the kernel module, typed device buffers and the one typed launch path.
//!
//! No libcuda is needed to build or to run on a machine without a GPU: [`Gpu::discover`] checks
//! that the driver library opens before any driver call and reports "no GPU" as a value.
mod buffer;
mod context;
mod embed;
mod launch;
mod span;
mod staging;
mod tensor_map;
mod timing;

pub use buffer::DeviceBuffer;
pub use context::{Discovery, Gpu, GpuInfo, ModuleImage};
pub(crate) use launch::Kernel;
pub use launch::LaunchDims;
pub use span::DeviceSpan;
pub use staging::PinnedStaging;
pub(crate) use tensor_map::{encode_rows, RowsGeometry};
pub use timing::{TimeOpts, Timing};

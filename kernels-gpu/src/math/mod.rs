//! Pure math shared by the kernels and the host (CPU backend, planner, tests).
//!
//! Nothing here touches memory or threads: functions of numbers, so the host unit tests exercise
//! exactly what the device runs. Float special functions go through [`fast`], which maps to PTX
//! approximations on the device and to `std` on the host.
pub mod chunk;
pub mod fast;
pub mod fastdiv;
pub mod fp8;
pub mod frag;
pub mod frag_fp8;
pub mod layout;
pub mod softmax;
pub mod trig;
pub mod wgmma_layout;

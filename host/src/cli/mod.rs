//! The `ferrinfer` command line: `info`, `check`, `demo` (feature `cli`).
pub mod check;
pub mod demo;
pub mod info;
pub mod rand;

use crate::error::Result;
use crate::runtime::{Discovery, Gpu};

/// Finds GPU 0, or explains on stdout why there is none.
pub fn discover_or_say() -> Result<Option<Gpu>> {
    match Gpu::discover(0)? {
        Discovery::Found(g) => Ok(Some(g)),
        Discovery::NotFound(why) => {
            println!("no CUDA device: {why}");
            Ok(None)
        }
    }
}

//! `ferrinfer info`: driver, device, compute capability, SMs, memory, chosen kernel image, module
//! load time, and the kernel list with registers.
use crate::error::Result;
use crate::kernels::{entry_names, Arch};

/// Prints the report. Without a GPU, prints why and the embedded kernel list.
pub fn run() -> Result<()> {
    let gpu = super::discover_or_say()?;
    let Some(gpu) = gpu else {
        for arch in Arch::ALL {
            println!(
                "embedded {}: PTX {} KiB, cubin {}",
                arch.name(),
                arch.ptx().len() / 1024,
                arch.cubin()
                    .map_or("none".to_string(), |c| format!("{} KiB", c.len() / 1024))
            );
        }
        println!("kernels:");
        for k in entry_names(Arch::Sm90.ptx()) {
            println!("  {k}");
        }
        return Ok(());
    };
    let i = gpu.info();
    println!(
        "driver:             CUDA {}.{}",
        i.driver_version / 1000,
        (i.driver_version % 1000) / 10
    );
    println!("device {}:           {}", i.ordinal, i.name);
    println!(
        "compute capability: {}.{}",
        i.compute_capability.0, i.compute_capability.1
    );
    println!("SMs:                {}", i.sm_count);
    println!(
        "memory:             {:.1} GiB",
        i.total_memory as f64 / (1u64 << 30) as f64
    );
    println!(
        "max smem per block: {} KiB (opt-in)",
        i.max_smem_per_block / 1024
    );
    println!("kernel arch:        {}", i.arch.name());
    println!("module image:       {:?}", i.image);
    if let Some(why) = &i.cubin_fallback {
        println!("cubin not used:     {why}");
    }
    println!(
        "module load:        {:.2} ms",
        i.module_load.as_secs_f64() * 1e3
    );
    println!("kernels (registers per thread):");
    for k in entry_names(i.arch.ptx()) {
        println!("  {k:<36} {}", gpu.kernel_registers(k)?);
    }
    Ok(())
}

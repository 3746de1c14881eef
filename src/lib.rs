//! ferrinfer-harness: helpers shared by the GPU-vs-oracle tests (`tests/`) and the benchmarks
//! (`benches/`).

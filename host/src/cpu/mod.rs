//! CPU backend: the public ops implemented with rayon and f32 accumulation, for machines
//! without a GPU (and as the embedded default the CLI falls back to).

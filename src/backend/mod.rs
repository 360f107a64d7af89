//! Backends: implementations of [`LanguageModel`](crate::LanguageModel), and
//! what a backend author checks one against.
//!
//! - [`candle`]: the reference backend. Hugging Face checkpoints and GGUF
//!   files of the Llama family on the CPU (f32 and quantized blocks, on our
//!   own kernels) and, with the `cuda` feature, on an NVIDIA GPU (fused
//!   kernels replayed as one CUDA graph per window width).
//! - [`static_shape`]: the rules of a backend compiled ahead of time (AWS
//!   Inferentia2: fixed `n_positions`, fixed window graphs, batch 1, KV cache
//!   written by position), and [`StaticShapeModel`](static_shape::StaticShapeModel),
//!   which makes any model obey them, so the generator is proven against
//!   those rules without the hardware.
//! - [`conformance`]: the trait's contract as executable checks, run on every
//!   backend above.

pub mod candle;
pub mod conformance;
pub mod static_shape;

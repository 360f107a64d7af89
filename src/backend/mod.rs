//! Backends: implementations of [`LanguageModel`](crate::LanguageModel).

pub mod candle;

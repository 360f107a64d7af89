//! The CUDA decode path: fused kernels (`kernels.cu`, compiled to PTX by
//! build.rs) replayed as CUDA graphs, one per captured width (see
//! `graph.rs`). Without the `cuda` feature, [`GraphDecoder`] is an empty
//! type that cannot be built, so the backend needs no `cfg` of its own.

#[cfg(feature = "cuda")]
mod graph;
#[cfg(feature = "cuda")]
pub(crate) use graph::GraphDecoder;

#[cfg(not(feature = "cuda"))]
mod stub {
    use super::super::llama::{LayerCache, Llama};
    use crate::error::{Error, Result};

    /// No value exists without the `cuda` feature.
    pub(crate) enum GraphDecoder {}

    impl GraphDecoder {
        pub(crate) fn new(
            llama: &mut Llama,
            _: &[LayerCache],
            _: &[usize],
        ) -> Result<Option<Self>> {
            if llama.is_cpu() {
                return Ok(None);
            }
            Err(Error::Backend {
                model: "cuda graph".into(),
                message: "built without the `cuda` feature".into(),
            })
        }
        pub(crate) fn max_width(&self) -> usize {
            match *self {}
        }
        pub(crate) fn step(&mut self, _: &[u32], _: usize) -> Result<()> {
            match *self {}
        }
        pub(crate) fn logits(&self, _: usize) -> Result<Vec<f32>> {
            match *self {}
        }
        pub(crate) fn last_logits(&self) -> Result<Vec<f32>> {
            match *self {}
        }
        pub(crate) fn argmax(&self) -> Result<Vec<Option<(u32, f32)>>> {
            match *self {}
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub(crate) use stub::GraphDecoder;

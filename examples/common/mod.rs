//! Flags shared by the examples: where the models run and with how many
//! threads.

use specdec::{LoadOptions, Quantization};

/// `--threads`, `--cuda`, `--quantize-draft` and `--draft-as-stored`, and the load options they
/// give.
#[derive(clap::Args, Debug)]
pub struct Device {
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run both models on this CUDA device (bf16) instead of the CPU (f32).
    /// Needs a build with `--features cuda`.
    #[arg(long, value_name = "ORDINAL", num_args = 0..=1, default_missing_value = "0")]
    pub cuda: Option<usize>,
    /// Store the draft's weights as Q8_0 (CPU only; faster there, and only
    /// acceptance can change).
    #[arg(long, conflicts_with = "draft_as_stored")]
    pub quantize_draft: bool,
    /// Compute the draft on its weights as its file stores them: a GGUF
    /// draft's Q4/Q5/Q6/Q8 blocks stay quantized (CPU only). With the same
    /// GGUF file as --target and --draft, the target runs dequantized to f32
    /// (exact) and the draft is its 4-bit copy.
    #[arg(long)]
    pub draft_as_stored: bool,
}

impl Device {
    /// Sets the thread count for candle and rayon and makes this thread
    /// one of the pool's ([`specdec::init_thread_pool`]); call before any
    /// model work, as the pools read it when they start.
    pub fn apply_threads(&self) -> anyhow::Result<()> {
        if let Some(n) = self.threads {
            anyhow::ensure!(n > 0, "--threads must be at least 1");
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        specdec::init_thread_pool(self.threads)?;
        Ok(())
    }

    /// Load options for the target: the CPU in f32, or `--cuda` in bf16.
    pub fn target_options(&self) -> anyhow::Result<LoadOptions> {
        Ok(match self.cuda {
            // A bad flag for this build or machine: the caller's input.
            Some(ordinal) => LoadOptions::cuda(ordinal).map_err(|e| {
                anyhow::anyhow!("--cuda {ordinal}: {e} (needs `--features cuda` and a GPU)")
            })?,
            None => LoadOptions::default(),
        })
    }

    /// As [`Device::target_options`], with `--quantize-draft`.
    pub fn draft_options(&self) -> anyhow::Result<LoadOptions> {
        let quantization = if self.quantize_draft {
            Quantization::Q8_0
        } else if self.draft_as_stored {
            Quantization::AsStored
        } else {
            Quantization::None
        };
        Ok(LoadOptions {
            quantization,
            ..self.target_options()?
        })
    }
}

//! The settings of one generation.

use crate::error::{Error, Result};
use crate::sampling::{SamplingMode, SamplingParams};

/// Which tokens end a sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Eos {
    /// Stop at the target model's EOS ids (generation_config.json, else config.json).
    #[default]
    Model,
    /// Stop at these ids instead.
    Tokens(Vec<u32>),
    /// Never stop at EOS: the target's EOS ids get probability 0 in both
    /// models (llama.cpp's `--ignore-eos`), for benchmarks of a fixed length.
    Ignore,
}

/// Settings of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Most tokens to generate (EOS excluded).
    pub max_new_tokens: usize,
    /// Window `k`, `1..=`[`GenerateConfig::MAX_WINDOW`]: the target scores up to `k` positions
    /// per pass, up to `k - 1` of them drafted (exactly, with
    /// `min_draft_confidence` 0). `k = 1` is plain decoding of the target.
    pub k: usize,
    /// Greedy or sampled, and how logits are warped (for both models alike).
    pub sampling: SamplingParams,
    /// How sampled tokens are chosen and verified: rejection sampling (the
    /// default, the highest acceptance) or reproducible sampling (the same
    /// seed gives the same tokens with any draft, any `k`, or none).
    /// Irrelevant when greedy.
    pub sampling_mode: SamplingMode,
    /// Seed of the random source, or of the keyed noise in reproducible
    /// mode (unused when greedy).
    pub seed: u64,
    /// Stop when the text contains one of these (each non-empty); the text is
    /// cut before it. Needs a tokenizer on the target.
    pub stop_strings: Vec<String>,
    /// Which tokens end the sequence.
    pub eos: Eos,
    /// Adaptive windows: the draft stops proposing when it is less sure of
    /// its next token than this, in `[0, 1]`. Sureness is the probability
    /// the draft gives its pick (greedy) or its most likely token
    /// (sampling), under its own distribution. `k` is then the largest
    /// window, and the target skips positions the draft would likely have
    /// got wrong. `0` turns it off (windows are then cut only by the token
    /// budget and a static-shape target's compiled sizes). The default,
    /// 0.3, comes from a replay of py-m's greedy outputs through the drafts
    /// made while building this (not kept): of 0.2-0.6 it was the best for
    /// py-m with py-s and for py-m-wide, and within 4% of the best (0.4)
    /// for py-m with py-xs. The n-gram drafter has no confidence and
    /// ignores it.
    ///
    /// Greedy output stays the target's, and sampled output keeps the
    /// target's distribution (for a fixed seed the sampled tokens may
    /// differ under rejection sampling, as the random draws are spent
    /// differently; in reproducible mode they do not), because whether
    /// a position is drafted is decided from the draft's distribution for
    /// it before its token is drawn: a function of the prefix before that
    /// position.
    pub min_draft_confidence: f32,
}

impl Default for GenerateConfig {
    /// 128 greedy tokens with adaptive windows of up to 8 (confidence 0.3).
    /// In the two CPU runs behind README's benchmark, adaptive k <= 8 and
    /// k <= 12 were the fastest settings for nearly every pair, each ahead
    /// of the other in one run (by up to 13%); k <= 8 is also the one
    /// measured on the GPU, where it beat every fixed window.
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            k: 8,
            sampling: SamplingParams::greedy(),
            sampling_mode: SamplingMode::Rejection,
            seed: 0,
            stop_strings: Vec::new(),
            eos: Eos::Model,
            min_draft_confidence: 0.3,
        }
    }
}

impl GenerateConfig {
    /// The largest window `k` accepted. Acceptance decays geometrically
    /// along the window, so beyond a few dozen tokens a window only costs.
    pub const MAX_WINDOW: usize = 64;

    /// Checks the settings that need no model: `k`, sampling ranges,
    /// `min_draft_confidence`, stop strings. The error names the setting.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > Self::MAX_WINDOW {
            return Err(Error::setting(
                "k",
                self.k,
                format!("1..={}", Self::MAX_WINDOW),
            ));
        }
        self.sampling.validate()?;
        let confidence = self.min_draft_confidence;
        if !(0.0..=1.0).contains(&confidence) {
            return Err(Error::setting(
                "min_draft_confidence",
                confidence,
                "a probability in [0, 1]",
            ));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return Err(Error::setting("stop_strings", "\"\"", "non-empty strings"));
        }
        Ok(())
    }
}

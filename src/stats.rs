//! Counters and timings of one generation.

use std::time::Duration;

/// What one generation did and how long it took.
///
/// Words as in the [crate docs](crate#words): each decode iteration is one *window*
/// (one target forward); it *drafts* up to `k - 1` tokens, *accepts* some and
/// commits one *recovered* or *bonus* token after them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// The window `k` used (after any static-shape fallback).
    pub k: usize,
    /// Prompt length, tokens.
    pub prompt_tokens: usize,
    /// Tokens committed to the output (EOS and anything after it excluded).
    pub generated_tokens: usize,
    /// Target forward passes while decoding (one per window; prefill excluded).
    pub target_calls: usize,
    /// Draft-model forward passes while decoding (prefill excluded; 0 for
    /// the n-gram drafter).
    pub draft_calls: usize,
    /// Draft tokens proposed.
    pub drafted: usize,
    /// Draft tokens accepted.
    pub accepted: usize,
    /// Windows that ended in a recovered token (a rejection).
    pub recovered: usize,
    /// Windows that ended in a bonus token (everything accepted).
    pub bonus: usize,
    /// `accepted_at[i]`: windows whose draft token `i + 1` was accepted.
    /// `accepted_at[0] / windows that drafted` is the first-position acceptance.
    pub accepted_at: Vec<usize>,
    /// `windows[w - 1]`: target passes that scored `w` positions (`w - 1`
    /// drafts), for `w` in `1..=k`. All at `k` but the last few, unless the
    /// draft stopped early ([`GenerateConfig::min_draft_confidence`]) or the
    /// token budget ran out. Sums to `target_calls`.
    ///
    /// [`GenerateConfig::min_draft_confidence`]: crate::GenerateConfig::min_draft_confidence
    pub windows: Vec<usize>,
    /// Windows the draft ended early because it was less sure of its next
    /// token than [`GenerateConfig::min_draft_confidence`] (not those cut
    /// by the token budget or a compiled window size).
    ///
    /// [`GenerateConfig::min_draft_confidence`]: crate::GenerateConfig::min_draft_confidence
    pub stopped_early: usize,
    /// Windows in which the drafter proposed at least one token, of those
    /// with room for one: for the n-gram drafter, the windows whose suffix
    /// matched earlier in the sequence (the others were plain decoding).
    pub matched: usize,
    /// Time to feed the prompt (all but its last token) to the target: the
    /// target's prompt pass, most of the time to the first token.
    pub target_prefill: Duration,
    /// Time to feed the same prompt to the drafter (a draft model's prompt
    /// pass; about 0 for the n-gram drafter and for `k = 1`).
    pub draft_prefill: Duration,
    /// Decode time in the draft (forward passes and sampling).
    pub draft_time: Duration,
    /// Decode time in the target forward and the verifier.
    pub verify_time: Duration,
    /// Whole decode loop (draft + verify + bookkeeping, detokenization, callbacks).
    pub decode_time: Duration,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Stats {
    /// `accepted / drafted`, in `[0, 1]` (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Tokens produced per target forward while decoding, in `[1, k]`.
    /// (Counts every token the verifier produced, including an EOS or a
    /// window's tail cut by a stop, so it measures the windows themselves.)
    pub fn tokens_per_target_call(&self) -> f64 {
        ratio(
            self.accepted + self.recovered + self.bonus,
            self.target_calls,
        )
    }

    /// Prefill time of both models, milliseconds.
    pub fn prefill_ms(&self) -> f64 {
        ms(self.target_prefill + self.draft_prefill)
    }

    /// The target's prompt pass, milliseconds.
    pub fn target_prefill_ms(&self) -> f64 {
        ms(self.target_prefill)
    }

    /// The drafter's prompt pass, milliseconds.
    pub fn draft_prefill_ms(&self) -> f64 {
        ms(self.draft_prefill)
    }

    /// Decode time, milliseconds.
    pub fn decode_ms(&self) -> f64 {
        ms(self.decode_time)
    }

    /// Decode time spent in the draft, milliseconds.
    pub fn draft_ms(&self) -> f64 {
        ms(self.draft_time)
    }

    /// Decode time spent in target verification, milliseconds.
    pub fn verify_ms(&self) -> f64 {
        ms(self.verify_time)
    }

    /// Decode time outside draft and verify (bookkeeping, text), milliseconds.
    pub fn other_ms(&self) -> f64 {
        (self.decode_ms() - self.draft_ms() - self.verify_ms()).max(0.0)
    }

    /// End-to-end milliseconds per generated token: (prefill + decode) /
    /// generated, as a user waiting for the whole answer sees it.
    pub fn ms_per_token(&self) -> f64 {
        if self.generated_tokens == 0 {
            0.0
        } else {
            (self.prefill_ms() + self.decode_ms()) / self.generated_tokens as f64
        }
    }

    /// Positions the target scored while decoding: the sum of its windows.
    pub fn scored_positions(&self) -> usize {
        self.windows
            .iter()
            .enumerate()
            .map(|(i, n)| (i + 1) * n)
            .sum()
    }

    /// Mean window: positions the target scored per pass, in `[1, k]`.
    pub fn mean_window(&self) -> f64 {
        ratio(self.scored_positions(), self.target_calls)
    }

    /// One line for humans: tokens, ms/token, acceptance, tokens per target pass.
    pub fn summary(&self) -> String {
        format!(
            "{} tokens, {:.2} ms/token (prompt {} tokens: target {:.1} ms, draft {:.1} ms), k={} (mean window {:.2}), acceptance {:.1}% ({}/{}), {:.2} tokens/target pass",
            self.generated_tokens,
            self.ms_per_token(),
            self.prompt_tokens,
            self.target_prefill_ms(),
            self.draft_prefill_ms(),
            self.k,
            self.mean_window(),
            100.0 * self.acceptance_rate(),
            self.accepted,
            self.drafted,
            self.tokens_per_target_call()
        )
    }
}

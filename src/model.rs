//! The `LanguageModel` trait: what the [`Generator`](crate::Generator) needs
//! from a draft or a target, and what a backend must promise.
//!
//! # The contract
//!
//! A model holds a KV cache of `cached_len()` positions. [`LanguageModel::forward`]
//! appends `n` new tokens at positions `cached_len() .. cached_len() + n` and
//! returns logits for **every** new position, `[n, vocab]`: row `i` is the
//! distribution of the token that follows `tokens[i]`. A backend promises:
//!
//! 1. **Position independence of batching.** Feeding `a ++ b` in one call gives
//!    the same logits (to ~1e-4 in f32) as feeding `a`, then `b`. Verification
//!    relies on this: the target scores a whole window in one pass and the
//!    result must be what it would have said token by token. The candle
//!    backend on the CPU in f32 with dense weights keeps it bit for bit,
//!    for any split.
//! 2. **Cheap rollback.** [`LanguageModel::truncate`]`(len)` forgets every
//!    position `>= len` without recomputing anything; the next forward writes
//!    from position `len`. Truncating and re-feeding gives the same logits as
//!    never having fed the rejected tokens.
//! 3. **Limits are errors.** A forward past `n_positions()`, an empty input, an
//!    id outside the vocabulary, or a truncation beyond `cached_len()` returns
//!    an [`Error`](crate::Error), never a panic, and leaves the cache as it was.
//! 4. **Determinism.** The same calls from the same state give the same logits.
//!
//! [`crate::conformance`] checks all of these against any implementation.
//!
//! # Static shapes (AWS Inferentia2, and other compiled backends)
//!
//! A backend whose graphs are compiled ahead of time declares it through
//! [`LanguageModel::shapes`]: a fixed `n_positions`, the window sizes it
//! compiled a token-generation graph for, the prompt buckets of its
//! context-encoding graphs and its batch size. The generator then only asks
//! for those shapes: it verifies with a compiled window (falling back to the
//! largest compiled window not above the requested `k`), feeds the prompt in
//! one bucketed pass, and checks `n_positions` before it starts. Such a backend
//! meets "cheap rollback" without moving memory: its KV cache is written at
//! explicit positions (`cache_ids`), so `truncate` only resets the write
//! position and the next forward overwrites the rejected slots.
//! [`crate::StaticShapeModel`] wraps any model and enforces exactly these rules,
//! which is how the CPU backend stands in as the reference for such a backend.

use crate::error::{Error, Result, Role};
use crate::sampling::{argmax, greedy_pick, Confidence};
use crate::tokenizer::Tokenizer;

/// Logits of a forward pass: `[n, vocab]` row-major `f32`, one row per new
/// token, each row unnormalized log-probabilities over the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    data: Vec<f32>,
    vocab: usize,
}

impl Logits {
    /// Wraps `data` of length `rows * vocab`.
    ///
    /// # Panics
    /// If `vocab` is 0 or `data.len()` is not a multiple of `vocab` (a bug in
    /// the backend that built it, not a user error).
    pub fn new(data: Vec<f32>, vocab: usize) -> Self {
        assert!(
            vocab > 0 && data.len().is_multiple_of(vocab),
            "logits of length {} do not split into rows of {vocab}",
            data.len()
        );
        Self { data, vocab }
    }

    /// Number of rows (new tokens).
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab
    }

    /// Vocabulary size (columns).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Row `i`: logits `[vocab]` for the token after new token `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// The last row, as a one-row `Logits` (no rows if there are none).
    pub fn last(&self) -> Logits {
        match self.rows() {
            0 => self.clone(),
            n => Logits::new(self.row(n - 1).to_vec(), self.vocab),
        }
    }

    /// All rows, `[n * vocab]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Checks these are `[rows, vocab]` logits, as the contract says a
    /// forward of `rows` tokens returns; [`Error::Contract`] naming `model`
    /// otherwise (a bug in that backend).
    pub fn expect_shape(&self, rows: usize, vocab: usize, model: &str) -> Result<()> {
        if self.rows() != rows || self.vocab() != vocab {
            return Err(Error::Contract {
                model: model.to_string(),
                message: format!(
                    "returned logits [{}, {}], expected [{rows}, {vocab}]",
                    self.rows(),
                    self.vocab()
                ),
            });
        }
        Ok(())
    }
}

/// Which rows of logits a forward pass returns: a backend's private
/// switch between [`LanguageModel::forward`] and
/// [`LanguageModel::forward_last`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// One row per new token, `[n, vocab]`.
    All,
    /// The last new token's row only, `[1, vocab]`.
    Last,
}

/// Shapes a backend can run. Dynamic backends (candle on CPU or CUDA) run any
/// shape up to `n_positions`; compiled backends list what they compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shapes {
    /// Any number of new tokens per forward, up to `n_positions` in total.
    Dynamic,
    /// Only the compiled shapes.
    Static(StaticShapes),
}

impl Shapes {
    /// The largest token count `<= n` a forward may have: `n` itself for a
    /// dynamic backend, else the largest compiled window `<= n` (1, plain
    /// decoding, when none is; the generator makes sure 1 is
    /// compiled).
    pub fn largest_window_at_most(&self, n: usize) -> usize {
        match self {
            Shapes::Dynamic => n,
            Shapes::Static(s) => s
                .windows
                .iter()
                .copied()
                .filter(|&w| w <= n)
                .max()
                .unwrap_or(1),
        }
    }
}

/// The compiled shapes of a static-shape backend (an Inferentia2 model
/// compiled by transformers-neuronx / NxD Inference, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticShapes {
    /// Token counts a decode-time forward may have: the speculation windows
    /// `k` a token-generation graph was compiled for (1 for plain decoding).
    /// Sorted ascending, no duplicates.
    pub windows: Vec<usize>,
    /// Context-encoding bucket sizes (tokens) for the prompt pass. A prompt
    /// is padded up to the smallest bucket that holds it. Sorted ascending.
    pub prompt_buckets: Vec<usize>,
    /// Compiled batch size. The generator runs one sequence, so it must be 1.
    pub batch_size: usize,
}

/// A causal language model with a KV cache, as the speculative loop sees it.
///
/// Required: [`forward`](Self::forward), [`truncate`](Self::truncate) and three
/// getters. Everything else has a default that fast backends may override.
/// Object safe: `Box<dyn LanguageModel>` is a `LanguageModel`.
pub trait LanguageModel {
    /// Feeds `tokens` (`[n]`, `n >= 1`) at positions `cached_len()..cached_len()+n`
    /// and returns their logits, `[n, vocab_size()]`.
    fn forward(&mut self, tokens: &[u32]) -> Result<Logits>;

    /// Rolls the KV cache back to its first `len` positions (`len <= cached_len()`).
    fn truncate(&mut self, len: usize) -> Result<()>;

    /// Positions in the KV cache.
    fn cached_len(&self) -> usize;

    /// Vocabulary size: the number of logits per row.
    fn vocab_size(&self) -> usize;

    /// Maximum number of positions (prompt + generated) the cache holds.
    fn n_positions(&self) -> usize;

    /// Like [`forward`](Self::forward) but returns only the last row, `[1, vocab]`.
    /// Backends may skip the output projection for the other rows.
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Logits> {
        Ok(self.forward(tokens)?.last())
    }

    /// Feeds `tokens` as [`forward`](Self::forward) does and returns each
    /// row's greedy choice, `[n]`: the id of the largest logit not in
    /// `suppress`, the lowest id among ties, with
    /// [`argmax`](crate::sampling::argmax)'s errors (a NaN or `+inf`
    /// logit, no choosable id) naming the row (the caller adds which model it asked, [`Error::for_role`]). The generator
    /// verifies greedy windows through this, so a backend that keeps its
    /// logits on a device can return ids instead of `[n, vocab]` floats;
    /// it must choose exactly what `argmax` over `forward`'s rows would.
    /// The default does just that.
    fn forward_greedy(&mut self, tokens: &[u32], suppress: &[u32]) -> Result<Vec<u32>> {
        let logits = self.forward(tokens)?;
        (0..logits.rows())
            .map(|i| argmax(logits.row(i), suppress, i))
            .collect()
    }

    /// Feeds `tokens` as [`forward_last`](Self::forward_last) does and
    /// returns the last row's greedy choice (as
    /// [`forward_greedy`](Self::forward_greedy) chooses, row 0 in errors)
    /// and, when `confidence` is [`Confidence::Wanted`], that choice's
    /// softmax probability in the row
    /// renormalized without `suppress`, in `[0, 1]`, as
    /// [`greedy_confidence`](crate::sampling::greedy_confidence) computes it
    /// (a backend may differ from it by float rounding: the drafter only
    /// compares it with a threshold to stop drafting, which never changes
    /// what is accepted). A model drafting greedily runs every pass through
    /// this, so a backend that keeps its logits on a device moves an id and
    /// a number instead of a `[vocab]` row. The default does it on
    /// `forward_last`'s row.
    fn forward_last_greedy(
        &mut self,
        tokens: &[u32],
        suppress: &[u32],
        confidence: Confidence,
    ) -> Result<(u32, Option<f32>)> {
        let logits = self.forward_last(tokens)?;
        logits.expect_shape(1, self.vocab_size(), self.name())?;
        greedy_pick(logits.row(0), suppress, confidence)
    }

    /// Feeds a prompt (or the first part of one) whose logits are not needed.
    /// Static-shape backends run it as one context-encoding pass. The default
    /// calls [`forward_last`](Self::forward_last) and drops the logits.
    fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        self.forward_last(tokens).map(drop)
    }

    /// Empties the KV cache.
    fn reset(&mut self) -> Result<()> {
        self.truncate(0)
    }

    /// The shapes this backend runs (see the module docs).
    fn shapes(&self) -> Shapes {
        Shapes::Dynamic
    }

    /// The tokenizer, if the model came with one. The generator uses the
    /// target's for text and stop strings, and checks the draft's against it.
    fn tokenizer(&self) -> Option<&Tokenizer> {
        None
    }

    /// Token ids that end a sequence (from config.json / generation_config.json).
    fn eos_token_ids(&self) -> &[u32] {
        &[]
    }

    /// A short name for messages (the model directory's name, say).
    fn name(&self) -> &str {
        "model"
    }
}

impl<M: LanguageModel + ?Sized> LanguageModel for Box<M> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Logits> {
        (**self).forward(tokens)
    }
    fn truncate(&mut self, len: usize) -> Result<()> {
        (**self).truncate(len)
    }
    fn cached_len(&self) -> usize {
        (**self).cached_len()
    }
    fn vocab_size(&self) -> usize {
        (**self).vocab_size()
    }
    fn n_positions(&self) -> usize {
        (**self).n_positions()
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Logits> {
        (**self).forward_last(tokens)
    }
    fn forward_greedy(&mut self, tokens: &[u32], suppress: &[u32]) -> Result<Vec<u32>> {
        (**self).forward_greedy(tokens, suppress)
    }
    fn forward_last_greedy(
        &mut self,
        tokens: &[u32],
        suppress: &[u32],
        confidence: Confidence,
    ) -> Result<(u32, Option<f32>)> {
        (**self).forward_last_greedy(tokens, suppress, confidence)
    }
    fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        (**self).prefill(tokens)
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
    fn shapes(&self) -> Shapes {
        (**self).shapes()
    }
    fn tokenizer(&self) -> Option<&Tokenizer> {
        (**self).tokenizer()
    }
    fn eos_token_ids(&self) -> &[u32] {
        (**self).eos_token_ids()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
}

// ---------------------------------------------------------------------------
// Checks of the contract, shared by the generator, the drafters and the
// backends.
// ---------------------------------------------------------------------------

/// A static-shape model must run batch size 1 and have the 1-token graph
/// (plain decoding); [`Error::NotCompiled`] naming `role` otherwise.
pub(crate) fn check_static_shapes(role: Role, shapes: &Shapes) -> Result<()> {
    if let Shapes::Static(s) = shapes {
        if s.batch_size != 1 {
            return Err(Error::NotCompiled {
                model: role.to_string(),
                message: format!(
                    "compiled for batch size {}; speculative decoding runs batch size 1",
                    s.batch_size
                ),
            });
        }
        if !s.windows.contains(&1) {
            return Err(Error::NotCompiled {
                model: role.to_string(),
                message: format!(
                    "compiled windows {:?} lack 1 (the plain decoding graph)",
                    s.windows
                ),
            });
        }
    }
    Ok(())
}

/// A prompt of `prompt` tokens plus `max_new_tokens` fit `model`'s
/// positions ([`Error::TooLong`]), and all but the prompt's last token fit
/// a compiled prompt bucket ([`Error::NotCompiled`]).
pub(crate) fn check_fits<M: LanguageModel + ?Sized>(
    role: Role,
    model: &M,
    prompt: usize,
    max_new_tokens: usize,
) -> Result<()> {
    let Some(needed) = prompt.checked_add(max_new_tokens) else {
        return Err(Error::setting(
            "max_new_tokens",
            max_new_tokens,
            format!("at most usize::MAX - {prompt} (the prompt's length)"),
        ));
    };
    let limit = model.n_positions();
    if needed > limit {
        return Err(Error::TooLong {
            role,
            prompt,
            max_new_tokens,
            needed,
            limit,
        });
    }
    if let Shapes::Static(s) = model.shapes() {
        let largest = s.prompt_buckets.last().copied().unwrap_or(0);
        if prompt - 1 > largest {
            return Err(Error::NotCompiled {
                model: role.to_string(),
                message: format!(
                    "a prompt of {prompt} tokens is prefilled as {} (all but the last), more than the largest compiled bucket, {largest}",
                    prompt - 1
                ),
            });
        }
    }
    Ok(())
}

/// The contract's rules for a forward of `tokens` on a model with `cached`
/// of its `n_positions` filled: at least one token, none past
/// `n_positions`, every id below `vocab` ([`Error::OutOfRange`] naming
/// `model` otherwise).
pub(crate) fn check_feed(
    model: &str,
    tokens: &[u32],
    cached: usize,
    n_positions: usize,
    vocab: usize,
) -> Result<()> {
    let err = |message: String| Error::OutOfRange {
        model: model.to_string(),
        message,
    };
    if tokens.is_empty() {
        return Err(err("forward of 0 tokens".into()));
    }
    if cached + tokens.len() > n_positions {
        return Err(err(format!(
            "{cached} cached + {} new tokens exceed n_positions = {n_positions}",
            tokens.len()
        )));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(err(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// The contract's rule for [`LanguageModel::truncate`]: `len` may not
/// exceed the `cached` positions ([`Error::OutOfRange`] naming `model`).
pub(crate) fn check_truncate(model: &str, len: usize, cached: usize) -> Result<()> {
    if len > cached {
        return Err(Error::OutOfRange {
            model: model.to_string(),
            message: format!("cannot truncate to {len}: only {cached} positions are cached"),
        });
    }
    Ok(())
}

//! The `Generator`: propose with the draft, verify with the target, commit.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::error::{Error, Result, Role};
use crate::model::{LanguageModel, Logits, Shapes};
use crate::sampling::{
    argmax, greedy_confidence, warp, Distribution, RandomSource, SamplingParams, SeededRandom,
};
use crate::stats::Stats;
use crate::tokenizer::{Detokenizer, Tokenizer};
use crate::verify::{verify_greedy, verify_sampled, NextKind};

/// The largest window accepted. Acceptance decays geometrically along the
/// window, so beyond a few dozen tokens a window only costs.
pub const MAX_WINDOW: usize = 64;

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
    /// Window `k`, `1..=MAX_WINDOW`: the target scores up to `k` positions
    /// per pass, up to `k - 1` of them drafted (exactly, with
    /// `min_draft_confidence` 0). `k = 1` is plain decoding of the target.
    pub k: usize,
    /// Greedy or sampled, and how logits are warped (for both models alike).
    pub sampling: SamplingParams,
    /// Seed of the random source (unused when greedy).
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
    /// for py-m with py-xs.
    ///
    /// Greedy output stays the target's, and sampled output keeps the
    /// target's distribution (for a fixed seed the sampled tokens may
    /// differ, as the random draws are spent differently), because whether
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
            seed: 0,
            stop_strings: Vec::new(),
            eos: Eos::Model,
            min_draft_confidence: 0.3,
        }
    }
}

impl GenerateConfig {
    /// Checks the settings that need no model: `k` in `1..=MAX_WINDOW`, the
    /// sampling parameters, `min_draft_confidence` in `[0, 1]`, no empty
    /// stop string. [`Generator::generate`] runs it too; call it early to
    /// refuse bad settings before loading models.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.k > MAX_WINDOW {
            return Err(Error::setting("k", self.k, format!("1..={MAX_WINDOW}")));
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

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `max_new_tokens` were generated.
    MaxNewTokens,
    /// The target produced this EOS id (not included in the output).
    Eos(u32),
    /// The text reached this stop string (cut from the text).
    StopString(String),
    /// The streaming callback asked to stop.
    Cancelled,
}

impl StopReason {
    /// `"max_new_tokens"`, `"eos"`, `"stop_string"` or `"cancelled"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::MaxNewTokens => "max_new_tokens",
            StopReason::Eos(_) => "eos",
            StopReason::StopString(_) => "stop_string",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Generated token ids (prompt excluded, EOS excluded).
    pub tokens: Vec<u32>,
    /// Their text, when the target has a tokenizer (stop string excluded).
    pub text: Option<String>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Counters and timings.
    pub stats: Stats,
}

/// Newly committed output, handed to a streaming callback as it is committed.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Tokens committed since the last chunk (EOS excluded).
    pub tokens: &'a [u32],
    /// Text that became final since the last chunk: never a split UTF-8
    /// character, never a part of a possible stop string.
    pub text: &'a str,
}

/// Exact speculative decoding: a draft model proposes, a target model
/// verifies a window of `k` positions in one forward pass, and rejection
/// sampling keeps the output distributed exactly as the target's.
///
/// See the [crate docs](crate) for the algorithm step by step.
pub struct Generator<T, D> {
    target: T,
    draft: D,
    tokenizer: Option<Tokenizer>,
}

impl<T: LanguageModel, D: LanguageModel> Generator<T, D> {
    /// Couples `target` and `draft`. They must share a vocabulary: when both
    /// have tokenizers, every id must map to the same token, and their logits
    /// must be equally wide (a draft whose embedding is padded differently
    /// could propose ids the target lacks, or fail to read the target's).
    pub fn new(target: T, draft: D) -> Result<Self> {
        let (tv, dv) = (target.vocab_size(), draft.vocab_size());
        let sizes = || {
            format!(
                "target {} has {tv} logits per row, draft {} has {dv}",
                target.name(),
                draft.name()
            )
        };
        // Equal widths too: the draft must be able to read every token the
        // target commits, and the target every token the draft proposes.
        if tv != dv {
            return Err(Error::VocabularyMismatch { message: sizes() });
        }
        match (target.tokenizer(), draft.tokenizer()) {
            (Some(t), Some(d)) => t.check_same_vocabulary(d)?,
            (Some(_), None) => {
                return Err(Error::NoTokenizer {
                    role: Role::Draft,
                    model: draft.name().to_string(),
                    needed_for: "its token ids cannot be checked against the target's \
                                 vocabulary; give it the target's tokenizer.json"
                        .into(),
                })
            }
            _ => {}
        }
        for (role, shapes) in [
            (Role::Target, target.shapes()),
            (Role::Draft, draft.shapes()),
        ] {
            if let Shapes::Static(s) = shapes {
                if s.batch_size != 1 {
                    return Err(Error::Shape {
                        model: role.to_string(),
                        message: format!(
                            "compiled for batch size {}; speculative decoding runs batch size 1",
                            s.batch_size
                        ),
                    });
                }
                if !s.windows.contains(&1) {
                    return Err(Error::Shape {
                        model: role.to_string(),
                        message: format!(
                            "compiled windows {:?} lack 1 (the plain decoding graph)",
                            s.windows
                        ),
                    });
                }
            }
        }
        let tokenizer = target.tokenizer().cloned();
        Ok(Self {
            target,
            draft,
            tokenizer,
        })
    }

    /// The target model.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// The draft model.
    pub fn draft(&self) -> &D {
        &self.draft
    }

    /// The target's tokenizer, if it has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Gives the models back.
    pub fn into_parts(self) -> (T, D) {
        (self.target, self.draft)
    }

    /// The window actually used for a requested `k`: `k` itself for dynamic
    /// backends, else the largest compiled window `<= k` of the target.
    pub fn effective_k(&self, k: usize) -> usize {
        allowed_at_most(&self.target.shapes(), k)
    }

    /// Generates from prompt ids.
    pub fn generate(&mut self, prompt: &[u32], config: &GenerateConfig) -> Result<Output> {
        self.generate_stream(prompt, config, |_| ControlFlow::Continue(()))
    }

    /// Encodes `prompt` with the target's tokenizer and generates.
    pub fn generate_text(&mut self, prompt: &str, config: &GenerateConfig) -> Result<Output> {
        let ids = self.encode(prompt)?;
        self.generate(&ids, config)
    }

    /// Encodes text with the target's tokenizer.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::NoTokenizer {
                role: Role::Target,
                model: self.target.name().to_string(),
                needed_for: "it is needed to encode a text prompt (or give token ids)".into(),
            })?
            .encode(text)
    }

    /// Generates, handing each committed [`Chunk`] to `on_chunk` as soon as
    /// it is final; returning `ControlFlow::Break(())` stops the generation.
    pub fn generate_stream(
        &mut self,
        prompt: &[u32],
        config: &GenerateConfig,
        mut on_chunk: impl FnMut(Chunk<'_>) -> ControlFlow<()>,
    ) -> Result<Output> {
        let mut rng = SeededRandom::new(config.seed);
        self.generate_with(prompt, config, &mut rng, &mut on_chunk)
    }

    /// The general form: every random decision goes through `rng`.
    ///
    /// On a backend error after decoding began, returns
    /// [`Error::Interrupted`] with the tokens committed so far. Every call
    /// starts from empty caches, so the generator is reusable after any error.
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        config: &GenerateConfig,
        rng: &mut dyn RandomSource,
        on_chunk: &mut dyn FnMut(Chunk<'_>) -> ControlFlow<()>,
    ) -> Result<Output> {
        self.validate(prompt, config)?;
        let k = self.effective_k(config.k);
        let eos = self.target.eos_token_ids().to_vec();
        let (stop_ids, suppress) = match &config.eos {
            Eos::Model => (eos, Vec::new()),
            Eos::Tokens(ids) => (ids.clone(), Vec::new()),
            Eos::Ignore => (Vec::new(), eos),
        };
        let mut run = Run {
            config,
            k,
            suppress,
            stats: Stats {
                k,
                prompt_tokens: prompt.len(),
                accepted_at: vec![0; k - 1],
                windows: vec![0; k],
                ..Stats::default()
            },
            committed: prompt.to_vec(),
            out: Emitter::new(self.tokenizer.clone(), prompt, config, stop_ids),
        };

        let start = Instant::now();
        self.target.reset()?;
        self.draft.reset()?;
        let head = &prompt[..prompt.len() - 1];
        if !head.is_empty() {
            self.target.prefill(head)?;
            if k > 1 {
                self.draft.prefill(head)?;
            }
        }
        run.stats.prefill = start.elapsed();

        let start = Instant::now();
        let result = self.decode(&mut run, rng, on_chunk);
        run.stats.decode_time = start.elapsed();
        let stop_reason = result.map_err(|source| Error::Interrupted {
            committed: run.out.tokens.clone(),
            source: Box::new(source),
        })?;
        run.stats.generated_tokens = run.out.tokens.len();
        Ok(Output {
            tokens: run.out.tokens,
            text: run.out.detok.is_some().then_some(run.out.text),
            stop_reason,
            stats: run.stats,
        })
    }

    fn validate(&self, prompt: &[u32], config: &GenerateConfig) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        config.validate()?;
        if !config.stop_strings.is_empty() && self.tokenizer.is_none() {
            return Err(Error::setting(
                "stop_strings",
                format!("{:?}", config.stop_strings),
                "none: the target has no tokenizer to turn tokens into text",
            ));
        }
        let vocab = self.target.vocab_size(); // the draft's is the same
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::setting(
                "prompt",
                bad,
                format!("token ids < {vocab}"),
            ));
        }
        if config.eos == Eos::Ignore {
            // Suppressing every id would leave nothing to draw: the
            // target's EOS ids are at fault, not the draft that draws first.
            let eos: std::collections::BTreeSet<u32> =
                self.target.eos_token_ids().iter().copied().collect();
            if eos.iter().filter(|&&t| (t as usize) < vocab).count() == vocab {
                return Err(Error::EmptyDistribution {
                    role: Role::Target,
                    position: 0,
                });
            }
        }
        let Some(needed) = prompt.len().checked_add(config.max_new_tokens) else {
            return Err(Error::setting(
                "max_new_tokens",
                config.max_new_tokens,
                format!(
                    "at most usize::MAX - {} (the prompt's length)",
                    prompt.len()
                ),
            ));
        };
        let mut models: Vec<(Role, usize, Shapes)> = vec![(
            Role::Target,
            self.target.n_positions(),
            self.target.shapes(),
        )];
        if config.k > 1 {
            models.push((Role::Draft, self.draft.n_positions(), self.draft.shapes()));
        }
        for (role, limit, shapes) in models {
            if needed > limit {
                return Err(Error::TooLong {
                    role,
                    prompt: prompt.len(),
                    max_new_tokens: config.max_new_tokens,
                    needed,
                    limit,
                });
            }
            if let Shapes::Static(s) = shapes {
                let largest = s.prompt_buckets.last().copied().unwrap_or(0);
                if prompt.len() - 1 > largest {
                    return Err(Error::Shape {
                        model: role.to_string(),
                        message: format!(
                            "a prompt of {} tokens is prefilled as {} (all but the last), more than the largest compiled bucket, {largest}",
                            prompt.len(),
                            prompt.len() - 1
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The decode loop; returns why it stopped.
    fn decode(
        &mut self,
        run: &mut Run<'_>,
        rng: &mut dyn RandomSource,
        on_chunk: &mut dyn FnMut(Chunk<'_>) -> ControlFlow<()>,
    ) -> Result<StopReason> {
        let greedy = run.config.sampling.is_greedy();
        let target_shapes = self.target.shapes();
        loop {
            let remaining = run.config.max_new_tokens - run.out.tokens.len();
            if remaining == 0 {
                return Ok(StopReason::MaxNewTokens);
            }
            // 1. Propose up to `window - 1` draft tokens, each with its q
            // (fewer when the draft loses confidence).
            let window = allowed_at_most(&target_shapes, run.k.min(remaining));
            let m = window - 1;
            let started = Instant::now();
            let mut drafts = Vec::with_capacity(m);
            let mut qs = Vec::with_capacity(if greedy { 0 } else { m });
            let min_confidence = run.config.min_draft_confidence;
            for j in 0..m {
                let logits = if j == 0 {
                    let seen = self.draft.cached_len();
                    let feed = run.committed[seen..].to_vec();
                    self.feed_draft(&feed, &mut run.stats)?
                } else {
                    run.stats.draft_calls += 1;
                    self.draft.forward_last(&[drafts[j - 1]])?
                };
                expect_shape(&logits, 1, &self.draft)?;
                let row = logits.row(0);
                // Whether to draft position j is settled before its token is
                // drawn, from the draft's distribution for it alone, and only
                // where stopping leaves a window the target runs (j + 1
                // positions). Dropping drafts already drawn instead would
                // make keeping x_j depend on x_j, and bias the output.
                let may_stop = min_confidence > 0.0 && allows(&target_shapes, j + 1);
                if greedy {
                    let token = argmax(row, &run.suppress, Role::Draft, 0)?;
                    if may_stop && greedy_confidence(row, token, &run.suppress) < min_confidence {
                        run.stats.stopped_early += 1;
                        break;
                    }
                    drafts.push(token);
                } else {
                    let q = warp(row, &run.config.sampling, &run.suppress, Role::Draft, 0)?;
                    let sure = q.probs().iter().copied().fold(0.0, f64::max);
                    if may_stop && sure < min_confidence as f64 {
                        run.stats.stopped_early += 1;
                        break;
                    }
                    drafts.push(rng.categorical(q.probs()) as u32);
                    qs.push(q);
                }
            }
            let (m, window) = (drafts.len(), drafts.len() + 1);
            run.stats.draft_time += started.elapsed();

            // 2. Verify: one target pass over the last committed token + drafts.
            let started = Instant::now();
            let base = run.committed.len();
            let mut tokens = Vec::with_capacity(window);
            tokens.push(run.committed[base - 1]);
            tokens.extend_from_slice(&drafts);
            let logits = self.target.forward(&tokens)?;
            expect_shape(&logits, window, &self.target)?;
            let verdict = if greedy {
                let best = (0..window)
                    .map(|i| argmax(logits.row(i), &run.suppress, Role::Target, i))
                    .collect::<Result<Vec<_>>>()?;
                verify_greedy(&drafts, &best)
            } else {
                let ps = (0..window)
                    .map(|i| {
                        warp(
                            logits.row(i),
                            &run.config.sampling,
                            &run.suppress,
                            Role::Target,
                            i,
                        )
                    })
                    .collect::<Result<Vec<Distribution>>>()?;
                verify_sampled(&drafts, &qs, &ps, rng)
            };

            // 3. Roll both caches back to what is now committed (the new last
            // token stays pending for the next window).
            let keep = base + verdict.accepted;
            if self.target.cached_len() > keep {
                self.target.truncate(keep)?;
            }
            if self.draft.cached_len() > keep {
                self.draft.truncate(keep)?;
            }
            run.stats.verify_time += started.elapsed();
            run.record(&verdict, m);

            // 4. Commit, stopping at EOS, a stop string or the budget.
            let mut stop = None;
            for &token in drafts[..verdict.accepted].iter().chain([&verdict.next]) {
                run.committed.push(token);
                stop = run.out.push(token)?;
                if stop.is_some() {
                    break;
                }
            }
            if let Some(reason) = stop {
                run.out.finish(&reason)?;
                // The generation is over either way; a Break changes nothing.
                let _ = run.out.emit(on_chunk, Release::All);
                return Ok(reason);
            }
            if run.out.emit(on_chunk, Release::Final).is_break() {
                // The caller has stopped listening; `Output::text` still has
                // everything, held-back text included.
                run.out.finish(&StopReason::Cancelled)?;
                return Ok(StopReason::Cancelled);
            }
        }
    }

    /// Feeds the draft the committed tokens it has not seen and returns the
    /// last row. A static-shape draft gets them in compiled window sizes.
    fn feed_draft(&mut self, feed: &[u32], stats: &mut Stats) -> Result<Logits> {
        let shapes = self.draft.shapes();
        let mut rest = feed;
        loop {
            let n = allowed_at_most(&shapes, rest.len());
            stats.draft_calls += 1;
            let logits = self.draft.forward_last(&rest[..n])?;
            rest = &rest[n..];
            if rest.is_empty() {
                return Ok(logits);
            }
        }
    }
}

/// Checks a backend returned `[rows, vocab]` logits (a backend bug otherwise).
fn expect_shape(logits: &Logits, rows: usize, model: &impl LanguageModel) -> Result<()> {
    let vocab = model.vocab_size();
    if logits.rows() != rows || logits.vocab() != vocab {
        return Err(Error::Shape {
            model: model.name().to_string(),
            message: format!(
                "returned logits [{}, {}], expected [{rows}, {vocab}]",
                logits.rows(),
                logits.vocab()
            ),
        });
    }
    Ok(())
}

/// Whether the shapes run a forward of `n` tokens.
fn allows(shapes: &Shapes, n: usize) -> bool {
    allowed_at_most(shapes, n) == n
}

/// The largest token count `<= n` the shapes allow (1 is always allowed).
fn allowed_at_most(shapes: &Shapes, n: usize) -> usize {
    match shapes {
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

/// State of one generation.
struct Run<'a> {
    config: &'a GenerateConfig,
    k: usize,
    suppress: Vec<u32>,
    stats: Stats,
    /// Prompt + committed tokens (including an EOS that ended it).
    committed: Vec<u32>,
    out: Emitter,
}

impl Run<'_> {
    fn record(&mut self, verdict: &crate::verify::Verdict, drafted: usize) {
        let s = &mut self.stats;
        s.target_calls += 1;
        s.windows[drafted] += 1;
        s.drafted += drafted;
        s.accepted += verdict.accepted;
        for hits in &mut s.accepted_at[..verdict.accepted] {
            *hits += 1;
        }
        match verdict.kind {
            NextKind::Recovered => s.recovered += 1,
            NextKind::Bonus => s.bonus += 1,
        }
    }
}

#[derive(Clone, Copy)]
enum Release {
    /// Text that can no longer change.
    Final,
    /// Everything (the generation is over).
    All,
}

/// Output tokens and text as they are committed: EOS, stop strings, budget,
/// and the holding back of text that could still become a stop string.
struct Emitter {
    tokens: Vec<u32>,
    stop_ids: Vec<u32>,
    max_new_tokens: usize,
    detok: Option<Detokenizer>,
    text: String,
    stop_strings: Vec<String>,
    sent_tokens: usize,
    sent_text: usize,
}

impl Emitter {
    fn new(
        tokenizer: Option<Tokenizer>,
        prompt: &[u32],
        config: &GenerateConfig,
        stop_ids: Vec<u32>,
    ) -> Self {
        Self {
            tokens: Vec::new(),
            stop_ids,
            max_new_tokens: config.max_new_tokens,
            detok: tokenizer.map(|t| Detokenizer::new(t, prompt)),
            text: String::new(),
            stop_strings: config.stop_strings.clone(),
            sent_tokens: 0,
            sent_text: 0,
        }
    }

    /// Takes one committed token; returns a stop reason if it ends the output.
    fn push(&mut self, token: u32) -> Result<Option<StopReason>> {
        if self.stop_ids.contains(&token) {
            return Ok(Some(StopReason::Eos(token)));
        }
        self.tokens.push(token);
        if let Some(detok) = &mut self.detok {
            let delta = detok.push(token)?;
            self.text.push_str(&delta);
            if let Some(stop) = self.find_stop(delta.len()) {
                return Ok(Some(StopReason::StopString(stop)));
            }
        }
        Ok((self.tokens.len() == self.max_new_tokens).then_some(StopReason::MaxNewTokens))
    }

    /// Looks for a stop string ending in the last `delta` bytes; cuts the
    /// text before the earliest one found.
    fn find_stop(&mut self, delta: usize) -> Option<String> {
        let mut found: Option<(usize, &String)> = None;
        for s in &self.stop_strings {
            let mut from = self.text.len().saturating_sub(delta + s.len());
            while !self.text.is_char_boundary(from) {
                from -= 1;
            }
            if let Some(at) = self.text[from..].find(s.as_str()) {
                if found.is_none_or(|(f, _)| from + at < f) {
                    found = Some((from + at, s));
                }
            }
        }
        let (at, s) = found?;
        let s = s.clone();
        self.text.truncate(at);
        Some(s)
    }

    /// Bytes at the end of the text that could be the start of a stop string.
    fn held_back(&self) -> usize {
        self.stop_strings
            .iter()
            .flat_map(|s| s.char_indices().skip(1).map(move |(i, _)| &s[..i]))
            .filter(|prefix| self.text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    /// Flushes the detokenizer at the end (unless a stop string cut the text).
    fn finish(&mut self, reason: &StopReason) -> Result<()> {
        if let (Some(detok), false) = (&mut self.detok, matches!(reason, StopReason::StopString(_)))
        {
            let rest = detok.finish()?;
            self.text.push_str(&rest);
        }
        Ok(())
    }

    fn emit(
        &mut self,
        on_chunk: &mut dyn FnMut(Chunk<'_>) -> ControlFlow<()>,
        release: Release,
    ) -> ControlFlow<()> {
        let end = match release {
            Release::All => self.text.len(),
            Release::Final => self.text.len() - self.held_back(),
        };
        let end = end.max(self.sent_text);
        let chunk = Chunk {
            tokens: &self.tokens[self.sent_tokens..],
            text: &self.text[self.sent_text..end],
        };
        if chunk.tokens.is_empty() && chunk.text.is_empty() {
            return ControlFlow::Continue(());
        }
        self.sent_tokens = self.tokens.len();
        self.sent_text = end;
        on_chunk(chunk)
    }
}

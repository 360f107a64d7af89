//! The `Generator`: propose with the drafter, verify with the target, commit.
//!
//! Read top to bottom: building a generator, one generation (checks, the
//! prompt pass), then the loop itself in [`Generator::decode`]'s four
//! numbered steps, named as in the [crate docs](crate). Token choice lives
//! in [`crate::sampling`], the target's pass and verdict in
//! [`crate::verify`], proposing in [`crate::drafter`], and turning
//! committed tokens into output (EOS, stop strings, streaming) in
//! `output.rs`.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::config::{Eos, GenerateConfig};
use crate::drafter::{DraftRequest, Drafter, Proposal};
use crate::error::{Error, Result, Role};
use crate::model::{check_fits, check_static_shapes, LanguageModel};
use crate::output::{Chunk, Emitter, Output, Release, StopReason};
use crate::sampling::{RandomSource, Sampler, SamplingMode, SeededRandom};
use crate::stats::Stats;
use crate::tokenizer::{Tokenizer, MAX_TEXT_BYTES_PER_POSITION};
use crate::verify::{verify_window, NextKind, Verdict};

/// Exact speculative decoding: a drafter proposes, a target model verifies a
/// window of `k` positions in one forward pass, and the verifier keeps the
/// output distributed exactly as the target's.
///
/// `D` is the [`Drafter`]: a draft model (any [`LanguageModel`]:
/// `Generator::new(target, draft_model)`) or the [`NGram`](crate::NGram)
/// drafter, which needs no model (`Generator::new(target, NGram::new(3)?)`).
/// See the [crate docs](crate) for the algorithm step by step.
pub struct Generator<T, D> {
    target: T,
    drafter: D,
    tokenizer: Option<Tokenizer>,
}

impl<T: LanguageModel, D: Drafter> Generator<T, D> {
    /// Couples `target` and `drafter`. A draft model must share the target's
    /// vocabulary: when both have tokenizers, every id must map to the same
    /// token, and their logits must be equally wide (a draft whose embedding
    /// is padded differently could propose ids the target lacks, or fail to
    /// read the target's).
    pub fn new(target: T, drafter: D) -> Result<Self> {
        drafter.check_target(&target)?;
        check_static_shapes(Role::Target, &target.shapes())?;
        let tokenizer = target.tokenizer().cloned();
        Ok(Self {
            target,
            drafter,
            tokenizer,
        })
    }

    /// The target model.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// The drafter (the draft model, when the drafter is one).
    pub fn drafter(&self) -> &D {
        &self.drafter
    }

    /// The target's tokenizer, if it has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Gives the target and the drafter back.
    pub fn into_parts(self) -> (T, D) {
        (self.target, self.drafter)
    }

    /// The window actually used for a requested `k`: `k` itself for dynamic
    /// backends, else the largest compiled window `<= k` of the target.
    pub fn effective_k(&self, k: usize) -> usize {
        self.target.shapes().largest_window_at_most(k)
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
    ///
    /// Text longer than the target's `n_positions` times
    /// [`MAX_TEXT_BYTES_PER_POSITION`] bytes is refused before tokenizing,
    /// with [`Error::TextTooLong`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let n_positions = self.target.n_positions();
        let limit = n_positions.saturating_mul(MAX_TEXT_BYTES_PER_POSITION);
        if text.len() > limit {
            return Err(Error::TextTooLong {
                bytes: text.len(),
                limit,
                n_positions,
            });
        }
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

    /// The general form: every random decision of rejection sampling goes
    /// through `rng` (reproducible mode and greedy decoding use none).
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
        let sampler = Sampler::new(
            config.sampling.clone(),
            config.sampling_mode,
            config.seed,
            suppress,
        );
        let mut run = Run {
            config,
            k,
            sampler,
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

        // The prompt pass: everything but the last prompt token, which the
        // first window feeds.
        let start = Instant::now();
        let head = &prompt[..prompt.len() - 1];
        self.target.reset()?;
        if !head.is_empty() {
            self.target
                .prefill(head)
                .map_err(|e| e.for_role(Role::Target))?;
        }
        run.stats.target_prefill = start.elapsed();
        let start = Instant::now();
        self.drafter.start(if k > 1 { head } else { &[] })?;
        run.stats.draft_prefill = start.elapsed();

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

    /// Checks everything that can be checked before any forward pass, as
    /// every generation does first: a non-empty prompt of ids in the
    /// vocabulary that, with `config.max_new_tokens`, fits the target's
    /// and the drafter's positions, and a valid `config`. For checking a
    /// batch of prompts before running any.
    pub fn check(&self, prompt: &[u32], config: &GenerateConfig) -> Result<()> {
        self.validate(prompt, config)
    }

    /// See [`Generator::check`].
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
        let vocab = self.target.vocab_size();
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
                    role: Some(Role::Target),
                    position: 0,
                });
            }
        }
        check_fits(
            Role::Target,
            &self.target,
            prompt.len(),
            config.max_new_tokens,
        )?;
        if config.k > 1 {
            self.drafter
                .check_limits(prompt.len(), config.max_new_tokens)?;
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
        let target_shapes = self.target.shapes();
        loop {
            let remaining = run.config.max_new_tokens - run.out.tokens.len();
            if remaining == 0 {
                return Ok(StopReason::MaxNewTokens);
            }
            // 1. Propose up to `window - 1` draft tokens (fewer when the
            // draft model loses confidence or, for the n-gram drafter,
            // finds fewer or no match).
            let window = target_shapes.largest_window_at_most(run.k.min(remaining));
            let started = Instant::now();
            let proposal = if window > 1 {
                let mut request = DraftRequest {
                    committed: &run.committed,
                    max: window - 1,
                    sampler: &run.sampler,
                    rng: &mut *rng,
                    min_draft_confidence: run.config.min_draft_confidence,
                    target_shapes: &target_shapes,
                };
                let mut proposal = self.drafter.propose(&mut request)?;
                self.check_proposal(&proposal, window - 1, run.sampler.mode())?;
                // A static-shape target runs compiled windows only: a
                // shorter proposal (an n-gram match running out) is cut to
                // the largest one it fills. A draft model never needs
                // this: it stops only where a compiled window remains.
                let fits = target_shapes.largest_window_at_most(proposal.tokens.len() + 1) - 1;
                proposal.tokens.truncate(fits);
                proposal.q.truncate(fits);
                proposal
            } else {
                Proposal::default()
            };
            run.stats.draft_time += started.elapsed();

            // 2. Verify: one target pass over the last committed token and
            // the draft tokens, and the verdict (accepted + one more).
            let started = Instant::now();
            let base = run.committed.len();
            let mut tokens = Vec::with_capacity(proposal.tokens.len() + 1);
            tokens.push(run.committed[base - 1]);
            tokens.extend_from_slice(&proposal.tokens);
            let verdict = verify_window(
                &mut self.target,
                &run.sampler,
                &tokens,
                &proposal,
                base,
                rng,
            )?;

            // 3. Accept: roll the target and the drafter back to the
            // accepted prefix (the recovered or bonus token stays pending,
            // fed first by the next window).
            let keep = base + verdict.accepted;
            if self.target.cached_len() > keep {
                self.target.truncate(keep)?;
            }
            self.drafter.rollback(keep)?;
            run.stats.verify_time += started.elapsed();
            run.record(&proposal, window - 1, &verdict);

            // 4. Commit, stopping at EOS, a stop string or the budget.
            let mut stop = None;
            for &token in proposal.tokens[..verdict.accepted]
                .iter()
                .chain([&verdict.next])
            {
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

    /// A drafter's proposal must fit the window and the vocabulary, and
    /// carry one `q` per token or none (none is a point mass).
    fn check_proposal(&self, draft: &Proposal, max: usize, mode: SamplingMode) -> Result<()> {
        let vocab = self.target.vocab_size();
        let problem = if draft.tokens.len() > max {
            format!(
                "proposed {} tokens, at most {max} asked",
                draft.tokens.len()
            )
        } else if let Some(t) = draft.tokens.iter().find(|&&t| t as usize >= vocab) {
            format!("proposed token id {t}, the target's vocabulary has {vocab}")
        } else if !draft.q.is_empty() && draft.q.len() != draft.tokens.len() {
            format!(
                "gave {} q rows for {} tokens (one per token, or none)",
                draft.q.len(),
                draft.tokens.len()
            )
        } else if draft.q.iter().any(|q| q.len() != vocab) {
            format!("gave a q row that is not {vocab} wide")
        } else if !draft.q.is_empty() && mode == SamplingMode::Reproducible {
            "gave q rows in reproducible mode, where tokens are chosen, not drawn".to_string()
        } else {
            return Ok(());
        };
        Err(Error::Contract {
            model: "drafter".into(),
            message: problem,
        })
    }
}

/// State of one generation.
struct Run<'a> {
    config: &'a GenerateConfig,
    k: usize,
    sampler: Sampler,
    stats: Stats,
    /// Prompt + committed tokens (including an EOS that ended it).
    committed: Vec<u32>,
    out: Emitter,
}

impl Run<'_> {
    /// Counts one window: `room` draft tokens were allowed.
    fn record(&mut self, draft: &Proposal, room: usize, verdict: &Verdict) {
        let s = &mut self.stats;
        let drafted = draft.tokens.len();
        s.target_calls += 1;
        s.draft_calls += draft.forward_passes;
        s.stopped_early += usize::from(draft.stopped_early);
        s.matched += usize::from(room > 0 && drafted > 0);
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

//! Drafters: whatever proposes the draft tokens a target verifies.
//!
//! A [`Drafter`] answers each window with a [`Proposal`]: up to `k - 1`
//! *draft tokens* to follow the committed sequence. Two kinds ship here:
//! any [`LanguageModel`] is one, a *draft model* (it samples from its own
//! warped distribution `q`, or picks its argmax or its Gumbel-max choice,
//! as the target would: see [`model`]), and [`NGram`] is one with no model
//! at all (prompt lookup: it copies what followed the last few tokens
//! earlier in the sequence). The [`Generator`](crate::Generator) runs the
//! same loop for both.
//!
//! A proposal with no distribution is verified as a draft whose `q` is a
//! point mass on the proposed token, which keeps sampled output exactly the
//! target's (see [`crate::verify::verify_point`]).

pub mod model;
mod ngram;

pub use ngram::NGram;

use crate::error::Result;
use crate::model::{LanguageModel, Shapes};
use crate::sampling::{Distribution, RandomSource, Sampler};

/// Something that proposes draft tokens.
///
/// The generator calls [`start`](Self::start) once per generation, then per
/// window [`propose`](Self::propose) and, after the verdict,
/// [`rollback`](Self::rollback). Only `propose` is required.
pub trait Drafter {
    /// Proposes up to `request.max` tokens to follow `request.committed`.
    /// An empty proposal is allowed: the window is then plain decoding. On
    /// a static-shape target a proposal is cut to the largest compiled
    /// window it fills; that keeps the output exact only when the length
    /// proposed does not depend on random draws, so a drafter that draws
    /// should stop only where [`DraftRequest::min_draft_confidence`] allows
    /// a stop (a draft model does).
    fn propose(&mut self, request: &mut DraftRequest<'_>) -> Result<Proposal>;

    /// Checks, when a [`Generator`](crate::Generator) is built, that this
    /// drafter can serve `target` (a model drafter: the same vocabulary).
    fn check_target(&self, _target: &dyn LanguageModel) -> Result<()> {
        Ok(())
    }

    /// Checks, before a generation starts, that a prompt of `prompt` tokens
    /// and `max_new_tokens` more fit this drafter (a model drafter: its
    /// `n_positions` and compiled prompt buckets).
    fn check_limits(&self, _prompt: usize, _max_new_tokens: usize) -> Result<()> {
        Ok(())
    }

    /// Starts a generation whose prompt begins with `head` (the prompt but
    /// its last token, which the first window's `committed` ends with; empty
    /// when the generation will not draft, `k = 1`).
    fn start(&mut self, _head: &[u32]) -> Result<()> {
        Ok(())
    }

    /// The first `len` tokens of the sequence are committed; anything this
    /// drafter saw past them was rejected.
    fn rollback(&mut self, _len: usize) -> Result<()> {
        Ok(())
    }
}

/// A boxed drafter is a drafter, so one program can choose a draft model or
/// the n-gram drafter at run time: `Generator<T, Box<dyn Drafter>>`.
impl Drafter for Box<dyn Drafter + '_> {
    fn propose(&mut self, request: &mut DraftRequest<'_>) -> Result<Proposal> {
        (**self).propose(request)
    }
    fn check_target(&self, target: &dyn LanguageModel) -> Result<()> {
        (**self).check_target(target)
    }
    fn check_limits(&self, prompt: usize, max_new_tokens: usize) -> Result<()> {
        (**self).check_limits(prompt, max_new_tokens)
    }
    fn start(&mut self, head: &[u32]) -> Result<()> {
        (**self).start(head)
    }
    fn rollback(&mut self, len: usize) -> Result<()> {
        (**self).rollback(len)
    }
}

/// What a [`Drafter`] is asked for in one window.
pub struct DraftRequest<'a> {
    /// Prompt + committed output, `[n]`: draft token `j` (from 0) would be
    /// the token at absolute position `n + j`.
    pub committed: &'a [u32],
    /// The most draft tokens to propose (the window less one).
    pub max: usize,
    /// How this generation picks tokens: a model drafter picks as the
    /// target does, from its own logits.
    pub sampler: &'a Sampler,
    /// The generation's random source (rejection sampling's draws).
    pub rng: &'a mut dyn RandomSource,
    pub(crate) min_draft_confidence: f32,
    pub(crate) target_shapes: &'a Shapes,
}

impl DraftRequest<'_> {
    /// The confidence below which a drafter may stop before proposing draft
    /// token `j` (from 0): the generation's
    /// [`min_draft_confidence`](crate::GenerateConfig::min_draft_confidence)
    /// where a window of `j + 1` positions is one the target runs, else 0
    /// (no stop).
    pub fn min_draft_confidence(&self, j: usize) -> f32 {
        if self.target_shapes.largest_window_at_most(j + 1) == j + 1 {
            self.min_draft_confidence
        } else {
            0.0
        }
    }
}

/// A drafter's proposal for one window: the draft tokens, and the
/// distributions they were drawn from where they were drawn.
#[derive(Debug, Clone, Default)]
pub struct Proposal {
    /// The draft tokens, `[m]`, `m <= max`.
    pub tokens: Vec<u32>,
    /// `[m]`: the distribution each token was drawn from, when it was drawn
    /// at random (a model drafter under rejection sampling); empty when each
    /// was chosen outright (greedy, reproducible, the n-gram drafter), which
    /// rejection sampling verifies as a point mass.
    pub q: Vec<Distribution>,
    /// Forward passes the drafter ran for this proposal.
    pub forward_passes: usize,
    /// True when the drafter stopped short of `max` for lack of confidence.
    pub stopped_early: bool,
}

//! A language model as a drafter: it catches up on the committed tokens it
//! has not seen, then picks draft tokens one forward pass at a time, as the
//! target would pick them (sampled from its warped `q`, its argmax, or its
//! Gumbel-max choice), stopping early where it is unsure.

use super::{DraftRequest, Drafter, Proposal};
use crate::error::{Error, Result, Role};
use crate::model::{check_fits, check_static_shapes, LanguageModel};
use crate::sampling::{greedy_draft, Confidence};

impl<M: LanguageModel + ?Sized> Drafter for M {
    fn propose(&mut self, request: &mut DraftRequest<'_>) -> Result<Proposal> {
        propose(self, request).map_err(|e| e.for_role(Role::Draft))
    }

    /// Same logits width, the same token for every id when both have
    /// tokenizers, and a batch-1 shape set with the 1-token graph.
    fn check_target(&self, target: &dyn LanguageModel) -> Result<()> {
        let (tv, dv) = (target.vocab_size(), self.vocab_size());
        // Equal widths too: the draft must be able to read every token the
        // target commits, and the target every token the draft proposes.
        if tv != dv {
            return Err(Error::VocabularyMismatch {
                message: format!(
                    "target {} has {tv} logits per row, draft {} has {dv}",
                    target.name(),
                    self.name()
                ),
            });
        }
        match (target.tokenizer(), self.tokenizer()) {
            (Some(t), Some(d)) => t.check_same_vocabulary(d)?,
            (Some(_), None) => {
                return Err(Error::NoTokenizer {
                    role: Role::Draft,
                    model: self.name().to_string(),
                    needed_for: "its token ids cannot be checked against the target's \
                                 vocabulary; give it the target's tokenizer.json"
                        .into(),
                })
            }
            _ => {}
        }
        check_static_shapes(Role::Draft, &self.shapes())
    }

    fn check_limits(&self, prompt: usize, max_new_tokens: usize) -> Result<()> {
        check_fits(Role::Draft, self, prompt, max_new_tokens)
    }

    fn start(&mut self, head: &[u32]) -> Result<()> {
        self.reset()?;
        if !head.is_empty() {
            self.prefill(head)?;
        }
        Ok(())
    }

    fn rollback(&mut self, len: usize) -> Result<()> {
        if self.cached_len() > len {
            self.truncate(len)?;
        }
        Ok(())
    }
}

/// One proposal of a draft model (see the module docs).
fn propose<M: LanguageModel + ?Sized>(
    model: &mut M,
    request: &mut DraftRequest<'_>,
) -> Result<Proposal> {
    let mut proposal = Proposal::default();
    let n = request.committed.len();
    let greedy = request.sampler.is_greedy();
    for j in 0..request.max {
        // Whether to draft position j is settled before its token is
        // drawn, from the draft's distribution for it alone, and only
        // where stopping leaves a window the target runs (j + 1
        // positions). Dropping drafts already drawn instead would make
        // keeping x_j depend on x_j, and bias the output.
        let min_draft_confidence = request.min_draft_confidence(j);
        let fed = if j == 0 {
            &request.committed[model.cached_len()..]
        } else {
            &proposal.tokens[j - 1..j]
        };
        let pick = if greedy {
            // Only an id and a confidence leave the backend.
            let suppress = request.sampler.suppressed();
            let (token, sure) = feed(model, fed, &mut proposal.forward_passes, |m, last| {
                let confidence = if min_draft_confidence > 0.0 {
                    Confidence::Wanted
                } else {
                    Confidence::Skip
                };
                m.forward_last_greedy(last, suppress, confidence)
            })?;
            if token as usize >= model.vocab_size() {
                return Err(Error::Contract {
                    model: model.name().to_string(),
                    message: format!(
                        "forward_last_greedy chose id {token}, past the vocabulary of {}",
                        model.vocab_size()
                    ),
                });
            }
            greedy_draft(token, sure, min_draft_confidence)
        } else {
            let logits = feed(model, fed, &mut proposal.forward_passes, |m, last| {
                m.forward_last(last)
            })?;
            logits.expect_shape(1, model.vocab_size(), model.name())?;
            request.sampler.pick_draft_token(
                logits.row(0),
                n + j,
                min_draft_confidence,
                &mut *request.rng,
            )?
        };
        let Some(pick) = pick else {
            proposal.stopped_early = true;
            break;
        };
        proposal.tokens.push(pick.token);
        proposal.q.extend(pick.q);
    }
    Ok(proposal)
}

/// Feeds `tokens` (non-empty), a static-shape model in its compiled window
/// sizes, and returns what `last` makes of the last chunk (the chunks
/// before it go through `forward_last`, their rows unread).
fn feed<M: LanguageModel + ?Sized, T>(
    model: &mut M,
    tokens: &[u32],
    passes: &mut usize,
    last: impl FnOnce(&mut M, &[u32]) -> Result<T>,
) -> Result<T> {
    let shapes = model.shapes();
    let mut rest = tokens;
    loop {
        let n = shapes.largest_window_at_most(rest.len());
        *passes += 1;
        if n == rest.len() {
            return last(model, rest);
        }
        model.forward_last(&rest[..n])?;
        rest = &rest[n..];
    }
}

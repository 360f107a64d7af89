//! A language model as a drafter: it catches up on the committed tokens it
//! has not seen, then picks draft tokens one forward pass at a time, as the
//! target would pick them (sampled from its warped `q`, its argmax, or its
//! Gumbel-max choice), stopping early where it is unsure.

use super::{allowed_at_most, Draft, DraftRequest, Drafter};
use crate::error::{Error, Result, Role};
use crate::model::{LanguageModel, Logits, Shapes};
use crate::sampling::greedy_draft;

impl<M: LanguageModel + ?Sized> Drafter for M {
    fn propose(&mut self, request: &mut DraftRequest<'_>) -> Result<Draft> {
        let mut draft = Draft::default();
        let n = request.committed.len();
        let greedy = request.sampler.is_greedy();
        for j in 0..request.max {
            // Whether to draft position j is settled before its token is
            // drawn, from the draft's distribution for it alone, and only
            // where stopping leaves a window the target runs (j + 1
            // positions). Dropping drafts already drawn instead would make
            // keeping x_j depend on x_j, and bias the output.
            let stop_below = request.stop_below(j);
            let fed = if j == 0 {
                &request.committed[self.cached_len()..]
            } else {
                &draft.tokens[j - 1..j]
            };
            let pick = if greedy {
                // Only an id and a confidence leave the backend.
                let suppress = request.sampler.suppressed();
                let (token, sure) = feed(self, fed, &mut draft.forward_passes, |m, last| {
                    m.forward_last_greedy(last, suppress, Role::Draft, stop_below > 0.0)
                })?;
                if token as usize >= self.vocab_size() {
                    return Err(Error::Shape {
                        model: self.name().to_string(),
                        message: format!(
                            "forward_last_greedy chose id {token}, past the vocabulary of {}",
                            self.vocab_size()
                        ),
                    });
                }
                greedy_draft(token, sure, stop_below)
            } else {
                let logits = feed(self, fed, &mut draft.forward_passes, |m, last| {
                    m.forward_last(last)
                })?;
                expect_rows(&logits, 1, &*self)?;
                request
                    .sampler
                    .draft(logits.row(0), n + j, stop_below, &mut *request.rng)?
            };
            let Some(pick) = pick else {
                draft.stopped_early = true;
                break;
            };
            draft.tokens.push(pick.token);
            draft.q.extend(pick.q);
        }
        Ok(draft)
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
        let n = allowed_at_most(&shapes, rest.len());
        *passes += 1;
        if n == rest.len() {
            return last(model, rest);
        }
        model.forward_last(&rest[..n])?;
        rest = &rest[n..];
    }
}

/// Checks a backend returned `[rows, vocab]` logits (a backend bug otherwise).
pub(crate) fn expect_rows<M: LanguageModel + ?Sized>(
    logits: &Logits,
    rows: usize,
    model: &M,
) -> Result<()> {
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

/// A static-shape model must run batch size 1 and have the 1-token graph.
pub(crate) fn check_static_shapes(role: Role, shapes: &Shapes) -> Result<()> {
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
    Ok(())
}

/// A prompt of `prompt` tokens plus `max_new_tokens` fit `model`'s
/// positions, and all but the prompt's last token fit a compiled bucket.
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
            return Err(Error::Shape {
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

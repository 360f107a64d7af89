//! Toy language models: a handful of tokens, logits that depend on the whole
//! context, exact and cheap. Used where the output distribution must be
//! computed exactly.

use specdec::{LanguageModel, Logits, Result, Shapes};

/// Logits are a fixed smooth function of (seed, position, last two tokens).
#[derive(Debug, Clone)]
pub struct Toy {
    pub vocab: usize,
    pub seed: f32,
    pub scale: f32,
    pub context: Vec<u32>,
    pub n_positions: usize,
    pub eos: Vec<u32>,
    pub forwards: usize,
}

impl Toy {
    pub fn new(vocab: usize, seed: f32) -> Self {
        Self {
            vocab,
            seed,
            scale: 2.0,
            context: Vec::new(),
            n_positions: 64,
            eos: Vec::new(),
            forwards: 0,
        }
    }

    pub fn with_eos(mut self, eos: u32) -> Self {
        self.eos = vec![eos];
        self
    }

    /// Logits after `context` (non-empty).
    pub fn logits_after(&self, context: &[u32]) -> Vec<f32> {
        let n = context.len() as f32;
        let last = *context.last().unwrap() as f32;
        let prev = if context.len() > 1 {
            context[context.len() - 2] as f32
        } else {
            7.0
        };
        (0..self.vocab)
            .map(|v| {
                let v = v as f32;
                self.scale
                    * (self.seed * 1.3
                        + 2.1 * v
                        + 0.7 * last * (v + 1.0)
                        + 1.9 * prev
                        + 0.37 * n * v)
                        .sin()
            })
            .collect()
    }
}

impl LanguageModel for Toy {
    fn forward(&mut self, tokens: &[u32]) -> Result<Logits> {
        if tokens.is_empty() || self.context.len() + tokens.len() > self.n_positions {
            return Err(specdec::Error::OutOfRange {
                model: "toy".into(),
                message: format!("bad feed of {}", tokens.len()),
            });
        }
        if tokens.iter().any(|&t| t as usize >= self.vocab) {
            return Err(specdec::Error::OutOfRange {
                model: "toy".into(),
                message: "token outside vocabulary".into(),
            });
        }
        self.forwards += 1;
        let mut data = Vec::with_capacity(tokens.len() * self.vocab);
        for &t in tokens {
            self.context.push(t);
            data.extend(self.logits_after(&self.context));
        }
        Ok(Logits::new(data, self.vocab))
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.context.len() {
            return Err(specdec::Error::OutOfRange {
                model: "toy".into(),
                message: "truncate past end".into(),
            });
        }
        self.context.truncate(len);
        Ok(())
    }

    fn cached_len(&self) -> usize {
        self.context.len()
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn n_positions(&self) -> usize {
        self.n_positions
    }

    fn shapes(&self) -> Shapes {
        Shapes::Dynamic
    }

    fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    fn name(&self) -> &str {
        "toy"
    }
}

/// A drafter with no distribution that is mostly wrong: it proposes
/// `last + 1, last + 2, ...` (mod the vocabulary) after the last committed
/// token, as many as allowed. Verified as point masses.
#[derive(Debug, Clone)]
pub struct Stubborn {
    pub vocab: u32,
}

impl specdec::Drafter for Stubborn {
    fn propose(
        &mut self,
        request: &mut specdec::drafter::DraftRequest<'_>,
    ) -> specdec::Result<specdec::drafter::Proposal> {
        let last = *request.committed.last().unwrap();
        Ok(specdec::drafter::Proposal {
            tokens: (1..=request.max as u32)
                .map(|i| (last + i) % self.vocab)
                .collect(),
            ..specdec::drafter::Proposal::default()
        })
    }
}

//! Static shapes: the rules of a backend compiled ahead of time (AWS
//! Inferentia2), as [`StaticShapes`] it declares and as
//! [`StaticShapeModel`], which makes any model obey them.

use crate::error::{Error, Result};
use crate::model::{check_truncate, LanguageModel, Logits, Rows, Shapes};
use crate::tokenizer::Tokenizer;

pub use crate::model::StaticShapes;

/// Token used to pad a prompt up to its bucket (its logits are discarded).
pub const PAD_TOKEN: u32 = 0;

/// A static-shape adapter: any [`LanguageModel`] made to obey the rules of a
/// backend compiled ahead of time (AWS Inferentia2 through transformers-neuronx
/// or NxD Inference), so the generator can be proven against those rules on
/// a machine without the hardware.
///
/// The rules, enforced exactly:
/// - a forward of `n` tokens is allowed only if `n` is a compiled window (a
///   token-generation graph), or, on an empty cache, if a compiled prompt
///   bucket holds it (a context-encoding graph);
/// - a prompt pass is padded up to its bucket: the padding positions are
///   really computed and written into the KV cache, then left behind as
///   garbage for later writes to overwrite, as on the device;
/// - rollback moves the write position only (`cache_ids` of the next call);
/// - nothing runs past the compiled `n_positions`; batch size is 1.
#[derive(Debug)]
pub struct StaticShapeModel<M> {
    inner: M,
    shapes: StaticShapes,
    n_positions: usize,
    /// Committed write position (`cache_ids` of the next call start here).
    len: usize,
    /// Forward passes run, by kind, for tests and reports.
    graph_calls: GraphCalls,
}

/// How often each kind of compiled graph ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphCalls {
    /// Context-encoding passes (prompt, padded to a bucket).
    pub context_encoding: usize,
    /// Token-generation passes, by window size: `(window, count)`, ascending.
    pub token_generation: Vec<(usize, usize)>,
    /// Positions computed as padding.
    pub padded_positions: usize,
}

impl<M: LanguageModel> StaticShapeModel<M> {
    /// Wraps `inner`, which must hold at least `n_positions`. Windows and
    /// buckets are sorted and deduplicated; every bucket must fit `n_positions`.
    pub fn new(inner: M, mut shapes: StaticShapes, n_positions: usize) -> Result<Self> {
        shapes.windows.sort_unstable();
        shapes.windows.dedup();
        shapes.prompt_buckets.sort_unstable();
        shapes.prompt_buckets.dedup();
        let bad = |name: &'static str, value: String, expected: &str| {
            Err(Error::setting(name, value, expected))
        };
        if shapes.windows.is_empty() || shapes.windows[0] == 0 {
            return bad(
                "windows",
                format!("{:?}", shapes.windows),
                "a non-empty list of sizes >= 1",
            );
        }
        if shapes.prompt_buckets.is_empty() || shapes.prompt_buckets[0] == 0 {
            return bad(
                "prompt_buckets",
                format!("{:?}", shapes.prompt_buckets),
                "a non-empty list of sizes >= 1",
            );
        }
        if shapes.batch_size != 1 {
            return bad("batch_size", shapes.batch_size.to_string(), "1");
        }
        if n_positions == 0 || n_positions > inner.n_positions() {
            return bad(
                "n_positions",
                n_positions.to_string(),
                &format!("1..={} (what the wrapped model holds)", inner.n_positions()),
            );
        }
        let largest = *shapes.prompt_buckets.last().unwrap_or(&0);
        let widest = *shapes.windows.last().unwrap_or(&0);
        if largest.max(widest) > n_positions {
            return bad(
                "prompt_buckets",
                format!("{:?}", shapes.prompt_buckets),
                &format!("buckets and windows <= n_positions = {n_positions}"),
            );
        }
        Ok(Self {
            inner,
            shapes,
            n_positions,
            len: 0,
            graph_calls: GraphCalls::default(),
        })
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Unwraps.
    pub fn into_inner(self) -> M {
        self.inner
    }

    /// Graph runs so far.
    pub fn graph_calls(&self) -> &GraphCalls {
        &self.graph_calls
    }

    fn name(&self) -> String {
        format!("static-shape {}", self.inner.name())
    }

    fn out_of_range(&self, message: String) -> Error {
        Error::OutOfRange {
            model: self.name(),
            message,
        }
    }

    /// Runs `tokens` through the graph that serves them.
    fn run(&mut self, tokens: &[u32], rows: Rows) -> Result<Logits> {
        let n = tokens.len();
        if n == 0 {
            return Err(self.out_of_range("forward of 0 tokens".into()));
        }
        if self.len + n > self.n_positions {
            return Err(self.out_of_range(format!(
                "{} cached + {n} new tokens exceed the compiled n_positions = {}",
                self.len, self.n_positions
            )));
        }
        // Rollback was only a move of the write position: reflect it in the
        // wrapped model now, as the next call's cache_ids would on device.
        if self.inner.cached_len() > self.len {
            self.inner.truncate(self.len)?;
        }
        if self.shapes.windows.contains(&n) {
            let logits = match rows {
                Rows::Last => self.inner.forward_last(tokens)?,
                Rows::All => self.inner.forward(tokens)?,
            };
            self.len += n;
            match self
                .graph_calls
                .token_generation
                .iter_mut()
                .find(|(w, _)| *w == n)
            {
                Some((_, c)) => *c += 1,
                None => {
                    self.graph_calls.token_generation.push((n, 1));
                    self.graph_calls.token_generation.sort_unstable();
                }
            }
            return Ok(logits);
        }
        let bucket = self.shapes.prompt_buckets.iter().copied().find(|&b| b >= n);
        match bucket {
            Some(bucket) if self.len == 0 && bucket <= self.n_positions => {
                let mut padded = tokens.to_vec();
                padded.resize(bucket, PAD_TOKEN);
                let logits = self.inner.forward(&padded)?;
                // The padding positions stay in the device cache as garbage
                // past the write position; the next call overwrites them.
                self.len = n;
                self.graph_calls.context_encoding += 1;
                self.graph_calls.padded_positions += bucket - n;
                let vocab = logits.vocab();
                let rows = match rows {
                    Rows::Last => n - 1..n,
                    Rows::All => 0..n,
                };
                Ok(Logits::new(logits.as_slice()[rows.start * vocab..rows.end * vocab].to_vec(), vocab))
            }
            _ => Err(Error::NotCompiled {
                model: self.name(),
                message: format!(
                "no compiled graph for {n} tokens at position {}: windows {:?}, prompt buckets {:?} (prompt buckets only on an empty cache)",
                    self.len, self.shapes.windows, self.shapes.prompt_buckets
                ),
            }),
        }
    }
}

impl<M: LanguageModel> LanguageModel for StaticShapeModel<M> {
    fn forward(&mut self, tokens: &[u32]) -> Result<Logits> {
        self.run(tokens, Rows::All)
    }

    fn forward_last(&mut self, tokens: &[u32]) -> Result<Logits> {
        self.run(tokens, Rows::Last)
    }

    fn truncate(&mut self, len: usize) -> Result<()> {
        check_truncate(&self.name(), len, self.len)?;
        self.len = len;
        Ok(())
    }

    fn cached_len(&self) -> usize {
        self.len
    }

    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn n_positions(&self) -> usize {
        self.n_positions
    }

    fn shapes(&self) -> Shapes {
        Shapes::Static(self.shapes.clone())
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.inner.tokenizer()
    }

    fn eos_token_ids(&self) -> &[u32] {
        self.inner.eos_token_ids()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

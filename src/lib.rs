//! # specdec: exact speculative decoding
//!
//! Generating a token with a large language model reads every weight once,
//! so decoding is bound by memory bandwidth: a 70B model takes ~21 ms a token
//! where a 7B one takes ~4 ms. Speculative decoding lets a small *draft* model
//! guess the next tokens and the large *target* model check a whole window of
//! guesses in one forward pass, which costs about as much as producing one
//! token. Rejection sampling decides which guesses to keep so that the output
//! follows the target's distribution **exactly**; greedy output is
//! token-for-token the target's own.
//!
//! ## Words
//!
//! One word for each thing, in code, docs and statistics:
//!
//! | word | meaning |
//! |---|---|
//! | *target* | the large model whose distribution the output follows |
//! | *drafter* | whatever proposes tokens ([`Drafter`]): a *draft model* (any [`LanguageModel`]) or [`NGram`] |
//! | *window*, `k` | the target positions one verification pass scores: the last committed token plus up to `k - 1` draft tokens |
//! | *proposal* | a drafter's answer for one window ([`drafter::Proposal`]): the draft tokens and, where drawn at random, their `q` rows |
//! | *draft tokens* | the tokens of a proposal, `d_1..d_{k-1}` |
//! | `q`, `p` | the warped distributions of the draft model and of the target at a position |
//! | *accepted* | the draft tokens the verifier keeps, a prefix |
//! | *recovered* / *bonus* | the token the target adds after a rejection / after a window with none |
//! | *committed* | the prompt plus every token output so far |
//! | `min_draft_confidence` | the probability below which a draft model stops a proposal early (adaptive windows) |
//!
//! Output tokens per window = accepted + 1 (recovered or bonus). Our window
//! `k` counts the target's positions: vLLM's `num_speculative_tokens` and
//! llama.cpp's `--draft` (`n_draft`) count drafted tokens, which is our
//! `k - 1`.
//!
//! ## The loop, step by step
//!
//! With a window `k`, each iteration of [`Generator`] (`src/generator.rs`):
//!
//! 1. **Propose.** The [`Drafter`] proposes up to `k - 1` *draft tokens*
//!    `d_1..d_{k-1}` (`src/drafter/`). A draft model catches up on committed
//!    tokens it has not seen, then picks each token as the target would:
//!    drawn from its warped distribution `q_i` (temperature, top-k, top-p,
//!    min-p), keeping each `q_i`; or its argmax (greedy); or its Gumbel-max
//!    choice (reproducible sampling, below). With *adaptive windows*
//!    ([`GenerateConfig::min_draft_confidence`], 0.3 by default) it stops
//!    early, before drawing `d_i`, when `q_i`'s most likely token has less
//!    than that probability: the target then spends no work on positions
//!    the draft model would probably get wrong. The decision depends only
//!    on the prefix before that position, so step 3's guarantee is
//!    untouched. The [`NGram`] drafter needs no model: it finds the longest
//!    suffix (up to `n` tokens) of the committed sequence earlier in it and
//!    proposes the tokens that followed, or nothing (the window is then
//!    plain decoding).
//! 2. **Verify.** The target runs **one** forward pass over the last
//!    committed token and the draft tokens: up to `k` positions, a row of
//!    logits for each, warped the same way into `p_1, p_2, ...`
//!    (`src/verify.rs`).
//! 3. **Accept.** Left to right, `d_i` is *accepted* with probability
//!    `min(1, p_i(d_i) / q_i(d_i))` (greedy: iff it is the target's argmax).
//!    At the first rejection a *recovered* token is drawn from
//!    `norm(max(0, p_i - q_i))` (greedy: the target's argmax); if all are
//!    accepted a *bonus* token is drawn from `p_k` (the last row). A draft
//!    token with no distribution (n-gram) is a point mass `q_i`: accepted
//!    with probability `p_i(d_i)`, recovered from `p_i` without `d_i`.
//!    The target's cache and the drafter roll back to the accepted prefix
//!    (no re-prefill).
//! 4. **Commit.** The accepted tokens and the recovered or bonus token are
//!    output, stopping at EOS, a stop string or the budget, even when a
//!    window ran past it: nothing after an EOS is emitted, and the text
//!    ends before a stop string (`src/output.rs`).
//!
//! `k = 1` is plain decoding of the target. The proof that step 3 preserves
//! `p` is in Leviathan et al. (2023), Appendix A.1; `tests/exact_distribution.rs`
//! checks it by enumerating every random branch of the generator on small
//! vocabularies.
//!
//! ## Reproducible sampling
//!
//! Under rejection sampling a seed's tokens depend on the draft and on `k`
//! (the random draws are spent differently). With
//! [`GenerateConfig::sampling_mode`] set to [`SamplingMode::Reproducible`],
//! the token at absolute position `t` is `argmax_v (ln p_t(v) + g(t, v))`,
//! where `g(t, v)` is a standard Gumbel variate computed from a hash of
//! `(seed, t, v)` ([`sampling::gumbel`]): an exact draw from `p_t`. A draft
//! model proposes `argmax_v (ln q_t(v) + g(t, v))` with the same noise, and
//! step 3 accepts a draft token iff it equals the target's choice, emitting
//! the target's choice at the first mismatch. The output is then token for
//! token plain decoding's in this mode for that seed, whatever the draft,
//! `k` or windows (Daliri et al. 2024); acceptance is lower than rejection
//! sampling's, which stays the default.
//!
//! ## Example
//!
//! ```no_run
//! use specdec::{CandleModel, GenerateConfig, Generator, SamplingParams};
//!
//! # fn main() -> specdec::Result<()> {
//! let target = CandleModel::load("models/py-s")?;
//! let draft = CandleModel::load("models/py-xs")?;
//! let mut generator = Generator::new(target, draft)?;
//! let config = GenerateConfig {
//!     max_new_tokens: 64,
//!     k: 8,
//!     sampling: SamplingParams::greedy(),
//!     ..GenerateConfig::default()
//! };
//! let out = generator.generate_text("def fibonacci(n):", &config)?;
//! println!("{}", out.text.unwrap_or_default());
//! println!("{}", out.stats.summary());
//! # Ok(())
//! # }
//! ```
//!
//! ## Where things live
//!
//! The crate root holds the loop and the models; details sit under their
//! modules: [`drafter`] (proposals, the draft-model and n-gram drafters),
//! [`sampling`] (logits to distributions, seeded draws), [`verify`]
//! (rejection sampling as pure functions, and the target's pass), [`chat`]
//! (chat templates), and [`backend`]: [`backend::candle`] (checkpoint and
//! GGUF loading, CPU kernels, CUDA), [`backend::static_shape`] (the rules of
//! compiled backends such as AWS Inferentia2) and [`backend::conformance`]
//! (the trait's contract as checks).
//!
//! ## Backends
//!
//! Anything that implements [`LanguageModel`] can be a draft model or a
//! target. [`CandleModel`] runs Hugging Face Llama / Mistral / Qwen2
//! checkpoints and llama / qwen2 GGUF files (dequantized, or computed on
//! their 4- to 8-bit blocks) on the CPU, and with the `cuda` feature on an
//! NVIDIA GPU in bf16, where decoding replays CUDA graphs of our own fused
//! kernels ([`LoadOptions::cuda_graph_widths`]) and a token's logits are
//! the same bits in any window; a model's [`ChatTemplate`] turns
//! [`ChatMessage`]s into its prompt. On the CPU, call
//! [`backend::candle::init_thread_pool`] once from the generating thread to
//! save a thread hand-over per forward pass.
//! [`StaticShapeModel`](backend::static_shape::StaticShapeModel) wraps any
//! model in the rules of a compiled, static-shape backend such as AWS
//! Inferentia2, and [`backend::conformance`] checks a backend against the
//! contract.

#![warn(missing_docs)]

pub mod backend;
pub mod chat;
mod config;
pub mod drafter;
mod error;
mod generator;
mod json;
mod model;
mod output;
pub mod sampling;
mod stats;
mod tokenizer;
pub mod verify;

pub use backend::candle::{AttentionWindow, CandleModel, LoadOptions, Quantization};
pub use chat::{ChatMessage, ChatTemplate, GenerationPrompt};
pub use config::{Eos, GenerateConfig};
pub use drafter::{Drafter, NGram};
pub use error::{Error, Result, Role};
pub use generator::Generator;
pub use model::{LanguageModel, Logits, Shapes};
pub use output::{Chunk, Output, StopReason};
pub use sampling::{SamplingMode, SamplingParams};
pub use stats::Stats;
pub use tokenizer::{Tokenizer, MAX_TEXT_BYTES_PER_POSITION};

/// Re-exported so callers can pick a device and dtype without naming
/// candle-core themselves.
pub use candle_core::{DType, Device};

/// The README's code blocks, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! Generate text with speculative decoding.
//!
//! With no model flags it runs the embedded default pair (py-s target, py-xs
//! draft, under `models/`):
//!
//! ```text
//! cargo run --release --example generate -- --prompt "def fibonacci(n):"
//! cargo run --release --example generate -- --target DIR --draft DIR --k 5 --temperature 0.8 --prompt-file p.txt
//! cargo run --release --example generate -- --target DIR --ngram 3 --prompt-file p.txt
//! cargo run --release --example generate -- --temperature 0.8 --reproducible --seed 7 --prompt "def f(x):"
//! cargo run --release --example generate -- --target M.gguf --draft M.gguf --draft-as-stored --chat "Hi!"
//! ```
//!
//! `--target DIR` without `--draft` drafts with the n-gram drafter (prompt
//! lookup, no draft model; `--ngram N` sets its longest match, 3 by default)
//! and says so on stderr. `--reproducible` samples so that the seed alone
//! decides the text, with any draft and any `--k`. The last one chats with a
//! GGUF model through its own chat template, with the file's quantized blocks
//! as the draft and the dequantized model as the target.
//!
//! Streams the text, then prints a one-line summary on stderr. `--json` prints
//! one JSON object instead. Bad arguments or model files print one line on
//! stderr and exit with code 2, also when the fault shows only while
//! generating (NaN logits): the text committed before it stays on stdout. A
//! failing device or runtime exits with 1. A closed stdout (`| head -c1`)
//! ends the program quietly with 0.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use specdec::{
    CandleModel, ChatMessage, Drafter, Eos, Error, GenerateConfig, GenerationPrompt, Generator,
    LanguageModel, NGram, Output, Role, SamplingMode, SamplingParams,
};

mod common;

#[derive(Parser, Debug)]
#[command(about = "Exact speculative decoding: a draft proposes, the target verifies.")]
struct Args {
    /// Target model: a directory (Hugging Face Llama / Mistral / Qwen2) or a
    /// llama GGUF file. Default: embedded py-s.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Draft model directory or GGUF file (the target's own file works, with
    /// --draft-as-stored). Default: embedded py-xs with the embedded target;
    /// with --target, the n-gram drafter.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Draft with the n-gram drafter (prompt lookup, no draft model):
    /// match suffixes of up to N tokens earlier in the text.
    #[arg(long, value_name = "N", conflicts_with = "draft", value_parser = common::ngram,
          allow_negative_numbers = true)]
    ngram: Option<usize>,
    /// Reproducible sampling: Gumbel-max keyed by seed and position, so the
    /// same seed gives the same text with any draft and any window.
    #[arg(long)]
    reproducible: bool,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Chat: send this user message through the target's chat template (GGUF
    /// metadata, or chat_template.jinja / tokenizer_config.json beside a model
    /// directory); the reply ends at the end-of-turn token.
    #[arg(long, conflicts_with_all = ["prompt", "prompt_file"])]
    chat: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128, value_parser = common::count, allow_negative_numbers = true)]
    max_new_tokens: usize,
    /// Window: the target verifies up to k positions per pass (up to k - 1 drafted). 1 = plain decoding.
    #[arg(long, default_value_t = GenerateConfig::default().k, value_parser = common::window,
          allow_negative_numbers = true)]
    k: usize,
    /// Adaptive windows: the draft stops proposing when its next token's
    /// probability is below this (0 = always draft k - 1). Greedy output
    /// does not change, nor the distribution of sampled output.
    #[arg(long, alias = "min-confidence",
          default_value_t = GenerateConfig::default().min_draft_confidence,
          allow_negative_numbers = true)]
    min_draft_confidence: f32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep only the k most likely tokens.
    #[arg(long, value_parser = common::count, allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of tokens with this much mass.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens below this fraction of the most likely one's probability.
    #[arg(long, allow_negative_numbers = true)]
    min_p: Option<f32>,
    /// Random seed (sampling only).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Never stop at EOS (the EOS token gets probability 0).
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    device: common::Device,
    /// Print only the generated text.
    #[arg(long)]
    quiet: bool,
    /// Print one JSON object (text, token ids, stop reason, stats) instead.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args: Args = common::parse_args();
    common::finish(args.device.apply_threads().and_then(|()| run(&args)))
}

/// The embedded default pair: `models/` of the checkout this was built in,
/// or `SPECDEC_MODELS` (for a binary carried to another machine).
fn embedded(name: &str) -> PathBuf {
    std::env::var_os("SPECDEC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
        .join(name)
}

fn run(args: &Args) -> anyhow::Result<()> {
    // A prompt file is opened now (a missing one is reported before
    // loading) and read once the target's n_positions caps it.
    let prompt_file = match (&args.prompt, &args.prompt_file) {
        (Some(_), _) => None,
        (None, Some(path)) => Some(common::PromptFile::open("--prompt-file", path)?),
        // Rendered once the target (and its template) is loaded.
        (None, None) if args.chat.is_some() => None,
        (None, None) => anyhow::bail!("give --prompt TEXT, --prompt-file PATH or --chat MESSAGE"),
    };
    let config = GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        k: args.k,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
        },
        sampling_mode: if args.reproducible {
            SamplingMode::Reproducible
        } else {
            SamplingMode::Rejection
        },
        seed: args.seed,
        min_draft_confidence: args.min_draft_confidence,
        stop_strings: args.stop.clone(),
        eos: if args.ignore_eos {
            Eos::Ignore
        } else {
            Eos::Model
        },
    };
    // Check every setting before spending time on loading.
    config.validate()?;

    let verbose = !args.quiet && !args.json;
    let target_dir = args.target.clone().unwrap_or_else(|| embedded("py-s"));
    // Nothing is printed while loading: an error is then the only line on
    // stderr.
    let target = CandleModel::load_with(&target_dir, &args.device.target_options()?)?;
    if target.tokenizer().is_none() {
        let missing = if target_dir.is_dir() {
            format!("{} is missing", target_dir.join("tokenizer.json").display())
        } else {
            format!(
                "{} has no tokenizer (no tokenizer.ggml.* metadata, no tokenizer.json beside it)",
                target_dir.display()
            )
        };
        anyhow::bail!("{missing}: the target needs it to encode the prompt");
    }
    let max_text = target
        .n_positions()
        .saturating_mul(specdec::MAX_TEXT_BYTES_PER_POSITION);
    let prompt = match (&args.chat, &args.prompt, prompt_file) {
        (Some(message), _, _) => chat_prompt(&target, message)?,
        (None, Some(p), _) => p.clone(),
        (None, None, Some(file)) => file.read(max_text, target.n_positions())?,
        (None, None, None) => unreachable!("checked above"),
    };
    // A target of the user's own with no draft: the n-gram drafter, which
    // fits any vocabulary (the embedded py-xs fits only its own).
    let ngram = match (&args.draft, &args.target, args.ngram) {
        (_, _, Some(n)) => Some(n),
        (None, Some(_), None) => Some(3),
        _ => None,
    };
    let draft_dir = args.draft.clone().unwrap_or_else(|| embedded("py-xs"));
    if let (Some(_), Some(w)) = (ngram, args.device.draft_window) {
        anyhow::bail!(
            "--draft-window {},{}: the n-gram drafter has no attention to bound (give --draft DIR)",
            w.sinks,
            w.recent
        );
    }
    let draft: Box<dyn Drafter> = match ngram {
        Some(n) => Box::new(NGram::new(n)?),
        None => Box::new(CandleModel::load_with(
            &draft_dir,
            &args.device.draft_options()?,
        )?),
    };
    let mut generator = Generator::new(target, draft)?;
    let ids = generator.encode(&prompt)?;

    let mut stdout = std::io::stdout().lock();
    if verbose && args.chat.is_none() {
        write!(stdout, "{prompt}")?;
    }
    let stream = !args.json;
    let (mut closed, mut wrote) = (None, verbose);
    let output = generator.generate_stream(&ids, &config, |chunk| {
        if stream && !chunk.text.is_empty() {
            wrote = true;
            if let Err(e) = write!(stdout, "{}", chunk.text).and_then(|_| stdout.flush()) {
                closed = Some(e); // stdout closed: stop early
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    if let Some(e) = closed {
        return Err(e.into()); // a closed pipe ends quietly in `common::finish`
    }
    if output.is_err() && wrote {
        // End the text so far with its line; the error follows on stderr.
        let _ = writeln!(stdout);
    }
    // A model fault names the model's directory, first.
    let output = output.map_err(|e| {
        let dir = match e.root_cause() {
            Error::NonFiniteLogits { role, .. } | Error::EmptyDistribution { role, .. } => {
                Some(if *role == Some(Role::Target) {
                    &target_dir
                } else {
                    &draft_dir
                })
            }
            _ => None,
        };
        match dir {
            Some(dir) => anyhow::Error::from(e).context(format!("model {}", dir.display())),
            None => e.into(),
        }
    })?;
    if args.json {
        let mut json = to_json(&output, ids.len());
        json["draft_window"] = common::window_json(args.device.draft_window);
        writeln!(stdout, "{json}")?;
    } else {
        writeln!(stdout)?;
        if !args.quiet {
            // Said with the summary, so that a fault still prints one line.
            let drafter = match (ngram, args.device.draft_window) {
                (Some(n), _) => {
                    format!(" (drafted by the n-gram drafter, n = {n}: no draft model)")
                }
                (None, Some(w)) => format!(" (draft window: {})", common::window_label(Some(w))),
                (None, None) => String::new(),
            };
            eprintln!(
                "[{}] stop: {}{drafter}",
                output.stats.summary(),
                output.stop_reason.as_str()
            );
        }
    }
    Ok(())
}

/// `message` as a user turn in the target's chat template, with the
/// assistant's turn opened.
fn chat_prompt(target: &CandleModel, message: &str) -> anyhow::Result<String> {
    let Some(template) = target.chat_template()? else {
        anyhow::bail!(
            "--chat: {} has no chat template (GGUF tokenizer.chat_template, chat_template.jinja \
             or tokenizer_config.json's chat_template)",
            target.dir().display()
        );
    };
    Ok(template.render(&[ChatMessage::user(message)], GenerationPrompt::Add)?)
}

fn to_json(out: &Output, prompt_tokens: usize) -> serde_json::Value {
    let s = &out.stats;
    serde_json::json!({
        "text": out.text.clone().unwrap_or_default(),
        "token_ids": out.tokens,
        "prompt_tokens": prompt_tokens,
        "stop_reason": out.stop_reason.as_str(),
        "stats": {
            "k": s.k,
            "generated_tokens": s.generated_tokens,
            "target_calls": s.target_calls,
            "draft_calls": s.draft_calls,
            "drafted": s.drafted,
            "accepted": s.accepted,
            "recovered": s.recovered,
            "bonus": s.bonus,
            "accepted_at": s.accepted_at,
            "windows": s.windows,
            "stopped_early": s.stopped_early,
            "matched": s.matched,
            "acceptance_rate": s.acceptance_rate(),
            "tokens_per_target_call": s.tokens_per_target_call(),
            "ms_per_token": s.ms_per_token(),
            "prefill_ms": s.prefill_ms(),
            "target_prefill_ms": s.target_prefill_ms(),
            "draft_prefill_ms": s.draft_prefill_ms(),
            "decode_ms": s.decode_ms(),
            "draft_ms": s.draft_ms(),
            "verify_ms": s.verify_ms(),
            "other_ms": s.other_ms(),
        }
    })
}

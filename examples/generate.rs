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
//! ```
//!
//! `--target DIR` without `--draft` drafts with the n-gram drafter (prompt
//! lookup, no draft model; `--ngram N` sets its longest match, 3 by default)
//! and says so on stderr. `--reproducible` samples so that the seed alone
//! decides the text, with any draft and any `--k`.
//!
//! Streams the text, then prints a one-line summary on stderr. `--json` prints
//! one JSON object instead. Bad arguments or model files exit with code 2 and
//! a one-line message.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use specdec::{
    CandleModel, Drafter, Eos, Error, GenerateConfig, Generator, LoadOptions, NGram, Output,
    SamplingMode, SamplingParams,
};

mod common;

#[derive(Parser, Debug)]
#[command(about = "Exact speculative decoding: a draft proposes, the target verifies.")]
struct Args {
    /// Target model directory (Hugging Face Llama / Mistral / Qwen2). Default: embedded py-s.
    #[arg(long)]
    target: Option<PathBuf>,
    /// Draft model directory. Default: embedded py-xs with the embedded
    /// target; with --target, the n-gram drafter.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Draft with the n-gram drafter (prompt lookup, no draft model):
    /// match suffixes of up to N tokens earlier in the text.
    #[arg(long, value_name = "N", conflicts_with = "draft")]
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
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Window: the target verifies up to k positions per pass (up to k - 1 drafted). 1 = plain decoding.
    #[arg(long, default_value_t = GenerateConfig::default().k)]
    k: usize,
    /// Adaptive windows: the draft stops proposing when its next token's
    /// probability is below this (0 = always draft k - 1). Greedy output
    /// does not change, nor the distribution of sampled output.
    #[arg(long, default_value_t = GenerateConfig::default().min_draft_confidence)]
    min_confidence: f32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: keep the smallest set of tokens with this much mass.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens below this fraction of the most likely one's probability.
    #[arg(long)]
    min_p: Option<f32>,
    /// Random seed (sampling only).
    #[arg(long, default_value_t = 0)]
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

/// Errors that mean "your input is wrong" exit with 2, others with 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(
            Error::Interrupted { .. }
            | Error::Candle(_)
            | Error::Backend { .. }
            | Error::NonFiniteLogits { .. },
        ) => 1,
        _ => 2,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.device.apply_threads().and_then(|()| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

fn embedded(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

fn load(
    role: &str,
    dir: &Path,
    options: &LoadOptions,
    verbose: bool,
) -> anyhow::Result<CandleModel> {
    if verbose {
        eprint!("loading {role} {} ... ", dir.display());
    }
    let start = Instant::now();
    let model = CandleModel::load_with(dir, options);
    if verbose {
        match &model {
            Ok(_) => eprintln!("{:.2} s", start.elapsed().as_secs_f64()),
            Err(_) => eprintln!("failed"),
        }
    }
    Ok(model?)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--prompt-file {}: {e}", path.display()))?,
        (None, None) => anyhow::bail!("give --prompt TEXT or --prompt-file PATH"),
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
        min_draft_confidence: args.min_confidence,
        stop_strings: args.stop.clone(),
        eos: if args.ignore_eos {
            Eos::Ignore
        } else {
            Eos::Model
        },
    };
    // Check settings before spending time on loading.
    config.sampling.validate()?;

    let verbose = !args.quiet && !args.json;
    let target_dir = args.target.clone().unwrap_or_else(|| embedded("py-s"));
    let target = load(
        "target",
        &target_dir,
        &args.device.target_options()?,
        verbose,
    )?;
    // A target of the user's own with no draft: the n-gram drafter, which
    // fits any vocabulary (the embedded py-xs fits only its own).
    let ngram = match (&args.draft, &args.target, args.ngram) {
        (_, _, Some(n)) => Some(n),
        (None, Some(_), None) => Some(3),
        _ => None,
    };
    let draft: Box<dyn Drafter> = match ngram {
        Some(n) => {
            if !args.quiet {
                eprintln!("drafting with the n-gram drafter (n = {n}, no draft model)");
            }
            Box::new(NGram::new(n)?)
        }
        None => {
            let draft_dir = args.draft.clone().unwrap_or_else(|| embedded("py-xs"));
            Box::new(load(
                "draft",
                &draft_dir,
                &args.device.draft_options()?,
                verbose,
            )?)
        }
    };
    let mut generator = Generator::new(target, draft)?;
    let ids = generator.encode(&prompt)?;

    let mut stdout = std::io::stdout().lock();
    if verbose {
        write!(stdout, "{prompt}")?;
    }
    let stream = !args.json;
    let output = generator.generate_stream(&ids, &config, |chunk| {
        if stream && !chunk.text.is_empty() {
            let ok = write!(stdout, "{}", chunk.text).and_then(|_| stdout.flush());
            if ok.is_err() {
                return ControlFlow::Break(()); // stdout closed: stop early
            }
        }
        ControlFlow::Continue(())
    })?;
    if args.json {
        writeln!(stdout, "{}", to_json(&output, ids.len()))?;
    } else {
        writeln!(stdout)?;
        if !args.quiet {
            eprintln!(
                "[{}] stop: {}",
                output.stats.summary(),
                output.stop_reason.as_str()
            );
        }
    }
    Ok(())
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
            "decode_ms": s.decode_ms(),
            "draft_ms": s.draft_ms(),
            "verify_ms": s.verify_ms(),
            "other_ms": s.other_ms(),
        }
    })
}

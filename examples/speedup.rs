//! Measures speculative decoding against plain decoding of the same target,
//! interleaved on every prompt, and compares each window's speedup with the
//! closed form of Leviathan et al. (2023), extended with the measured cost
//! of a k-token verify pass.
//!
//! ```text
//! cargo run --release --example speedup -- \
//!     --target ../shared/models/py-m --draft ../shared/models/py-s \
//!     --prompts ../shared/bench/prompts_py.json --max-new-tokens 128 --k 2,3,4,5,6,8 \
//!     --svg speedup.svg
//! ```
//!
//! For each prompt (the first is a warm-up, not counted) it runs plain
//! decoding (`k = 1`) and then every `k`, and repeats that `--rounds` times.
//! EOS is suppressed so every run generates exactly `--max-new-tokens`, as
//! transformers' `min_new_tokens` does in `../shared/bench/hf_peer.py`.
//!
//! The model: with acceptance `α` per draft token (estimated as
//! accepted / (accepted + rejections)), `γ = k - 1` drafted tokens, a draft
//! pass costing `c` target passes and a k-token verify pass costing `r_k`
//! 1-token passes, one window yields `(1 - α^(γ+1)) / (1 - α)` tokens for
//! `γ c + r_k` units of time, so the predicted speedup is their ratio.
//! `c` and `r_k` are taken prompt by prompt, as ratios to the plain run of
//! the same prompt just before (so the machine's drift cancels). The decode
//! speedup and the prediction are also per prompt (the prediction from that
//! prompt's own `α`, `c` and `r_k`), then the median over prompts; the
//! columns `alpha`, `c` and `r_k` show the pooled `α` and the medians.
//! Both speedup columns are medians of per-prompt ratios (plain over
//! speculative on the same prompt), not ratios of the median times.
//!
//! `--adaptive-k 4,8` adds rows for adaptive windows: the draft stops
//! proposing when its next token's probability is below `--min-draft-confidence`
//! (the library default, 0.3), so windows vary from 1 to `k`. The closed
//! form assumes a fixed window, so these rows are "predicted" from the cost
//! model alone: the tokens they produced over (draft passes x `c` + the sum
//! over their verify passes of `r_w`, with `r_w` interpolated between this
//! prompt's fixed-window rows). Tokens and draft passes are measured, so
//! this checks for overhead the cost model leaves out (and the verify
//! costs), not the acceptance model. `--adaptive-k` may not exceed the
//! largest `--k`: nothing is extrapolated.
//!
//! Two speedups are printed: end to end ((prefill + decode) / tokens, as
//! `hf_peer.py` times `generate()`), and decoding alone, which is what the
//! closed form models (speculation does not touch the prompt pass, and the
//! draft's own prompt pass is a cost the formula leaves out).
//!
//! `--draft-window SINKS,RECENT` loads the draft with a bounded attention
//! context (attention sinks + the most recent keys), still exact; compare
//! its acceptance with a run without it on long prompts:
//!
//! ```text
//! cargo run --release --example speedup -- --target ../shared/models/py-m-4k \
//!     --draft ../shared/models/py-s-4k --draft-window 4,256 --prompts long.json --k 4
//! ```
//!
//! `--ngram N` replaces `--draft DIR` with the n-gram drafter (prompt
//! lookup, no draft model): its windows vary with the matches found, so no
//! speedup is predicted, and the `matched` column counts the windows that
//! had a match (of all target passes). `--reproducible` samples in the
//! reproducible mode (Gumbel-max keyed by seed and position), where, as
//! for greedy decoding, every output must equal plain decoding's:
//!
//! ```text
//! cargo run --release --example speedup -- --target ../shared/models/py-m --ngram 3 \
//!     --prompts ../shared/bench/prompts_repeat.json --k 4,8,12
//! cargo run --release --example speedup -- --target ../shared/models/py-m \
//!     --draft ../shared/models/py-s --prompts ../shared/bench/prompts_py.json \
//!     --temperature 0.7 --reproducible --k 4
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use specdec::{
    CandleModel, Drafter, Eos, GenerateConfig, Generator, NGram, Output, SamplingMode,
    SamplingParams,
};

mod common;

#[derive(Parser, Debug)]
#[command(about = "Speculative vs plain decoding, measured and predicted.")]
struct Args {
    /// Target model directory.
    #[arg(long)]
    target: PathBuf,
    /// Draft model directory.
    #[arg(long, required_unless_present = "ngram")]
    draft: Option<PathBuf>,
    /// Draft with the n-gram drafter instead of a model: match suffixes of
    /// up to N tokens earlier in the sequence (prompt lookup).
    #[arg(long, value_name = "N", conflicts_with = "draft", value_parser = common::ngram,
          allow_negative_numbers = true)]
    ngram: Option<usize>,
    /// Sample reproducibly (Gumbel-max keyed by seed and position): the
    /// tokens must then equal plain decoding's, as for greedy.
    #[arg(long)]
    reproducible: bool,
    /// JSON file with a list of prompt strings.
    #[arg(long)]
    prompts: PathBuf,
    /// Tokens per generation.
    #[arg(long, default_value_t = 128, value_parser = common::count, allow_negative_numbers = true)]
    max_new_tokens: usize,
    /// Windows to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,5,6,8",
          value_parser = common::window, allow_negative_numbers = true)]
    k: Vec<usize>,
    /// Adaptive windows to measure too, comma-separated largest windows: the
    /// draft stops proposing below `--min-draft-confidence`.
    #[arg(long, value_delimiter = ',', value_parser = common::window, allow_negative_numbers = true)]
    adaptive_k: Vec<usize>,
    /// The draft confidence below which adaptive windows stop drafting.
    #[arg(long, alias = "min-confidence",
          default_value_t = GenerateConfig::default().min_draft_confidence,
          allow_negative_numbers = true)]
    min_draft_confidence: f32,
    /// Sampling temperature (0 = greedy, where outputs must be identical).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Times to repeat every prompt (after the warm-up).
    #[arg(long, default_value_t = 1, value_parser = common::count, allow_negative_numbers = true)]
    rounds: usize,
    #[command(flatten)]
    device: common::Device,
    /// Write an SVG plot of measured and predicted speedup against k here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Every measurement of one window size.
#[derive(Default)]
struct Series {
    ms_per_token: Vec<f64>,
    /// Per prompt: the target's and the drafter's prompt passes, ms.
    target_prefill_ms: Vec<f64>,
    draft_prefill_ms: Vec<f64>,
    /// Per prompt: its length in tokens.
    prompt_tokens: Vec<f64>,
    decode_ms_per_token: Vec<f64>,
    accepted: usize,
    drafted: usize,
    rejections: usize,
    tokens: usize,
    target_calls: usize,
    /// Windows in which the drafter proposed something (for the n-gram
    /// drafter: found a match).
    matched: usize,
    /// Positions the target scored, summed over runs (see `Stats::scored_positions`).
    scored_positions: usize,
    /// Per prompt: mean ms of one target pass / one draft pass. Ratios are
    /// taken prompt by prompt against plain decoding of the same prompt,
    /// run just before, so the machine's drift cancels; then the median.
    verify_per_call: Vec<f64>,
    draft_per_call: Vec<f64>,
    /// Per prompt: acceptance per draft token, accepted / (accepted + rejections).
    alpha: Vec<f64>,
    /// Per prompt: tokens generated, draft passes, and target passes by
    /// window size (`windows[w - 1]`).
    generated: Vec<f64>,
    draft_calls: Vec<f64>,
    windows: Vec<Vec<usize>>,
    identical: bool,
}

impl Series {
    fn add(&mut self, out: &Output) {
        let s = &out.stats;
        self.ms_per_token.push(s.ms_per_token());
        self.target_prefill_ms.push(s.target_prefill_ms());
        self.draft_prefill_ms.push(s.draft_prefill_ms());
        self.prompt_tokens.push(s.prompt_tokens as f64);
        self.decode_ms_per_token
            .push(s.decode_ms() / s.generated_tokens.max(1) as f64);
        self.accepted += s.accepted;
        self.drafted += s.drafted;
        self.rejections += s.recovered;
        self.tokens += s.accepted + s.recovered + s.bonus;
        self.target_calls += s.target_calls;
        self.matched += s.matched;
        self.scored_positions += s.scored_positions();
        self.verify_per_call
            .push(s.verify_ms() / s.target_calls.max(1) as f64);
        self.draft_per_call
            .push(s.draft_ms() / s.draft_calls.max(1) as f64);
        self.alpha
            .push(s.accepted as f64 / (s.accepted + s.recovered).max(1) as f64);
        self.generated.push(s.generated_tokens as f64);
        self.draft_calls.push(s.draft_calls as f64);
        self.windows.push(s.windows.clone());
    }
    /// Element-wise `mine / base`: one ratio per (round, prompt).
    fn ratio_to(mine: &[f64], base: &[f64]) -> Vec<f64> {
        mine.iter().zip(base).map(|(a, b)| a / b).collect()
    }
    fn median(&self) -> f64 {
        median(&self.ms_per_token)
    }
    fn decode_median(&self) -> f64 {
        median(&self.decode_ms_per_token)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    k: usize,
    /// The adaptive runs' confidence threshold; 0 for fixed windows.
    min_draft_confidence: f32,
    mean_window: f64,
    ms_per_token: f64,
    speedup: f64,
    decode_ms_per_token: f64,
    decode_speedup: f64,
    /// Medians of the target's and the drafter's prompt passes, ms.
    ttft_ms: f64,
    draft_ttft_ms: f64,
    acceptance_rate: f64,
    alpha: f64,
    tokens_per_target_call: f64,
    /// Windows with a proposal, and all target passes.
    matched: usize,
    target_calls: usize,
    verify_cost_ratio: f64,
    predicted_speedup: f64,
    identical: Option<bool>,
}

/// Leviathan et al. (2023), eq. (1)-(2), with the verify pass costing `r_k`.
fn predicted(alpha: f64, k: usize, c: f64, r_k: f64) -> f64 {
    let gamma = (k - 1) as f64;
    let tokens = if alpha >= 1.0 {
        gamma + 1.0
    } else {
        (1.0 - alpha.powf(gamma + 1.0)) / (1.0 - alpha)
    };
    tokens / (gamma * c + r_k)
}

/// The cost of a `w`-token verify pass in 1-token passes, interpolated
/// linearly between measured windows (`(k, r_k)` sorted by `k`, with
/// `(1, 1)` first) and extended along the last segment past the largest.
fn verify_cost(points: &[(f64, f64)], w: f64) -> f64 {
    let i = points
        .windows(2)
        .position(|p| w <= p[1].0)
        .unwrap_or(points.len().saturating_sub(2));
    match points.get(i..i + 2) {
        Some([(k0, r0), (k1, r1)]) => r0 + (w - k0) / (k1 - k0) * (r1 - r0),
        _ => w, // one point only: no data, assume linear cost
    }
}

/// The most bytes a `--prompts` file may have: far more than any benchmark
/// needs, little enough to read and parse in memory (`/dev/zero` stops here).
const MAX_PROMPTS_FILE_BYTES: usize = 64 << 20;

fn main() -> std::process::ExitCode {
    let args: Args = common::parse_args();
    common::finish(run(&args))
}

fn run(args: &Args) -> anyhow::Result<()> {
    args.device.apply_threads()?;
    anyhow::ensure!(
        !args.k.is_empty() && args.k.iter().chain(&args.adaptive_k).all(|&k| k >= 2),
        "--k and --adaptive-k take windows >= 2"
    );
    anyhow::ensure!(
        args.min_draft_confidence > 0.0 && args.min_draft_confidence <= 1.0,
        "--min-draft-confidence takes a probability in (0, 1]"
    );
    anyhow::ensure!(
        args.ngram.is_none() || args.adaptive_k.is_empty(),
        "--adaptive-k needs a draft model: the n-gram drafter has no confidence to stop on"
    );
    let largest_fixed = args.k.iter().copied().max().unwrap_or(0);
    if let Some(&k) = args.adaptive_k.iter().find(|&&k| k > largest_fixed) {
        anyhow::bail!(
            "--adaptive-k {k} needs a fixed window >= {k} in --k: adaptive rows are predicted from the fixed rows' verify costs"
        );
    }
    let file = std::fs::File::open(&args.prompts)
        .with_context(|| format!("--prompts {}", args.prompts.display()))?;
    let text = common::read_capped(file, MAX_PROMPTS_FILE_BYTES).map_err(|e| match e {
        common::Capped::Io(e) => anyhow::anyhow!("--prompts {}: {e}", args.prompts.display()),
        common::Capped::TooLong => anyhow::anyhow!(
            "--prompts {}: more than {MAX_PROMPTS_FILE_BYTES} bytes (the most a prompts file may have)",
            args.prompts.display()
        ),
    })?;
    let prompts: Vec<String> = serde_json::from_slice(&text).with_context(|| {
        format!(
            "--prompts {}: expected a JSON list of strings",
            args.prompts.display()
        )
    })?;
    anyhow::ensure!(
        prompts.len() >= 2,
        "--prompts {}: need at least 2 prompts (the first is a warm-up), found {}",
        args.prompts.display(),
        prompts.len()
    );

    let target = CandleModel::load_with(&args.target, &args.device.target_options()?)?;
    let draft: Box<dyn Drafter> = match (&args.draft, args.ngram) {
        (_, Some(_)) if args.device.draft_window.is_some() => {
            anyhow::bail!("--draft-window: the n-gram drafter has no attention to bound")
        }
        (_, Some(n)) => Box::new(NGram::new(n)?),
        (Some(dir), None) => Box::new(CandleModel::load_with(dir, &args.device.draft_options()?)?),
        (None, None) => anyhow::bail!("give --draft DIR or --ngram N"),
    };
    let mut generator = Generator::new(target, draft)?;
    let config = |k, min_draft_confidence| GenerateConfig {
        max_new_tokens: args.max_new_tokens,
        k,
        min_draft_confidence,
        sampling: SamplingParams::with_temperature(args.temperature),
        sampling_mode: if args.reproducible {
            SamplingMode::Reproducible
        } else {
            SamplingMode::Rejection
        },
        seed: 7,
        eos: Eos::Ignore,
        ..GenerateConfig::default()
    };
    // Fixed windows first, then the adaptive ones.
    let settings: Vec<(usize, f32)> = args
        .k
        .iter()
        .map(|&k| (k, 0.0))
        .chain(
            args.adaptive_k
                .iter()
                .map(|&k| (k, args.min_draft_confidence)),
        )
        .collect();
    // Every prompt is checked with every setting before the first run, so
    // that a bad one is found now, by its number, and not after minutes.
    let name = |i: usize| {
        format!(
            "--prompts {}: prompt {} of {}",
            args.prompts.display(),
            i + 1,
            prompts.len()
        )
    };
    let mut ids: Vec<Vec<u32>> = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let encoded = generator.encode(p).with_context(|| name(i))?;
        for &(k, confidence) in std::iter::once(&(1, 0.0)).chain(&settings) {
            generator
                .check(&encoded, &config(k, confidence))
                .with_context(|| name(i))?;
        }
        ids.push(encoded);
    }

    let mut plain = Series::default();
    let mut spec: Vec<Series> = settings
        .iter()
        .map(|_| Series {
            identical: true,
            ..Series::default()
        })
        .collect();
    for round in 0..args.rounds {
        for (i, prompt) in ids.iter().enumerate() {
            let warmup = i == 0;
            if warmup && round > 0 {
                continue;
            }
            // An error ends the progress line first, and names the prompt.
            let fail = |e: specdec::Error| {
                if !args.json {
                    eprintln!();
                }
                anyhow::Error::from(e).context(name(i))
            };
            let base = generator.generate(prompt, &config(1, 0.0)).map_err(fail)?;
            for (series, &(k, confidence)) in spec.iter_mut().zip(&settings) {
                let out = generator
                    .generate(prompt, &config(k, confidence))
                    .map_err(fail)?;
                if !warmup {
                    series.identical &= out.tokens == base.tokens;
                    series.add(&out);
                }
            }
            if !warmup {
                plain.add(&base);
            }
            if !args.json {
                eprint!(
                    "\rround {}/{} prompt {}/{}",
                    round + 1,
                    args.rounds,
                    i + 1,
                    ids.len()
                );
            }
        }
    }
    if !args.json {
        eprintln!();
    }

    let plain_ms = plain.median();
    let plain_decode_ms = plain.decode_median();
    let plain_ttft_ms = median(&plain.target_prefill_ms);
    let prompt_tokens = median(&plain.prompt_tokens);
    let one_pass_ms = median(&plain.verify_per_call);
    let draft_pass_ms = median(
        &spec
            .iter()
            .flat_map(|s| s.draft_per_call.iter().copied())
            .collect::<Vec<_>>(),
    );
    let c = median(
        &spec
            .iter()
            .flat_map(|s| Series::ratio_to(&s.draft_per_call, &plain.verify_per_call))
            .collect::<Vec<_>>(),
    );
    // Greedy and reproducible outputs must equal plain decoding's.
    let greedy = args.temperature == 0.0 || args.reproducible;
    let fixed = args.k.len();
    let rows: Vec<Row> = spec
        .iter()
        .zip(&settings)
        .map(|(s, &(k, min_draft_confidence))| {
            let alpha = s.accepted as f64 / (s.accepted + s.rejections).max(1) as f64;
            let r_k = median(&Series::ratio_to(
                &s.verify_per_call,
                &plain.verify_per_call,
            ));
            let ms = s.median();
            let decode_ms = s.decode_median();
            // Realized and predicted decode speedups are both taken prompt by
            // prompt (the prediction from that prompt's own alpha, c and r_k)
            // and then the median: acceptance differs a lot between prompts,
            // and the closed form is not linear in it.
            let base = &plain.verify_per_call;
            let decode_speedup = median(&Series::ratio_to(
                &plain.decode_ms_per_token,
                &s.decode_ms_per_token,
            ));
            let predicted_speedup = if args.ngram.is_some() {
                f64::NAN // windows follow the matches: no model of them
            } else {
                median(
                    &(0..s.alpha.len())
                        .map(|i| {
                            let c_i = s.draft_per_call[i] / base[i];
                            if min_draft_confidence == 0.0 {
                                let r_i = s.verify_per_call[i] / base[i];
                                return predicted(s.alpha[i], k, c_i, r_i);
                            }
                            // Adaptive windows vary, so the closed form does not
                            // apply: the measured tokens over the cost model's
                            // time (draft passes, and each window's verify cost
                            // from this prompt's fixed-window runs).
                            let mut points = vec![(1.0, 1.0)];
                            let mut measured: Vec<(f64, f64)> = spec[..fixed]
                                .iter()
                                .zip(&args.k)
                                .map(|(f, &kf)| (kf as f64, f.verify_per_call[i] / base[i]))
                                .collect();
                            measured.sort_by(|a, b| a.0.total_cmp(&b.0));
                            measured.dedup_by(|a, b| a.0 == b.0);
                            points.extend(measured);
                            let verify: f64 = s.windows[i]
                                .iter()
                                .enumerate()
                                .map(|(w, &n)| n as f64 * verify_cost(&points, (w + 1) as f64))
                                .sum();
                            s.generated[i] / (s.draft_calls[i] * c_i + verify)
                        })
                        .collect::<Vec<_>>(),
                )
            };
            Row {
                k,
                min_draft_confidence,
                mean_window: s.scored_positions as f64 / s.target_calls.max(1) as f64,
                ms_per_token: ms,
                speedup: median(&Series::ratio_to(&plain.ms_per_token, &s.ms_per_token)),
                decode_ms_per_token: decode_ms,
                decode_speedup,
                ttft_ms: median(&s.target_prefill_ms),
                draft_ttft_ms: median(&s.draft_prefill_ms),
                acceptance_rate: s.accepted as f64 / s.drafted.max(1) as f64,
                alpha,
                tokens_per_target_call: s.tokens as f64 / s.target_calls.max(1) as f64,
                matched: s.matched,
                target_calls: s.target_calls,
                verify_cost_ratio: r_k,
                predicted_speedup,
                identical: greedy.then_some(s.identical),
            }
        })
        .collect();

    if let Some(path) = &args.svg {
        std::fs::write(path, svg(&rows, args))
            .with_context(|| format!("--svg {}", path.display()))?;
    }
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let draft_name = match (&args.draft, args.ngram) {
        (_, Some(n)) => format!("n-gram {n}"),
        (Some(dir), None) => name(dir),
        (None, None) => String::new(),
    };
    if args.json {
        let runs: Vec<_> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "k": r.k, "min_draft_confidence": r.min_draft_confidence, "mean_window": r.mean_window,
                    "ms_per_token": r.ms_per_token, "speedup": r.speedup,
                    "decode_ms_per_token": r.decode_ms_per_token, "decode_speedup": r.decode_speedup,
                    "ttft_ms": r.ttft_ms, "draft_ttft_ms": r.draft_ttft_ms,
                    "acceptance_rate": r.acceptance_rate, "alpha": r.alpha,
                    "tokens_per_target_call": r.tokens_per_target_call,
                    "matched_windows": r.matched, "target_calls": r.target_calls,
                    "verify_cost_ratio": r.verify_cost_ratio,
                    "predicted_speedup": r.predicted_speedup, "identical": r.identical,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "target": name(&args.target), "draft": draft_name,
                "sampling_mode": if args.reproducible { "reproducible" } else { "rejection" },
                "quantized_draft": args.device.quantize_draft,
                "draft_as_stored": args.device.draft_as_stored,
                "draft_window": common::window_json(args.device.draft_window),
                "target_as_stored": args.device.target_as_stored, "temperature": args.temperature,
                "max_new_tokens": args.max_new_tokens, "prompts": ids.len() - 1, "rounds": args.rounds,
                "threads": std::env::var("RAYON_NUM_THREADS").ok(),
                "device": if args.device.cuda.is_some() { "cuda" } else { "cpu" },
                "graph_widths": args.device.cuda.map(|_| &args.device.graph_widths.0),
                "draft_graph_widths": args.device.cuda.map(|_| &args.device.draft_graph_widths.0),
                "plain_ms_per_token": plain_ms, "plain_decode_ms_per_token": plain_decode_ms,
                "plain_ttft_ms": plain_ttft_ms, "prompt_tokens": prompt_tokens,
                "target_pass_ms": one_pass_ms,
                // No draft passes with the n-gram drafter: null.
                "draft_pass_ms": args.ngram.is_none().then_some(draft_pass_ms),
                "cost_ratio": args.ngram.is_none().then_some(c), "runs": runs,
            })
        );
        return Ok(());
    }
    println!(
        "target {}{} | draft {}{}{} | {} prompts x {} rounds, {} tokens, temperature {}{}",
        name(&args.target),
        if args.device.target_as_stored {
            " (blocks as stored)"
        } else {
            ""
        },
        draft_name,
        if args.device.quantize_draft {
            " (Q8_0)"
        } else if args.device.draft_as_stored {
            " (blocks as stored)"
        } else {
            ""
        },
        match args.device.draft_window {
            Some(w) => format!(" (window {})", common::window_label(Some(w))),
            None => String::new(),
        },
        ids.len() - 1,
        args.rounds,
        args.max_new_tokens,
        args.temperature,
        if args.reproducible {
            " (reproducible)"
        } else {
            ""
        }
    );
    if args.device.cuda.is_some() {
        let show = |w: &[usize]| match w {
            [] => "off (candle's ops)".to_string(),
            w => format!("{w:?}"),
        };
        println!(
            "CUDA graph widths: target {}, draft {}",
            show(&args.device.graph_widths.0),
            show(&args.device.draft_graph_widths.0)
        );
    }
    let draft_cost = if args.ngram.is_some() {
        "no draft passes (n-gram)".to_string()
    } else {
        format!("one draft pass {draft_pass_ms:.2} ms, c = {c:.3}")
    };
    println!(
        "plain: {plain_ms:.2} ms/token end to end, {plain_decode_ms:.2} decoding (medians); one target pass {one_pass_ms:.2} ms, {draft_cost}"
    );
    println!(
        "prompts: median {prompt_tokens:.0} tokens; the target's prompt pass (TTFT) {plain_ttft_ms:.1} ms in plain decoding (median)"
    );
    if !args.adaptive_k.is_empty() {
        println!(
            "adaptive rows (k <= K): the draft stops below confidence {}; their \"predicted\" is the cost model only (their measured tokens and draft passes, verify costs r_w from the fixed rows), a check for unexplained overhead",
            args.min_draft_confidence
        );
    }
    println!("|     k | ms/token | speedup | decode ms/token | decode speedup | TTFT target / draft ms | predicted | acceptance | alpha | tokens/pass | mean window | matched | verify cost r_k | identical |");
    println!("|------:|---------:|--------:|----------------:|---------------:|-----------------------:|----------:|-----------:|------:|------------:|------------:|--------:|----------------:|:---------:|");
    for r in &rows {
        let k = if r.min_draft_confidence > 0.0 {
            format!("<= {}", r.k)
        } else {
            r.k.to_string()
        };
        println!(
            "| {:>5} | {:>8.2} | {:>6.2}x | {:>15.2} | {:>13.2}x | {:>22} | {:>9} | {:>10.3} | {:>5.3} | {:>11.2} | {:>11.2} | {:>7} | {:>15.2} | {:^9} |",
            k,
            r.ms_per_token,
            r.speedup,
            r.decode_ms_per_token,
            r.decode_speedup,
            format!("{:.1} / {:.1}", r.ttft_ms, r.draft_ttft_ms),
            if r.predicted_speedup.is_nan() {
                "n/a".to_string()
            } else {
                format!("{:.2}x", r.predicted_speedup)
            },
            r.acceptance_rate,
            r.alpha,
            r.tokens_per_target_call,
            r.mean_window,
            format!("{:.0}%", 100.0 * r.matched as f64 / r.target_calls.max(1) as f64),
            r.verify_cost_ratio,
            match r.identical {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "n/a",
            }
        );
    }
    Ok(())
}

/// A small line plot: measured (solid) and predicted (dashed) speedup vs k
/// for fixed windows; adaptive windows as dots (measured filled, predicted
/// hollow) at their largest window.
fn svg(all: &[Row], args: &Args) -> String {
    let rows: Vec<&Row> = all
        .iter()
        .filter(|r| r.min_draft_confidence == 0.0)
        .collect();
    let adaptive: Vec<&Row> = all
        .iter()
        .filter(|r| r.min_draft_confidence > 0.0)
        .collect();
    let (w, h, left, right, top, bottom) = (560.0, 340.0, 60.0, 20.0, 40.0, 50.0);
    let kmin = all.iter().map(|r| r.k).min().unwrap_or(2) as f64;
    let kmax = (all.iter().map(|r| r.k).max().unwrap_or(8) as f64).max(kmin + 1.0);
    let ymax = all
        .iter()
        .flat_map(|r| [r.decode_speedup, r.predicted_speedup])
        .filter(|s| s.is_finite())
        .fold(1.5f64, f64::max)
        .ceil();
    let x = |k: f64| left + (k - kmin) / (kmax - kmin) * (w - left - right);
    let y = |s: f64| h - bottom - s / ymax * (h - top - bottom);
    let line = |f: &dyn Fn(&Row) -> f64| {
        rows.iter()
            .filter(|r| f(r).is_finite())
            .map(|r| format!("{:.1},{:.1}", x(r.k as f64), y(f(r))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">decode speedup over plain: {} + {}</text>
"#,
        w / 2.0,
        args.target
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        match (&args.draft, args.ngram) {
            (_, Some(n)) => format!("n-gram {n}"),
            (Some(d), None) => d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            (None, None) => String::new(),
        }
    );
    for i in 0..=(ymax as usize * 2) {
        let s = i as f64 / 2.0;
        let (x2, ys, xl, yl) = (w - right, y(s), left - 6.0, y(s) + 4.0);
        out += &format!(
            r##"<line x1="{left}" x2="{x2}" y1="{ys:.1}" y2="{ys:.1}" stroke="#ddd"/><text x="{xl}" y="{yl:.1}" text-anchor="end">{s:.1}x</text>
"##
        );
    }
    let (x2, y1) = (w - right, y(1.0));
    out += &format!(
        r##"<line x1="{left}" x2="{x2}" y1="{y1:.1}" y2="{y1:.1}" stroke="#888" stroke-dasharray="2,3"/>
"##
    );
    let mut ticks: Vec<usize> = all.iter().map(|r| r.k).collect();
    ticks.sort_unstable();
    ticks.dedup();
    for k in ticks {
        out += &format!(
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{k}</text>
"#,
            x(k as f64),
            h - bottom + 18.0,
        );
    }
    for r in &adaptive {
        let (cx, m, p) = (x(r.k as f64), y(r.decode_speedup), y(r.predicted_speedup));
        out += &format!(
            r##"<circle cx="{cx:.1}" cy="{m:.1}" r="5" fill="#2ca02c"/><circle cx="{cx:.1}" cy="{p:.1}" r="5" fill="none" stroke="#2ca02c" stroke-width="1.5"/>
"##
        );
    }
    if let Some(r) = adaptive.first() {
        out += &format!(
            r##"<text x="{}" y="{}" fill="#2ca02c">adaptive, k &lt;= K (draft confidence &gt;= {}): measured (dot), predicted (ring)</text>
"##,
            left + 10.0,
            top + 20.0,
            r.min_draft_confidence
        );
    }
    out += &format!(
        r##"<text x="{}" y="{}" text-anchor="middle">window k</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2.5" points="{}"/>
<polyline fill="none" stroke="#ff7f0e" stroke-width="2" stroke-dasharray="6,4" points="{}"/>
<text x="{}" y="{}" fill="#1f77b4">measured (decoding)</text><text x="{}" y="{}" fill="#ff7f0e">predicted (Leviathan et al., with verify cost)</text>
</svg>
"##,
        w / 2.0,
        h - 12.0,
        line(&|r| r.decode_speedup),
        line(&|r| r.predicted_speedup),
        left + 10.0,
        top + 4.0,
        left + 150.0,
        top + 4.0
    );
    out
}

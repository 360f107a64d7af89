//! Flags shared by the examples: where the models run and with how many
//! threads; parsing of whole numbers that reports negative and out-of-range
//! values by range; one-line error reports and exit codes.
#![allow(dead_code)]

use specdec::{AttentionWindow, Error, LoadOptions, Quantization};

/// `--threads`, `--cuda`, `--quantize-draft`, `--draft-as-stored`,
/// `--target-as-stored` and `--draft-window`, and the load options they give.
#[derive(clap::Args, Debug)]
pub struct Device {
    /// Compute threads (default: all cores; at most 8 per core).
    #[arg(long, value_parser = threads, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Run both models on this CUDA device (bf16) instead of the CPU (f32).
    /// Needs a build with `--features cuda`.
    #[arg(long, value_name = "ORDINAL", num_args = 0..=1, default_missing_value = "0",
          value_parser = count, allow_negative_numbers = true)]
    pub cuda: Option<usize>,
    /// Store the draft's weights as Q8_0 (CPU only; faster there, and only
    /// acceptance can change).
    #[arg(long, conflicts_with = "draft_as_stored")]
    pub quantize_draft: bool,
    /// Compute the draft on its weights as its file stores them: a GGUF
    /// draft's Q4/Q5/Q6/Q8 blocks stay quantized (CPU only). With the same
    /// GGUF file as --target and --draft, the target runs dequantized to f32
    /// (exact) and the draft is its 4-bit copy.
    #[arg(long)]
    pub draft_as_stored: bool,
    /// Compute the target on its weights as its file stores them (a GGUF
    /// file's quantized blocks; CPU only). Its output is then that of the
    /// quantized model, which is not the dequantized one's: activations are
    /// rounded to 8 bits per block of 32 before each product, as llama.cpp
    /// does.
    #[arg(long)]
    pub target_as_stored: bool,
    /// With --cuda: the target's CUDA graph widths (comma-separated, each
    /// 1..=16; `off`: candle's ops). A token's logits are the same bits at
    /// any width, so greedy output is exact by construction.
    #[arg(long, value_name = "LIST", default_value = "8,16", value_parser = widths)]
    pub graph_widths: Widths,
    /// With --cuda: the draft's CUDA graph widths (as --graph-widths): a
    /// width-1 graph for its one-token passes, 8 for catching up, 16 for
    /// the prompt.
    #[arg(long, value_name = "LIST", default_value = "1,8,16", value_parser = widths)]
    pub draft_graph_widths: Widths,
    /// Bound the draft's attention to its first SINKS positions plus the
    /// last RECENT (attention sinks + a sliding window), so a draft token
    /// costs the same at any context length. Exact: the draft is simply a
    /// different model. CPU only.
    #[arg(long, value_name = "SINKS,RECENT", value_parser = attention_window)]
    pub draft_window: Option<AttentionWindow>,
}

/// `SINKS,RECENT`: two whole numbers, RECENT at least 1.
fn attention_window(s: &str) -> Result<AttentionWindow, String> {
    let Some((sinks, recent)) = s.split_once(',') else {
        return Err("expected SINKS,RECENT (e.g. 4,256)".to_string());
    };
    Ok(AttentionWindow {
        sinks: int_in(sinks, 0, usize::MAX).map_err(|e| format!("SINKS: {e}"))?,
        recent: int_in(recent, 1, usize::MAX).map_err(|e| format!("RECENT: {e}"))?,
    })
}

/// `--draft-window` for summaries: "4 sinks + 256 recent", or "full".
pub fn window_label(w: Option<AttentionWindow>) -> String {
    match w {
        Some(w) => format!("{} sinks + {} recent", w.sinks, w.recent),
        None => "full".to_string(),
    }
}

/// `--draft-window` for JSON: `{"sinks": S, "recent": R}`, or null.
pub fn window_json(w: Option<AttentionWindow>) -> serde_json::Value {
    match w {
        Some(w) => serde_json::json!({ "sinks": w.sinks, "recent": w.recent }),
        None => serde_json::Value::Null,
    }
}

/// CUDA graph widths from the command line.
#[derive(Debug, Clone)]
pub struct Widths(pub Vec<usize>);

/// `off`, or comma-separated widths in `1..=specdec::backend::candle::MAX_GRAPH_WIDTH`.
fn widths(s: &str) -> Result<Widths, String> {
    if s.trim() == "off" {
        return Ok(Widths(Vec::new()));
    }
    s.split(',')
        .map(|w| int_in(w, 1, specdec::backend::candle::MAX_GRAPH_WIDTH))
        .collect::<Result<Vec<_>, _>>()
        .map(Widths)
        .map_err(|e| format!("{e} (or `off`)"))
}

impl Device {
    /// Starts the thread pool ([`specdec::backend::candle::init_thread_pool`], which makes
    /// this thread one of the pool's and refuses absurd counts), then sets
    /// `RAYON_NUM_THREADS` for candle; call before any model work, as the
    /// pools read it when they start.
    pub fn apply_threads(&self) -> anyhow::Result<()> {
        specdec::backend::candle::init_thread_pool(self.threads)?;
        if let Some(n) = self.threads {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        }
        Ok(())
    }

    /// Load options for the target: the CPU in f32 (with
    /// `--target-as-stored`, on the file's blocks), or `--cuda` in bf16.
    pub fn target_options(&self) -> anyhow::Result<LoadOptions> {
        let options = LoadOptions {
            cuda_graph_widths: self.graph_widths.0.clone(),
            ..self.device_options()?
        };
        Ok(match self.target_as_stored {
            true => LoadOptions {
                quantization: Quantization::AsStored,
                ..options
            },
            false => options,
        })
    }

    /// The CPU in f32, or `--cuda` in bf16, with dense weights.
    fn device_options(&self) -> anyhow::Result<LoadOptions> {
        Ok(match self.cuda {
            // A bad flag for this build or machine: the caller's input.
            Some(ordinal) => LoadOptions::cuda(ordinal).map_err(|e| {
                anyhow::anyhow!("--cuda {ordinal}: {e} (needs `--features cuda` and a GPU)")
            })?,
            None => LoadOptions::default(),
        })
    }

    /// As [`Device::target_options`], with `--quantize-draft`,
    /// `--draft-as-stored` and `--draft-window`.
    pub fn draft_options(&self) -> anyhow::Result<LoadOptions> {
        let quantization = if self.quantize_draft {
            Quantization::Q8_0
        } else if self.draft_as_stored {
            Quantization::AsStored
        } else {
            Quantization::None
        };
        Ok(LoadOptions {
            quantization,
            cuda_graph_widths: self.draft_graph_widths.0.clone(),
            attention_window: self.draft_window,
            ..self.device_options()?
        })
    }
}

/// A whole number in `lo..=hi`. Flags using it set `allow_negative_numbers`,
/// so that `-1` reaches this check (and gets the range) instead of being
/// taken by clap for an unknown flag.
fn int_in(s: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= lo as i128 && n <= hi as i128 => Ok(n as usize),
        Ok(n) => Err(format!("{n} is out of range: expected {lo}..={hi}")),
        Err(_) => Err(format!("expected a whole number in {lo}..={hi}")),
    }
}

/// A count: `0..=usize::MAX`.
pub fn count(s: &str) -> Result<usize, String> {
    int_in(s, 0, usize::MAX)
}

/// A window `k`: `1..=specdec::GenerateConfig::MAX_WINDOW`.
pub fn window(s: &str) -> Result<usize, String> {
    int_in(s, 1, specdec::GenerateConfig::MAX_WINDOW)
}

/// An n-gram length: `1..=1024` (no model's text repeats longer runs
/// usefully; the drafter's search is linear in it).
pub fn ngram(s: &str) -> Result<usize, String> {
    int_in(s, 1, 1024)
}

/// A prompt file, opened before the models load (so that a missing one is
/// reported first) and read once the target's `n_positions` says how much
/// text it could ever read.
pub struct PromptFile {
    flag: &'static str,
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl PromptFile {
    /// Opens `path`, given with `flag` (which errors name).
    pub fn open(flag: &'static str, path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
        Ok(Self {
            flag,
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file's text, reading at most `max_bytes + 1` bytes (so that
    /// `/dev/zero` or a huge file stops there): more than `max_bytes` is an
    /// error naming the flag, the file and `n_positions`, before any
    /// tokenizing.
    pub fn read(self, max_bytes: usize, n_positions: usize) -> anyhow::Result<String> {
        let Self { flag, path, file } = self;
        let bytes = read_capped(file, max_bytes).map_err(|e| match e {
            Capped::Io(e) => anyhow::anyhow!("{flag} {}: {e}", path.display()),
            Capped::TooLong => anyhow::anyhow!(
                "{flag} {}: more than {max_bytes} bytes, more than the target's n_positions = \
                 {n_positions} could hold ({} bytes a position at most)",
                path.display(),
                specdec::MAX_TEXT_BYTES_PER_POSITION
            ),
        })?;
        String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{flag} {}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })
    }
}

/// Why [`read_capped`] failed.
pub enum Capped {
    /// Reading failed.
    Io(std::io::Error),
    /// There were more bytes than the cap.
    TooLong,
}

/// Up to `max_bytes` bytes of `r`; more is [`Capped::TooLong`]. Reads at
/// most `max_bytes + 1`, so endless sources such as `/dev/zero` stop.
pub fn read_capped(r: impl std::io::Read, max_bytes: usize) -> Result<Vec<u8>, Capped> {
    use std::io::Read;
    let mut bytes = Vec::new();
    r.take((max_bytes as u64).saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(Capped::Io)?;
    if bytes.len() > max_bytes {
        return Err(Capped::TooLong);
    }
    Ok(bytes)
}

/// A thread count: `1..=specdec::backend::candle::max_threads()`.
pub fn threads(s: &str) -> Result<usize, String> {
    int_in(s, 1, specdec::backend::candle::max_threads()).map_err(|e| {
        format!(
            "{e} ({} per core)",
            specdec::backend::candle::THREADS_PER_CORE
        )
    })
}

/// Parses the arguments. Help and version print as usual (exit 0); any
/// other problem prints one line on stderr, `error: ...`, and exits with 2.
pub fn parse_args<A: clap::Parser>() -> A {
    match A::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's message is several lines (the error, usage, a tip);
            // the first says what is wrong, and indented lines right after
            // it name the arguments (a missing required one's, for one).
            let rendered = e.to_string();
            let mut lines = rendered.lines().skip_while(|l| l.trim().is_empty());
            let first = lines.next().unwrap_or("error: bad arguments");
            let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
            let named: Vec<&str> = lines
                .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
                .map(str::trim)
                .collect();
            if !named.is_empty() {
                line = format!("{} {}", line.trim_end(), named.join(", "));
            }
            eprintln!("error: {line} (see --help)");
            std::process::exit(2);
        }
    }
}

/// The error and its causes on one line, each cause once (a message that
/// already quotes its cause is not followed by it again), without any
/// backtrace a cause carries (candle captures one when `RUST_BACKTRACE`
/// is set).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = without_backtrace(&e.to_string());
    for cause in e.chain().skip(1) {
        let cause = without_backtrace(&cause.to_string());
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `message` up to the first line that looks like a backtrace's frame
/// (`   0: candle_core::...`, right-aligned numbers and a colon).
fn without_backtrace(message: &str) -> String {
    let frame = |l: &str| {
        let t = l.trim_start();
        let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        l.starts_with(' ') && digits > 0 && t[digits..].starts_with(": ")
    };
    message
        .lines()
        .take_while(|l| !frame(l) && l.trim() != "stack backtrace:")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `e` is stdout (or any pipe) closed by the reader, as with
/// `| head -c1`: the program should end quietly, as Unix tools do.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// 1 when the device, the runtime or our program failed (a candle error, a
/// backend failure, a backend that broke its contract mid-generation); 2
/// for everything the user can fix: bad arguments, bad model files,
/// including a model fault found while generating (NaN logits, nothing left
/// to sample).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(e) if e.is_model_fault() => 2,
        Some(Error::Interrupted { .. }) => 1,
        Some(Error::Candle(_) | Error::Backend { .. }) => 1,
        _ => 2,
    }
}

/// Ends the program for `result`: exit 0 on success or a closed stdout,
/// else `error: ...` on one line of stderr and [`exit_code`].
pub fn finish(result: anyhow::Result<()>) -> std::process::ExitCode {
    use std::io::Write;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::from(exit_code(&e))
        }
    }
}

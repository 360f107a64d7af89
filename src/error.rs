//! The crate's one error type.
//!
//! Every variant names what was wrong (the file, tensor, field or setting), the
//! value that was found and what was expected, so a caller can act on it
//! without reading our source. Errors are `Send + Sync` and never carry
//! borrowed data.

use std::path::PathBuf;

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Which of the two models an error or a statistic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The large model whose distribution the output follows.
    Target,
    /// The small model that proposes tokens.
    Draft,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Target => "target",
            Role::Draft => "draft",
        })
    }
}

/// `"target model"`, `"draft model"`, or `"model"` when the role is unknown.
struct RoleLabel(Option<Role>);

impl std::fmt::Display for RoleLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(role) => write!(f, "{role} model"),
            None => f.write_str("model"),
        }
    }
}

/// Everything that can go wrong in specdec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A model directory lacks something it must have.
    #[error("model directory {path}: {reason}")]
    ModelDir {
        /// The directory.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },

    /// A JSON file (config.json, generation_config.json, a shard index) is not
    /// valid JSON or not of the expected form.
    #[error("{path}: not valid JSON of the expected form: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said (line, column).
        message: String,
    },

    /// A field of a config file is missing or has a value we cannot use.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The field, dotted for nested fields (`rope_scaling.factor`).
        field: String,
        /// What was found and what was expected.
        message: String,
    },

    /// A weights file is truncated, corrupt or unreadable.
    #[error("{path}: cannot read weights: {message}")]
    Weights {
        /// The safetensors file.
        path: PathBuf,
        /// What the safetensors reader said.
        message: String,
    },

    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor {
        /// The weights file (or shard index) that was searched.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
    },

    /// The checkpoint holds a tensor the architecture in config.json does not
    /// use (a layer beyond `num_hidden_layers`, a bias the config does not
    /// enable, a tensor of another architecture). Loading would silently
    /// compute something other than what was trained, so it is refused.
    /// Only tensors known to be recomputed from the config
    /// (`rotary_emb.inv_freq`) are skipped.
    #[error("{path}: tensor `{tensor}` is not used by the architecture config.json describes ({count} unused tensor(s) in all); {hint}")]
    UnusedTensor {
        /// The weights file (or shard index).
        path: PathBuf,
        /// The first unused tensor, by name.
        tensor: String,
        /// How many tensors are unused.
        count: usize,
        /// Which config field probably disagrees with the checkpoint.
        hint: String,
    },

    /// A tensor has a shape other than the config implies.
    #[error("{path}: tensor `{tensor}` has shape {got:?}, expected {expected:?} from config.json")]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },

    /// A tensor is stored in a dtype we do not load.
    #[error("{path}: tensor `{tensor}` has dtype {dtype}, expected one of bf16, f16, f32")]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },

    /// tokenizer.json could not be loaded, or encoding / decoding failed.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file (or `<memory>`).
        path: PathBuf,
        /// What the tokenizers crate said.
        message: String,
    },

    /// A model has no tokenizer where one is needed: to encode a text prompt
    /// (the target), or to check that the draft's token ids mean what the
    /// target's do (the draft, when the target has one).
    #[error("{role} model `{model}` has no tokenizer (tokenizer.json in a checkpoint directory): {needed_for}")]
    NoTokenizer {
        /// Which model lacks it.
        role: Role,
        /// The model's name (its directory's name for a checkpoint).
        model: String,
        /// What it is needed for, and what to do.
        needed_for: String,
    },

    /// Draft and target do not share a vocabulary, so the draft's token ids
    /// would mean something else to the target.
    #[error("draft and target vocabularies differ: {message}")]
    VocabularyMismatch {
        /// The first difference found.
        message: String,
    },

    /// A generation or load setting is out of range.
    #[error("invalid setting `{name}` = {value}: expected {expected}")]
    InvalidSetting {
        /// The setting (`k`, `temperature`, `top_p`, ...).
        name: &'static str,
        /// The value given.
        value: String,
        /// The allowed range.
        expected: String,
    },

    /// The prompt is empty: there is nothing to condition on.
    #[error("the prompt is empty: give at least one token (a BOS token, if nothing else)")]
    EmptyPrompt,

    /// A text is longer in bytes than the model's positions could ever hold
    /// ([`crate::MAX_TEXT_BYTES_PER_POSITION`] bytes a position): refused
    /// before tokenizing it.
    #[error(
        "the text is {bytes} bytes, more than n_positions = {n_positions} could hold \
         (at most {limit} bytes)"
    )]
    TextTooLong {
        /// The text's length in bytes.
        bytes: usize,
        /// The most bytes allowed.
        limit: usize,
        /// The model's `n_positions`.
        n_positions: usize,
    },

    /// The prompt plus the token budget does not fit the model's positions.
    #[error(
        "{role} model: {prompt} prompt tokens + {max_new_tokens} new tokens = {needed} positions, \
         but the model has n_positions = {limit}"
    )]
    TooLong {
        /// The model whose limit is exceeded.
        role: Role,
        /// Prompt length in tokens.
        prompt: usize,
        /// The requested budget of new tokens.
        max_new_tokens: usize,
        /// Positions needed.
        needed: usize,
        /// The model's `n_positions`.
        limit: usize,
    },

    /// A forward pass or truncation asked for more than the model holds:
    /// positions past `n_positions`, an empty input, a token id outside the
    /// vocabulary, or a truncation beyond the cached length. The request is
    /// at fault, and the model's cache is as it was.
    #[error("{model}: {message}")]
    OutOfRange {
        /// Which model (its name).
        model: String,
        /// The offending request and the limit.
        message: String,
    },

    /// A static-shape model was asked for a shape it has no compiled graph
    /// for: a window, a prompt bucket or a batch size (see
    /// [`StaticShapes`](crate::backend::static_shape::StaticShapes)).
    #[error("{model}: {message}")]
    NotCompiled {
        /// Which model (its name or role).
        model: String,
        /// The shape asked for and the compiled ones.
        message: String,
    },

    /// A backend or a drafter returned something its contract rules out:
    /// logits of the wrong shape, a greedy choice past the vocabulary, a
    /// proposal longer than asked or with `q` rows that do not match its
    /// tokens. A bug in that component, not in the input.
    #[error("{model} broke its contract: {message}")]
    Contract {
        /// The component (a model's name, or `drafter`).
        model: String,
        /// What it returned and what was expected.
        message: String,
    },

    /// A backend returned logits with NaN or +inf.
    #[error("{} returned a non-finite logit {value} at window position {position}, token id {token}", RoleLabel(*role))]
    NonFiniteLogits {
        /// The model, where known: sampling functions and backends leave it
        /// `None`, and the generator names the model it asked.
        role: Option<Role>,
        /// Row of the forward's output (0 = first new token).
        position: usize,
        /// Column (token id).
        token: u32,
        /// The value (NaN or inf).
        value: f32,
    },

    /// After suppression and top-k / top-p / min-p no token is left with
    /// nonzero probability.
    #[error("{}: no token has nonzero probability at window position {position} (every logit is -inf or suppressed)", RoleLabel(*role))]
    EmptyDistribution {
        /// The model, where known (as for [`Error::NonFiniteLogits`]).
        role: Option<Role>,
        /// Row of the forward's output.
        position: usize,
    },

    /// A backend failed, or a model showed a fault (non-finite logits, no
    /// token left with nonzero probability), mid-generation. The tokens
    /// committed before it are kept here; the generator can be used again.
    ///
    /// Its message is only the count; the cause is [`source`](std::error::Error::source)
    /// (not repeated in the message, so that printing the chain, as
    /// `anyhow`'s `{:#}` does, says it once).
    #[error("generation stopped after {} committed tokens", committed.len())]
    Interrupted {
        /// Tokens committed before the failure (prompt excluded).
        committed: Vec<u32>,
        /// The backend's error.
        source: Box<Error>,
    },

    /// A backend's device or runtime failed (a lost accelerator, a worker
    /// process that died, a runtime call that returned an error code).
    #[error("{model}: backend failure: {message}")]
    Backend {
        /// Which model (its name or role).
        model: String,
        /// What the device or runtime said.
        message: String,
    },

    /// A GGUF file cannot be loaded: a bad header, a metadata key with an
    /// unusable value, a tensor that runs past the end of the file, or a
    /// tensor the architecture would not use.
    #[error("{path}: GGUF: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the metadata key or tensor.
        message: String,
    },

    /// A chat template is missing, does not parse, or fails to render.
    #[error("chat template from {origin}: {message}")]
    ChatTemplate {
        /// Where the template came from (a file, or a GGUF metadata key).
        origin: String,
        /// What the template engine said.
        message: String,
    },

    /// An error from candle (tensor math or device).
    /// Displayed without the backtrace candle captures when
    /// `RUST_BACKTRACE` is set, so that the message stays one line.
    #[error("candle: {}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// The error that caused this one: the source of an
    /// [`Error::Interrupted`], else `self`.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Interrupted { source, .. } => source.root_cause(),
            other => other,
        }
    }

    /// Whether the error is a fault of a model file found while generating:
    /// non-finite logits (NaN or infinite weights, a degenerate RoPE) or a
    /// distribution with no token left. These say the checkpoint is bad, not
    /// the device or the program.
    pub fn is_model_fault(&self) -> bool {
        matches!(
            self.root_cause(),
            Error::NonFiniteLogits { .. } | Error::EmptyDistribution { .. }
        )
    }

    /// Names `role` as the model a logits fault ([`Error::NonFiniteLogits`],
    /// [`Error::EmptyDistribution`]) came from, where it names none yet;
    /// any other error is returned as it is. Sampling functions and
    /// backends know only a row of logits: the caller that asked a model
    /// adds which one it was.
    pub fn for_role(mut self, model: Role) -> Self {
        if let Error::NonFiniteLogits { role, .. } | Error::EmptyDistribution { role, .. } =
            &mut self
        {
            role.get_or_insert(model);
        }
        self
    }

    pub(crate) fn setting(
        name: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidSetting {
            name,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A candle error's message without the backtraces it may carry
/// (`WithBacktrace`, at any depth), on one line.
pub(crate) fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as C;
    match e {
        C::WithBacktrace { inner, .. } => candle_message(inner),
        C::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        C::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string(),
    }
}

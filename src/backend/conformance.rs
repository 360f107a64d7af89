//! The backend conformance suite: executable checks of the
//! [`LanguageModel`] contract, for any backend.
//!
//! A backend author runs [`check_all`] against their model with a few dozen
//! token ids of ordinary text; it drives the model only through the trait and
//! only with shapes the model declares ([`LanguageModel::shapes`]), so the same
//! suite serves dynamic backends (candle CPU / CUDA), static-shape ones
//! (Inferentia2, [`StaticShapeModel`](super::static_shape::StaticShapeModel)) and test doubles. specdec runs
//! it on all of these in its own tests.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut model = specdec::CandleModel::load("models/py-s")?;
//! let tokens: Vec<u32> = (1..40).collect();
//! use specdec::backend::conformance::{check_all, Tolerance};
//! check_all(&mut model, &tokens, &Tolerance::f32())?;
//! # Ok(())
//! # }
//! ```

use crate::error::Error;
use crate::model::{LanguageModel, Logits, Shapes};
use crate::sampling::Confidence;

/// How close logits computed two ways must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Largest allowed `|a - b|` of any logit.
    pub max_abs: f32,
}

impl Tolerance {
    /// For f32 compute: 1e-4, the contract's figure.
    pub fn f32() -> Self {
        Self { max_abs: 1e-4 }
    }

    /// Bit for bit: for backends whose batched passes sum in the same order
    /// as single tokens, such as the candle backend on the CPU in f32.
    pub fn exact() -> Self {
        Self { max_abs: 0.0 }
    }

    /// For bf16 compute on an accelerator, where a batched pass rounds
    /// differently from a sequential one.
    pub fn bf16() -> Self {
        Self { max_abs: 0.15 }
    }
}

/// A check that did not hold.
#[derive(Debug, thiserror::Error)]
#[error("conformance check `{check}` failed: {detail}")]
pub struct Failure {
    /// Which check (the function name).
    pub check: &'static str,
    /// What differed, or the backend's error.
    pub detail: String,
}

type Outcome = std::result::Result<(), Failure>;

fn fail(check: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        check,
        detail: detail.into(),
    }
}

fn backend(check: &'static str) -> impl Fn(Error) -> Failure {
    move |e| fail(check, format!("backend error: {e}"))
}

/// Sizes a model accepts for a forward at a non-empty cache, descending.
fn windows(model: &dyn LanguageModel) -> Vec<usize> {
    let mut w = match model.shapes() {
        Shapes::Dynamic => vec![1, 2, 3, 5, 8],
        Shapes::Static(s) => s.windows,
    };
    w.sort_unstable_by(|a, b| b.cmp(a));
    w
}

/// The widest window of at most 4 tokens a model accepts (1 if none).
fn widest_small_window(model: &dyn LanguageModel) -> usize {
    windows(model)
        .into_iter()
        .filter(|&w| w <= 4)
        .max()
        .unwrap_or(1)
}

/// Fails `check` unless the cache holds `len` positions after feeding them.
fn expect_fed(check: &'static str, model: &dyn LanguageModel, len: usize) -> Outcome {
    if model.cached_len() != len {
        return Err(fail(
            check,
            format!("cached_len {} after feeding {len}", model.cached_len()),
        ));
    }
    Ok(())
}

/// Feeds `tokens` in the largest allowed windows; returns every row.
fn feed(
    model: &mut dyn LanguageModel,
    tokens: &[u32],
    sizes: &[usize],
) -> crate::Result<Vec<Vec<f32>>> {
    let mut rows = Vec::new();
    let mut rest = tokens;
    while !rest.is_empty() {
        let n = sizes
            .iter()
            .copied()
            .find(|&w| w <= rest.len())
            .unwrap_or(1);
        let logits = model.forward(&rest[..n])?;
        rows.extend((0..logits.rows()).map(|i| logits.row(i).to_vec()));
        rest = &rest[n..];
    }
    Ok(rows)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

fn compare(
    check: &'static str,
    what: &str,
    a: &[Vec<f32>],
    b: &[Vec<f32>],
    tol: &Tolerance,
) -> Outcome {
    if a.len() != b.len() {
        return Err(fail(
            check,
            format!("{what}: {} rows vs {}", a.len(), b.len()),
        ));
    }
    let d = max_diff(a, b);
    if d.is_nan() || d > tol.max_abs {
        return Err(fail(
            check,
            format!("{what}: logits differ by {d} (> {})", tol.max_abs),
        ));
    }
    Ok(())
}

/// Prefills `tokens[..split]` the way the generator does (one prompt pass).
fn start(model: &mut dyn LanguageModel, prompt: &[u32]) -> crate::Result<()> {
    model.reset()?;
    model.prefill(prompt)
}

/// Runs every check. `tokens`: at least 16 valid ids; `tol`: see [`Tolerance`].
pub fn check_all(model: &mut dyn LanguageModel, tokens: &[u32], tol: &Tolerance) -> Outcome {
    if tokens.len() < 16 {
        return Err(fail("check_all", "give at least 16 tokens"));
    }
    batched_equals_sequential(model, tokens, tol)?;
    rollback_equals_never_fed(model, tokens, tol)?;
    deterministic(model, tokens)?;
    forward_last_is_last_row(model, tokens, tol)?;
    forward_greedy_is_argmax(model, tokens)?;
    forward_last_greedy_is_argmax(model, tokens)?;
    limits_are_errors(model, tokens)?;
    Ok(())
}

/// A multi-token forward on a filled cache gives the logits of feeding the
/// same tokens one at a time (contract point 1).
pub fn batched_equals_sequential(
    model: &mut dyn LanguageModel,
    tokens: &[u32],
    tol: &Tolerance,
) -> Outcome {
    const C: &str = "batched_equals_sequential";
    let e = backend(C);
    let prompt = &tokens[..8];
    let rest = &tokens[8..];
    start(model, prompt).map_err(&e)?;
    let one_by_one = feed(model, rest, &[1]).map_err(&e)?;
    for w in windows(model)
        .into_iter()
        .filter(|&w| w > 1 && w <= rest.len())
    {
        start(model, prompt).map_err(&e)?;
        let batched = feed(model, rest, &[w]).map_err(&e)?;
        compare(
            C,
            &format!("window {w} vs one token at a time"),
            &batched[..w],
            &one_by_one[..w],
            tol,
        )?;
    }
    Ok(())
}

/// Truncating after rejected tokens and feeding others gives what feeding
/// only the others would have given (contract point 2).
pub fn rollback_equals_never_fed(
    model: &mut dyn LanguageModel,
    tokens: &[u32],
    tol: &Tolerance,
) -> Outcome {
    const C: &str = "rollback_equals_never_fed";
    let e = backend(C);
    let prompt = &tokens[..8];
    let good = &tokens[8..12];
    let sizes = windows(model);
    // Reference: prompt, then the good tokens, never anything else.
    start(model, prompt).map_err(&e)?;
    let want = feed(model, good, &sizes).map_err(&e)?;
    for keep in 0..3 {
        start(model, prompt).map_err(&e)?;
        // A window whose tail is rejected: good[..keep] then junk.
        let w = sizes
            .iter()
            .copied()
            .find(|&w| w > keep && w <= 4)
            .unwrap_or(1);
        let mut window = good[..keep.min(w)].to_vec();
        window.extend(tokens[12..].iter().rev().take(w - window.len()));
        feed(model, &window, &sizes).map_err(&e)?;
        let kept = keep.min(w);
        model.truncate(8 + kept).map_err(&e)?;
        if model.cached_len() != 8 + kept {
            return Err(fail(
                C,
                format!(
                    "cached_len {} after truncate({})",
                    model.cached_len(),
                    8 + kept
                ),
            ));
        }
        let got = feed(model, &good[kept..], &sizes).map_err(&e)?;
        compare(
            C,
            &format!("after keeping {kept} of a window of {w}"),
            &got,
            &want[kept..],
            tol,
        )?;
    }
    Ok(())
}

/// The same calls from the same state give bit-identical logits (point 4).
pub fn deterministic(model: &mut dyn LanguageModel, tokens: &[u32]) -> Outcome {
    const C: &str = "deterministic";
    let e = backend(C);
    let sizes = windows(model);
    let run = |model: &mut dyn LanguageModel| -> crate::Result<Vec<Vec<f32>>> {
        start(model, &tokens[..8])?;
        feed(model, &tokens[8..16], &sizes)
    };
    let a = run(model).map_err(&e)?;
    let b = run(model).map_err(&e)?;
    if a != b {
        return Err(fail(
            C,
            format!("two identical runs differ by up to {}", max_diff(&a, &b)),
        ));
    }
    Ok(())
}

/// [`LanguageModel::forward_greedy`] chooses what
/// [`argmax`](crate::sampling::argmax) over [`LanguageModel::forward`]'s
/// rows chooses, with and without suppressed ids (each row's own winner
/// suppressed, which a device-side argmax must hand back to the host), and
/// moves the cache like `forward`. Exact: a backend must not round
/// differently for the two.
pub fn forward_greedy_is_argmax(model: &mut dyn LanguageModel, tokens: &[u32]) -> Outcome {
    const C: &str = "forward_greedy_is_argmax";
    let e = backend(C);
    let w = widest_small_window(model);
    let feed = &tokens[8..8 + w];
    start(model, &tokens[..8]).map_err(&e)?;
    let logits = model.forward(feed).map_err(&e)?;
    let choose = |suppress: &[u32]| -> crate::Result<Vec<u32>> {
        (0..w)
            .map(|i| crate::sampling::argmax(logits.row(i), suppress, i))
            .collect()
    };
    let winners = choose(&[]).map_err(&e)?;
    for suppress in [Vec::new(), winners] {
        let want = choose(&suppress).map_err(&e)?;
        start(model, &tokens[..8]).map_err(&e)?;
        let got = model.forward_greedy(feed, &suppress).map_err(&e)?;
        if got != want {
            return Err(fail(
                C,
                format!(
                    "suppressing {suppress:?}: chose {got:?}, argmax of forward's rows is {want:?}"
                ),
            ));
        }
        expect_fed(C, model, 8 + w)?;
    }
    Ok(())
}

/// `forward_last_greedy` chooses exactly what `argmax` over `forward_last`'s
/// row chooses, suppressing nothing, the row's winner or another id, and
/// when asked its confidence is `greedy_confidence` of that row to within
/// 1e-4.
pub fn forward_last_greedy_is_argmax(model: &mut dyn LanguageModel, tokens: &[u32]) -> Outcome {
    const C: &str = "forward_last_greedy_is_argmax";
    let e = backend(C);
    let w = widest_small_window(model);
    let feed = &tokens[8..8 + w];
    start(model, &tokens[..8]).map_err(&e)?;
    let logits = model.forward_last(feed).map_err(&e)?;
    let row = logits.row(0);
    let winner = crate::sampling::argmax(row, &[], 0).map_err(&e)?;
    let other = (winner + 1) % row.len() as u32;
    // With and without the confidence; suppressing the winner, or an id
    // that is not the winner.
    let cases = [
        (Vec::new(), Confidence::Wanted),
        (vec![winner], Confidence::Wanted),
        (vec![other], Confidence::Wanted),
        (vec![other], Confidence::Skip),
        (vec![winner], Confidence::Skip),
    ];
    for (suppress, confidence) in cases {
        let want = crate::sampling::argmax(row, &suppress, 0).map_err(&e)?;
        let sure = crate::sampling::greedy_confidence(row, want, &suppress);
        start(model, &tokens[..8]).map_err(&e)?;
        let (got, conf) = model
            .forward_last_greedy(feed, &suppress, confidence)
            .map_err(&e)?;
        if got != want {
            return Err(fail(
                C,
                format!(
                    "suppressing {suppress:?}: chose {got}, argmax of forward_last's row is {want}"
                ),
            ));
        }
        match conf {
            _ if confidence == Confidence::Skip => {}
            Some(c) if (0.0..=1.0).contains(&c) && (c - sure).abs() <= 1e-4 => {}
            _ => {
                return Err(fail(
                    C,
                    format!("suppressing {suppress:?}: confidence {conf:?}, greedy_confidence of forward_last's row is {sure}"),
                ))
            }
        }
        expect_fed(C, model, 8 + w)?;
    }
    Ok(())
}

/// `forward_last` returns the last row of `forward`.
pub fn forward_last_is_last_row(
    model: &mut dyn LanguageModel,
    tokens: &[u32],
    tol: &Tolerance,
) -> Outcome {
    const C: &str = "forward_last_is_last_row";
    let e = backend(C);
    let w = windows(model).into_iter().find(|&w| w <= 4).unwrap_or(1);
    start(model, &tokens[..8]).map_err(&e)?;
    let all: Logits = model.forward(&tokens[8..8 + w]).map_err(&e)?;
    start(model, &tokens[..8]).map_err(&e)?;
    let last = model.forward_last(&tokens[8..8 + w]).map_err(&e)?;
    if last.rows() != 1 {
        return Err(fail(
            C,
            format!("forward_last returned {} rows", last.rows()),
        ));
    }
    compare(
        C,
        "last row",
        &[last.row(0).to_vec()],
        &[all.row(w - 1).to_vec()],
        tol,
    )?;
    expect_fed(C, model, 8 + w)?;
    Ok(())
}

/// Bad calls are errors that leave the cache as it was (point 3).
pub fn limits_are_errors(model: &mut dyn LanguageModel, tokens: &[u32]) -> Outcome {
    const C: &str = "limits_are_errors";
    let e = backend(C);
    start(model, &tokens[..8]).map_err(&e)?;
    let len = model.cached_len();
    let unchanged = |model: &dyn LanguageModel, what: &str| -> Outcome {
        if model.cached_len() == len {
            Ok(())
        } else {
            Err(fail(
                C,
                format!(
                    "{what} changed cached_len from {len} to {}",
                    model.cached_len()
                ),
            ))
        }
    };
    if model.forward(&[]).is_ok() {
        return Err(fail(C, "a forward of 0 tokens succeeded"));
    }
    unchanged(model, "an empty forward")?;
    if model.truncate(len + 1).is_ok() {
        return Err(fail(C, "truncate past cached_len succeeded"));
    }
    unchanged(model, "a bad truncate")?;
    let vocab = model.vocab_size() as u32;
    if model.forward(&[vocab]).is_ok() {
        return Err(fail(
            C,
            format!("token id {vocab} (= vocab size) was accepted"),
        ));
    }
    unchanged(model, "an out-of-vocabulary token")?;
    // Fill to the limit with the largest windows, then one more must fail.
    let limit = model.n_positions();
    let sizes = windows(model);
    while model.cached_len() < limit {
        let room = limit - model.cached_len();
        let n = sizes.iter().copied().find(|&w| w <= room).unwrap_or(1);
        let chunk: Vec<u32> = tokens.iter().copied().cycle().take(n).collect();
        model.forward(&chunk).map_err(&e)?;
    }
    if model.forward(&tokens[..1]).is_ok() {
        return Err(fail(
            C,
            format!("a forward past n_positions = {limit} succeeded"),
        ));
    }
    if model.cached_len() != limit {
        return Err(fail(C, "a forward past n_positions changed cached_len"));
    }
    model.reset().map_err(&e)?;
    Ok(())
}

//! Prompt lookup: a drafter with no model.

use super::{DraftRequest, Drafter, Proposal};
use crate::error::{Error, Result};

/// The n-gram drafter (prompt lookup): finds the longest suffix of the
/// committed sequence (prompt + output so far), `n` tokens at most and 1 at
/// least, that occurred earlier in that sequence, and proposes the tokens
/// that followed its most recent occurrence (up to the window less one). With no
/// match it proposes nothing and the window is plain decoding. It runs no
/// forward pass: a search over the sequence, microseconds.
///
/// Its proposals have no distribution: under rejection sampling each is a
/// draft whose `q` is a point mass, accepted with probability `p(d)` (see
/// [`verify_point`](crate::verify::verify_point)), so sampled output keeps
/// the target's distribution exactly; greedy output is the target's own.
/// Adaptive windows do not apply (there is no confidence to compare).
///
/// ```
/// use specdec::{Generator, NGram};
/// # fn demo(target: specdec::CandleModel) -> specdec::Result<()> {
/// let generator = Generator::new(target, NGram::new(3)?)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NGram {
    n: usize,
}

impl NGram {
    /// Matches suffixes of up to `n` tokens (`n >= 1`; 2 to 4 are usual).
    pub fn new(n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::setting("ngram", n, "an integer >= 1"));
        }
        Ok(Self { n })
    }

    /// The longest suffix length tried.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Up to `max` tokens that followed the most recent earlier occurrence
    /// of the longest matching suffix of `sequence`; empty when none matches.
    ///
    /// The most recent, not the first: on the copy prompts of
    /// `prompts_repeat.json`, replaying py-m's greedy output, it gave 3.59
    /// tokens per verify pass at `k = 8` against 3.13 for the first
    /// occurrence (transformers' choice), as the text being written is more
    /// often a continuation of what was written last.
    ///
    /// One pass over `sequence`: at each earlier occurrence of its last
    /// token, latest first, the match is extended backwards (up to `n`
    /// tokens), keeping the longest, and the latest among equals. O(`len`) comparisons plus
    /// at most `n` per occurrence of the last token.
    pub fn lookup(&self, sequence: &[u32], max: usize) -> Vec<u32> {
        let len = sequence.len();
        if max == 0 || len < 2 {
            return Vec::new();
        }
        let longest = self.n.min(len - 1);
        let last = sequence[len - 1];
        // (match length, index of its last token) of the best match so far.
        let mut best: Option<(usize, usize)> = None;
        // An occurrence ends at `end <= len - 2`, so a token follows it.
        for end in (0..len - 1).rev() {
            if sequence[end] != last {
                continue;
            }
            let mut size = 1;
            while size < longest && size <= end && sequence[end - size] == sequence[len - 1 - size]
            {
                size += 1;
            }
            if best.is_none_or(|(b, _)| size > b) {
                best = Some((size, end));
                if size == longest {
                    break;
                }
            }
        }
        match best {
            Some((_, end)) => sequence[end + 1..(end + 1 + max).min(len)].to_vec(),
            None => Vec::new(),
        }
    }
}

impl Drafter for NGram {
    fn propose(&mut self, request: &mut DraftRequest<'_>) -> Result<Proposal> {
        Ok(Proposal {
            tokens: self.lookup(request.committed, request.max),
            ..Proposal::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_suffix_wins_and_its_most_recent_occurrence() {
        let g = NGram::new(3).unwrap();
        // Suffix [1, 2, 3] occurs at 0 (followed by 4, 5) and its shorter
        // suffix [3] at 6 (followed by 9): the 3-gram wins.
        let seq = [1, 2, 3, 4, 5, 0, 3, 9, 1, 2, 3];
        assert_eq!(g.lookup(&seq, 2), vec![4, 5]);
        assert_eq!(g.lookup(&seq, 10), vec![4, 5, 0, 3, 9, 1, 2, 3]);
        // Only a 1-gram matches: its most recent occurrence.
        assert_eq!(g.lookup(&[7, 8, 7, 6, 5, 7], 3), vec![6, 5, 7]);
        // Two 2-gram matches: the later one.
        assert_eq!(g.lookup(&[1, 2, 8, 1, 2, 9, 0, 1, 2], 2), vec![9, 0]);
        // No match, no room, too short.
        assert!(g.lookup(&[1, 2, 3], 4).is_empty());
        assert!(g.lookup(&seq, 0).is_empty());
        assert!(g.lookup(&[5], 4).is_empty());
        // An occurrence overlapping the suffix: a run of one token.
        assert_eq!(g.lookup(&[4, 4, 4], 5), vec![4]);
        assert_eq!(NGram::new(1).unwrap().lookup(&seq, 1), vec![9]);
        assert!(NGram::new(0).is_err());
    }

    /// The definition, searched plainly: for each suffix length from `n`
    /// down, the last window of the sequence (but its last token) equal
    /// to that suffix.
    fn plain_lookup(n: usize, sequence: &[u32], max: usize) -> Vec<u32> {
        let len = sequence.len();
        if max == 0 || len < 2 {
            return Vec::new();
        }
        for size in (1..=n.min(len - 1)).rev() {
            let suffix = &sequence[len - size..];
            if let Some(start) = sequence[..len - 1].windows(size).rposition(|w| w == suffix) {
                let from = start + size;
                return sequence[from..(from + max).min(len)].to_vec();
            }
        }
        Vec::new()
    }

    #[test]
    fn the_one_pass_search_equals_the_definition() {
        let mut x: u64 = 7;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % m) as u32
        };
        for case in 0..3000 {
            // Small alphabets, so matches of every length come up.
            let alphabet = [2, 3, 5, 20][case % 4];
            let len = next(40) as usize;
            let seq: Vec<u32> = (0..len).map(|_| next(alphabet)).collect();
            for n in 1..=5 {
                for max in [0, 1, 3, 8] {
                    assert_eq!(
                        NGram::new(n).unwrap().lookup(&seq, max),
                        plain_lookup(n, &seq, max),
                        "n {n} max {max} {seq:?}"
                    );
                }
            }
        }
    }
}

//! Bookkeeping shared by the truncating processors: which tokens are still in play, their
//! softmax normaliser, and a lazily sorted prefix (so top-p on a 128k vocab sorts hundreds of
//! tokens, not all of them).

/// First chunk sorted by [`scan_sorted`]; doubles each round. llama.cpp's
/// `llama_sampler_top_p_apply` does the same (256, doubling) for rows over 1024 tokens:
/// a few hundred tokens hold nearly all the mass in practice.
const FIRST_CHUNK: usize = 256;

/// A token is still in play while its logit is above -inf. NaN never is: it compares false.
pub(crate) fn is_candidate(logit: f32) -> bool {
    logit > f32::NEG_INFINITY
}

/// Largest logit still in play; -inf when none. `>` skips NaN and -inf for free; eight
/// independent lanes let LLVM vectorise what is otherwise a serial compare chain.
pub(crate) fn max_logit(logits: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &l) in lanes.iter_mut().zip(chunk) {
            if l > *m {
                *m = l;
            }
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &l in lanes.iter().chain(tail) {
        if l > max {
            max = l;
        }
    }
    max
}

/// A candidate packed into one `u64` whose integer order is the ranking: the high half is the
/// sort key mapped to order-preserving bits, the low half the token id, so equal keys rank by
/// lower id. Sorting plain `u64`s avoids an indirect comparator into the logits row, which
/// made selecting over a 128k row ~3x slower.
pub(crate) type Packed = u64;

/// `f32` -> `u32` with the same order (IEEE total order, -0.0 folded into +0.0): flip all
/// bits of a negative, only the sign bit of a positive. Branch-free, because logits' signs
/// are random and a mispredicted branch per token cost ~1.5x in top-k.
fn ordered_bits(x: f32) -> u32 {
    let bits = (x + 0.0).to_bits(); // -0.0 + 0.0 == +0.0
    let flip = (((bits as i32) >> 31) as u32) | 0x8000_0000;
    bits ^ flip
}

/// Rank by `key` ascending, then by lower id.
pub(crate) fn pack_asc(key: f32, id: u32) -> Packed {
    (u64::from(ordered_bits(key)) << 32) | u64::from(id)
}

/// Rank by `key` descending (highest logit first), then by lower id (llama.cpp's tie rule).
pub(crate) fn pack_desc(key: f32, id: u32) -> Packed {
    (u64::from(!ordered_bits(key)) << 32) | u64::from(id)
}

/// Token id of a packed candidate.
pub(crate) fn id_of(packed: Packed) -> usize {
    (packed & 0xFFFF_FFFF) as usize
}

/// Fill `buf` (reused) with the tokens still in play, ranked by logit, highest first.
/// The buffer comes out in id order; only the ranking is encoded.
pub(crate) fn gather_desc(logits: &[f32], buf: &mut Vec<Packed>) {
    buf.clear();
    buf.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| is_candidate(l))
            .map(|(i, &l)| pack_desc(l, i as u32)),
    );
}

/// Softmax over the tokens in play: `p_i = exp(l_i - max) / sum`. `exp` in f32 (as llama.cpp),
/// sums in f64 so that cumulative sums over a 128k vocab do not drift.
pub(crate) struct Softmax {
    max: f32,
    sum: f64,
    ln_sum: f64,
    /// `sum_i exp(l_i - max) * (l_i - max)`, gathered in the same pass for the entropy.
    weighted: f64,
}

impl Softmax {
    /// Over the gathered candidates `buf` (compact, so a row that top-k left with 40 tokens
    /// costs 40 `exp`s). `None` when `buf` is empty or holds a +inf logit.
    pub(crate) fn over(logits: &[f32], buf: &[Packed]) -> Option<Self> {
        let mut max = f32::NEG_INFINITY;
        for &c in buf {
            max = max.max(logits[id_of(c)]);
        }
        if !max.is_finite() {
            return None;
        }
        let (mut sum, mut weighted) = (0.0f64, 0.0f64);
        for &c in buf {
            let x = logits[id_of(c)] - max;
            let e = f64::from(x.exp());
            sum += e;
            weighted += e * f64::from(x);
        }
        Some(Self {
            max,
            sum,
            ln_sum: sum.ln(),
            weighted,
        })
    }

    /// Entropy `H = -sum p ln p = ln(sum) - sum(e * (l - max)) / sum`, in nats.
    pub(crate) fn entropy(&self) -> f64 {
        self.ln_sum - self.weighted / self.sum
    }

    /// Probability of a token whose logit is `logit`.
    pub(crate) fn prob(&self, logit: f32) -> f64 {
        f64::from((logit - self.max).exp()) / self.sum
    }

    /// Natural-log probability, exact even where `prob` underflows to 0.
    pub(crate) fn log_prob(&self, logit: f32) -> f64 {
        f64::from(logit - self.max) - self.ln_sum
    }
}

/// Visit `buf` in ascending (= ranked) order, sorting lazily in doubling chunks, until
/// `stop(position, token)` returns true; returns how many were visited (the kept prefix), or
/// `buf.len()`.
///
/// Each round moves the next chunk to the front with a linear-time select and sorts only
/// that chunk, so a stop after `m` tokens costs about O(V log(m) + m log m), not O(V log V).
pub(crate) fn scan_sorted<S>(buf: &mut [Packed], mut stop: S) -> usize
where
    S: FnMut(usize, usize) -> bool,
{
    let n = buf.len();
    let mut done = 0;
    let mut chunk = FIRST_CHUNK;
    while done < n {
        let end = (done + chunk).min(n);
        if end < n {
            buf[done..].select_nth_unstable(end - done - 1);
        }
        buf[done..end].sort_unstable();
        for (i, &c) in buf[done..end].iter().enumerate() {
            if stop(done + i, id_of(c)) {
                return done + i + 1;
            }
        }
        done = end;
        chunk = chunk.saturating_mul(2);
    }
    n
}

/// Filter out the packed candidates in `rest`.
pub(crate) fn mask(logits: &mut [f32], rest: &[Packed]) {
    for &c in rest {
        logits[id_of(c)] = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    /// The 4-token table-test distribution: softmax gives back p = [0.4, 0.3, 0.2, 0.1].
    pub(crate) fn four() -> Vec<f32> {
        [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect()
    }

    /// Ids still in play after a processor ran.
    pub(crate) fn kept(logits: &[f32]) -> Vec<u32> {
        (0..logits.len() as u32)
            .filter(|&i| super::is_candidate(logits[i as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(buf: &[Packed]) -> Vec<usize> {
        buf.iter().map(|&c| id_of(c)).collect()
    }

    #[test]
    fn gather_skips_neg_inf_and_nan() {
        let mut buf = vec![99];
        gather_desc(&[1.0, f32::NEG_INFINITY, f32::NAN, -5.0], &mut buf);
        assert_eq!(ids(&buf), vec![0, 3]);
        assert_eq!(max_logit(&[f32::NAN, -1.0, f32::NEG_INFINITY]), -1.0);
        assert_eq!(max_logit(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn softmax_matches_hand_values() {
        let logits = test_util::four();
        let mut buf = Vec::new();
        gather_desc(&logits, &mut buf);
        let sm = Softmax::over(&logits, &buf).unwrap();
        for (l, p) in logits.iter().zip([0.4, 0.3, 0.2, 0.1]) {
            assert!((sm.prob(*l) - p).abs() < 1e-6);
            assert!((sm.log_prob(*l) - f64::ln(p)).abs() < 1e-6);
        }
        // -(0.4 ln 0.4 + 0.3 ln 0.3 + 0.2 ln 0.2 + 0.1 ln 0.1)
        assert!((sm.entropy() - 1.279_854).abs() < 1e-5, "{}", sm.entropy());
        assert!(Softmax::over(&logits, &[]).is_none());
        let inf = [0.0, f32::INFINITY];
        gather_desc(&inf, &mut buf);
        assert!(Softmax::over(&inf, &buf).is_none());
    }

    #[test]
    fn packing_orders_like_the_floats() {
        let values = [
            f32::NEG_INFINITY,
            -1e30,
            -2.5,
            -1e-40, // subnormal
            -0.0,
            0.0,
            1e-40,
            0.5,
            3.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a == b {
                // -0.0 == 0.0: equal keys, so the lower id ranks first either way.
                assert!(pack_asc(a, 0) < pack_asc(b, 1) && pack_asc(b, 0) < pack_asc(a, 1));
            } else {
                assert!(pack_asc(a, 9) < pack_asc(b, 0), "{a} < {b}");
                assert!(pack_desc(b, 9) < pack_desc(a, 0), "{b} first");
            }
        }
    }

    #[test]
    fn ties_rank_by_lower_id() {
        let logits = [1.0, 3.0, 3.0, -0.0, 0.0];
        let mut buf = Vec::new();
        gather_desc(&logits, &mut buf);
        buf.sort_unstable();
        assert_eq!(ids(&buf), vec![1, 2, 0, 3, 4]);
    }

    #[test]
    fn scan_sorted_visits_in_order_across_chunks() {
        // 2000 tokens forces several doubling rounds (256, 512, 1024, ...).
        let logits: Vec<f32> = (0..2000).map(|i| ((i * 7919) % 2000) as f32).collect();
        let mut buf = Vec::new();
        gather_desc(&logits, &mut buf);
        let mut seen = Vec::new();
        let kept = scan_sorted(&mut buf, |_, t| {
            seen.push(logits[t]);
            seen.len() == 1500
        });
        assert_eq!(kept, 1500);
        let want: Vec<f32> = (500..2000).rev().map(|v| v as f32).collect();
        assert_eq!(seen, want);
    }
}

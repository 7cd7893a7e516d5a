//! A small seeded PRNG and the two distributions the workload needs:
//! exponential inter-arrival times and Zipf ranks.
//!
//! The generator is xoshiro256** seeded through SplitMix64 (the seeding its
//! authors recommend). It is not cryptographic and needs not be: it only has
//! to be fast, well distributed, and replay exactly for a given seed, so a
//! run's schedule and carts can be reproduced.

/// xoshiro256**: 256 bits of state, period 2^256 − 1.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

/// One step of SplitMix64, used to expand a 64-bit seed into the state.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let s = [
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
            splitmix64(&mut x),
        ];
        Rng { s }
    }

    /// An independent stream for one purpose (e.g. one region), derived from
    /// a seed and a stream number.
    pub fn stream(seed: u64, stream: u64) -> Rng {
        let mut x = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng::new(splitmix64(&mut x))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A uniform float in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform integer in `lo..=hi` (`lo` when `hi < lo`). The modulo bias
    /// is below 2^-50 for the small ranges used here.
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo + 1;
        lo + self.next_u64() % span
    }

    /// An exponential variate with mean 1 (inverse transform; `1 − u` is in
    /// (0, 1], so the logarithm is finite).
    pub fn exp1(&mut self) -> f64 {
        -(1.0 - self.next_f64()).ln()
    }
}

/// Zipf ranks 1..=n with P(k) ∝ 1 / k^s, sampled by binary search in the
/// cumulative table (n is bounded by the catalog size, so the table is too).
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n ≥ 1` ranks with exponent `s ≥ 0` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Zipf {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: a sampler has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// The probability of rank `k` (1-based); 0 outside 1..=n.
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => 0.0,
            1 => self.cdf.first().copied().unwrap_or(0.0),
            k if k <= self.cdf.len() => self.cdf[k - 1] - self.cdf[k - 2],
            _ => 0.0,
        }
    }

    /// A rank in 1..=n.
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        // The first index whose cumulative probability exceeds u; rounding
        // can leave the last entry a hair under 1, hence the clamp.
        let i = self.cdf.partition_point(|&c| c <= u);
        i.min(self.cdf.len() - 1) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal seeds replay the same stream; different streams differ.
    #[test]
    fn seeded_streams_replay() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(Rng::stream(7, 0).next_u64(), Rng::stream(7, 1).next_u64());
    }

    /// The exponential variate has mean 1 within 1 % over 200k draws.
    #[test]
    fn exponential_mean() {
        let mut r = Rng::new(42);
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| r.exp1()).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
    }

    /// Rank 1 of Zipf(n = 1000, s = 1.1) is drawn as often as theory says
    /// (1 / H(n, s)), within 2 % relative, for a fixed seed.
    #[test]
    fn zipf_rank_one_frequency() {
        let (n, s) = (1000, 1.1);
        let zipf = Zipf::new(n, s);
        let harmonic: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
        let expected = 1.0 / harmonic;
        assert!((zipf.probability(1) - expected).abs() < 1e-12);
        let mut r = Rng::new(2024);
        let draws = 200_000;
        let ones = (0..draws).filter(|_| zipf.sample(&mut r) == 1).count();
        let freq = ones as f64 / draws as f64;
        assert!(
            (freq - expected).abs() / expected < 0.02,
            "rank-1 frequency {freq}, theory {expected}"
        );
        // Rank 2 against theory too, and every sample in range.
        let twos = (0..draws).filter(|_| zipf.sample(&mut r) == 2).count() as f64 / draws as f64;
        let p2 = expected / 2f64.powf(s);
        assert!(
            (twos - p2).abs() / p2 < 0.03,
            "rank-2 frequency {twos}, theory {p2}"
        );
        assert!((0..10_000).all(|_| (1..=n).contains(&zipf.sample(&mut r))));
    }

    /// A one-rank sampler always answers 1; s = 0 is uniform.
    #[test]
    fn zipf_edges() {
        let mut r = Rng::new(1);
        let one = Zipf::new(1, 1.2);
        assert!((0..100).all(|_| one.sample(&mut r) == 1));
        let uniform = Zipf::new(4, 0.0);
        for k in 1..=4 {
            assert!((uniform.probability(k) - 0.25).abs() < 1e-12);
        }
        assert_eq!(uniform.probability(5), 0.0);
    }
}

//! A small seeded generator (splitmix64), for the property tests and the fault runner: the same
//! seed gives the same inputs or the same run, so a failure reproduces from its seed alone, and
//! no dependency. Not for anything secret.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One of `items`, by weight.
    pub fn pick<'a, T>(&mut self, items: &'a [(u64, T)]) -> &'a T {
        let total: u64 = items.iter().map(|(w, _)| w).sum();
        let mut at = self.below(total);
        for (w, item) in items {
            if at < *w {
                return item;
            }
            at -= w;
        }
        &items[items.len() - 1].1
    }

    /// Up to `max_pieces` pieces of `pool`, joined: strings rich in whatever the pool holds
    /// (config syntax, control characters, …).
    pub fn text(&mut self, pool: &[&str], max_pieces: u64) -> String {
        let n = self.below(max_pieces + 1);
        (0..n)
            .map(|_| pool[self.below(pool.len() as u64) as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(Rng::new(8).next_u64(), xs[0]);
        for _ in 0..1000 {
            assert!(a.below(3) < 3);
            assert!(a.text(&["ab"], 5).len() <= 10);
        }
    }
}

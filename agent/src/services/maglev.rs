//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): fills a lookup
//! table of prime size M so every backend owns about M/N slots, and adding
//! or removing one backend moves about 1/N of the slots.
//!
//! Each backend is named by a stable string; its permutation (offset and
//! skip) comes from a SHA-256 of the name, so every node builds the same
//! table for the same backend set.

use sha2::{Digest, Sha256};

/// The table for `backends` (names, in any order): each slot holds an
/// index into `backends`. Empty when there is no backend.
pub fn table(backends: &[String], size: u32) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    let size = size as u64;
    // Sort by name so the fill order does not depend on input order.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|a, b| backends[*a].cmp(&backends[*b]));
    let permutations: Vec<(u64, u64)> = order
        .iter()
        .map(|index| {
            let digest = Sha256::digest(backends[*index].as_bytes());
            let word =
                |at: usize| u64::from_le_bytes(digest[at..at + 8].try_into().expect("8 bytes"));
            (word(0) % size, word(8) % (size - 1) + 1)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0;
    loop {
        for (turn, (offset, skip)) in permutations.iter().enumerate() {
            let mut slot = (offset + next[turn] * skip) % size;
            while table[slot as usize] != u32::MAX {
                next[turn] += 1;
                slot = (offset + next[turn] * skip) % size;
            }
            table[slot as usize] = order[turn] as u32;
            next[turn] += 1;
            filled += 1;
            if filled == size {
                return table;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count)
            .map(|i| format!("c{}/10.{}.1.{}:8080/tcp", i % 3 + 1, i % 3 + 1, 10 + i))
            .collect()
    }

    fn shares(table: &[u32], count: usize) -> Vec<usize> {
        let mut shares = vec![0; count];
        for slot in table {
            shares[*slot as usize] += 1;
        }
        shares
    }

    #[test]
    fn every_backend_gets_its_share() {
        for (count, size) in [(3, 1021), (10, 1021), (37, 16381), (100, 16381)] {
            let table = table(&names(count), size);
            assert_eq!(table.len(), size as usize);
            let fair = f64::from(size) / count as f64;
            for (backend, share) in shares(&table, count).iter().enumerate() {
                let off = (*share as f64 - fair).abs() / fair;
                assert!(
                    off < 0.03,
                    "{count} backends, M={size}: backend {backend} has {share} slots, fair is {fair:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        for (count, size) in [(10, 1021), (30, 16381)] {
            let all = names(count);
            let before = table(&all, size);
            let gone = 4;
            let mut rest = all.clone();
            rest.remove(gone);
            let after = table(&rest, size);
            // Compare by name, since indexes shift.
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| all[**b as usize] != rest[**a as usize])
                .count();
            let owned_by_gone = before.iter().filter(|b| **b as usize == gone).count();
            let fraction = moved as f64 / f64::from(size);
            assert!(
                moved >= owned_by_gone,
                "the removed backend's slots must move"
            );
            assert!(
                fraction < 1.6 / count as f64,
                "{count} backends: removing one moved {fraction:.3} of the slots (1/N = {:.3})",
                1.0 / count as f64
            );
        }
    }

    #[test]
    fn the_table_depends_on_the_set_not_its_order() {
        let mut backends = names(7);
        let first = table(&backends, 251);
        backends.reverse();
        let second = table(&backends, 251);
        let by_name = |table: &[u32], names: &[String]| {
            table
                .iter()
                .map(|i| names[*i as usize].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(by_name(&first, &names(7)), by_name(&second, &backends));
        assert!(table(&[], 251).is_empty());
        assert!(table(&names(1), 7).iter().all(|slot| *slot == 0));
    }
}

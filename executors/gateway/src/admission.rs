//! Admission of a model into memory: which idle models to unload, least recently used first,
//! so that a new one fits the budget. Pure, so the choice is tested without engines.

/// A loaded model as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resident<K> {
    /// Which model.
    pub key: K,
    /// Bytes it takes.
    pub memory: u64,
    /// Whether it may be unloaded now (no request in flight or waiting).
    pub idle: bool,
    /// When it last finished a request; smaller is older.
    pub last_used: u64,
}

/// The models to unload, in order, so that `needed` more bytes fit in `budget`; or, when even
/// unloading every idle model is not enough, the bytes that would then be free.
pub(crate) fn evictions<K: Clone>(
    needed: u64,
    budget: u64,
    residents: &[Resident<K>],
) -> Result<Vec<K>, u64> {
    let used: u64 = residents.iter().map(|r| r.memory).sum();
    let mut free = budget.saturating_sub(used);
    let mut idle: Vec<&Resident<K>> = residents.iter().filter(|r| r.idle).collect();
    idle.sort_by_key(|r| r.last_used);
    let mut evicted = Vec::new();
    let mut freed = 0u64;
    for resident in idle {
        if needed <= free {
            break;
        }
        freed += resident.memory;
        free = budget.saturating_sub(used - freed);
        evicted.push(resident.key.clone());
    }
    if needed <= free {
        Ok(evicted)
    } else {
        Err(free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident(
        key: &'static str,
        memory: u64,
        idle: bool,
        last_used: u64,
    ) -> Resident<&'static str> {
        Resident {
            key,
            memory,
            idle,
            last_used,
        }
    }

    #[test]
    fn fits_without_evicting() {
        let residents = [resident("a", 3, true, 1)];
        assert_eq!(evictions(5, 10, &residents), Ok(vec![]));
    }

    #[test]
    fn evicts_least_recently_used_idle_first() {
        let residents = [
            resident("new", 3, true, 30),
            resident("old", 3, true, 10),
            resident("busy", 3, false, 0),
        ];
        assert_eq!(evictions(3, 10, &residents), Ok(vec!["old"]));
        assert_eq!(evictions(6, 10, &residents), Ok(vec!["old", "new"]));
    }

    #[test]
    fn busy_models_stay_and_the_shortfall_is_reported() {
        let residents = [resident("busy", 6, false, 0), resident("idle", 2, true, 0)];
        assert_eq!(evictions(5, 10, &residents), Err(4));
        assert_eq!(evictions(20, 10, &[]), Err::<Vec<&str>, _>(10));
    }
}

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// The most recent event ids per user, so a producer's retry of a batch that did arrive is
/// counted once. Ids are scoped by user (two producers may both number from 1) and bounded:
/// the oldest are forgotten first, so a retry must come within the last `capacity` ids.
#[derive(Debug)]
pub struct SeenIds {
    inner: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    ids: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
    capacity: usize,
}

impl SeenIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Window {
                capacity: capacity.max(1),
                ..Window::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // Nothing panics while holding the lock; a poisoned one still holds valid state.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the `(user, event id)` pairs as seen and says, per pair, whether it is new. An
    /// empty id is always new. A pair repeated within the call is new only the first time.
    /// Callers that then fail to log the events must [`SeenIds::forget`] the new ones.
    pub fn claim<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<bool> {
        let mut w = self.lock();
        pairs
            .into_iter()
            .map(|(user, id)| {
                if id.is_empty() {
                    return true;
                }
                let key = (user.to_owned(), id.to_owned());
                if w.ids.contains(&key) {
                    return false;
                }
                w.ids.insert(key.clone());
                w.order.push_back(key);
                while w.order.len() > w.capacity {
                    if let Some(old) = w.order.pop_front() {
                        w.ids.remove(&old);
                    }
                }
                true
            })
            .collect()
    }

    /// Un-claims pairs whose events were not logged, so a retry is accepted.
    pub fn forget<'a>(&self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut w = self.lock();
        for (user, id) in pairs {
            if !id.is_empty() {
                w.ids.remove(&(user.to_owned(), id.to_owned()));
            }
        }
    }

    /// Forgets every event id of `user` (erasure); returns how many.
    pub fn forget_user(&self, user: &str) -> usize {
        let mut w = self.lock();
        let before = w.order.len();
        w.order.retain(|(u, _)| u != user);
        w.ids.retain(|(u, _)| u != user);
        before - w.order.len()
    }

    /// The remembered `(user, event id)` pairs, oldest first (for a checkpoint; claiming them
    /// in this order restores the window).
    pub fn export(&self) -> Vec<(String, String)> {
        self.lock().order.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_old_ids_are_forgotten_in_order() {
        let seen = SeenIds::new(2);
        assert_eq!(
            seen.claim([("u", "1"), ("u", "1"), ("v", "1"), ("u", "")]),
            [true, false, true, true]
        );
        assert_eq!(seen.claim([("u", "1"), ("u", "")]), [false, true]);
        // A third id pushes out the oldest.
        assert_eq!(seen.claim([("w", "9")]), [true]);
        assert_eq!(seen.claim([("u", "1")]), [true]);
        seen.forget([("u", "1")]);
        assert_eq!(seen.claim([("u", "1")]), [true]);
    }
}

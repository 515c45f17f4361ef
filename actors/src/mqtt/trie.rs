//! The subscription trie: topic filters by level, each node holding its subscribers.
//!
//! Generic over the key and value so that it is property-tested on its own; the router
//! keys subscribers by client id (and share group) and stores their options as values.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    subscribers: BTreeMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self { children: HashMap::new(), subscribers: BTreeMap::new() }
    }
}

impl<K: Ord, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

/// Topic filters and their subscribers.
#[derive(Debug)]
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self { root: Node::default(), len: 0 }
    }
}

impl<K: Ord + Clone, V> SubscriptionTrie<K, V> {
    /// Adds or replaces the subscription of `key` to `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let previous = node.subscribers.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes the subscription of `key` to `filter`; returns it if it existed.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<K, V>, levels: &[&str], key: &K) -> Option<V> {
        let Some((first, rest)) = levels.split_first() else {
            return node.subscribers.remove(key);
        };
        let child = node.children.get_mut(*first)?;
        let removed = Self::remove_at(child, rest, key);
        if child.is_empty() {
            node.children.remove(*first);
        }
        removed
    }

    /// The number of (filter, key) subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `visit(key, value)` for every subscription whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::match_at(&self.root, &levels, dollar, &mut visit);
    }

    fn match_at(node: &Node<K, V>, levels: &[&str], no_wildcard_here: bool, visit: &mut impl FnMut(&K, &V)) {
        if !no_wildcard_here && let Some(hash) = node.children.get("#") {
            hash.subscribers.iter().for_each(|(k, v)| visit(k, v));
        }
        let Some((first, rest)) = levels.split_first() else {
            node.subscribers.iter().for_each(|(k, v)| visit(k, v));
            return;
        };
        if !no_wildcard_here && let Some(plus) = node.children.get("+") {
            Self::match_at(plus, rest, false, visit);
        }
        if let Some(exact) = node.children.get(*first) {
            Self::match_at(exact, rest, false, visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic::matches;
    use proptest::prelude::*;

    fn matched(trie: &SubscriptionTrie<u32, String>, topic: &str) -> Vec<String> {
        let mut found = Vec::new();
        trie.for_each_match(topic, |_, filter| found.push(filter.clone()));
        found.sort();
        found
    }

    #[test]
    fn matches_wildcards_and_removes() {
        let mut trie = SubscriptionTrie::default();
        for (key, filter) in ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#"].iter().enumerate() {
            trie.insert(filter, key as u32, filter.to_string());
        }
        assert_eq!(matched(&trie, "a/b"), vec!["#", "+/b", "a/#", "a/+", "a/b"]);
        assert_eq!(matched(&trie, "a"), vec!["#", "a/#"]);
        assert_eq!(matched(&trie, "$SYS/x"), vec!["$SYS/#"]);
        assert_eq!(trie.remove("a/+", &1), Some("a/+".to_string()));
        assert_eq!(trie.remove("a/+", &1), None);
        assert_eq!(matched(&trie, "a/c"), vec!["#", "a/#"]);
        assert_eq!(trie.len(), 5);
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("+"), Just(""), Just("$s")], 1..4).prop_map(
            |levels| {
                let mut filter = levels.join("/");
                if filter.len() % 3 == 0 {
                    filter.push_str("/#");
                }
                filter
            },
        )
    }

    proptest! {
        /// The trie finds exactly the filters that `matches` accepts.
        #[test]
        fn trie_agrees_with_matches(filters in proptest::collection::vec(filter_strategy(), 0..12), topic in "(a|b|c|\\$s)(/(a|b|c|)){0,3}") {
            let mut trie = SubscriptionTrie::default();
            for (key, filter) in filters.iter().enumerate() {
                trie.insert(filter, key as u32, filter.clone());
            }
            let mut expected: Vec<String> = filters.iter().filter(|f| matches(f, &topic)).cloned().collect();
            expected.sort();
            prop_assert_eq!(matched(&trie, &topic), expected);
        }
    }
}

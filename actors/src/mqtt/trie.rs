//! The subscription trie: topic filters by level, each node holding its subscribers.
//!
//! Generic over the key and value so that it is property-tested on its own; the router
//! keys subscribers by client id (and share group) and stores their options as values.
//!
//! Every PUBLISH is matched here (by the router, and by the stream registry for bound
//! streams), so matching allocates nothing: the topic is split level by level as the walk
//! goes, the `+` and `#` children sit in their own fields instead of being looked up by name
//! at every level, and the children map uses foldhash instead of SipHash.

use std::collections::BTreeMap;

use crate::lookup::LookupMap;

type Children<K, V> = LookupMap<Box<str>, Node<K, V>, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Node<K, V> {
    children: Children<K, V>,
    /// The `+` child.
    plus: Option<Box<Node<K, V>>>,
    /// The `#` child.
    hash: Option<Box<Node<K, V>>>,
    subscribers: BTreeMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self { children: Children::default(), plus: None, hash: None, subscribers: BTreeMap::new() }
    }
}

impl<K: Ord, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.plus.is_none() && self.hash.is_none() && self.subscribers.is_empty()
    }

    fn child_mut(&mut self, level: &str) -> &mut Node<K, V> {
        match level {
            "+" => self.plus.get_or_insert_default(),
            "#" => self.hash.get_or_insert_default(),
            _ => self.children.entry(level.into()).or_default(),
        }
    }

    fn existing_child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            _ => self.children.get_mut(level),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            _ => {
                self.children.remove(level);
            }
        }
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
            node = node.child_mut(level);
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
        let child = node.existing_child_mut(first)?;
        let removed = Self::remove_at(child, rest, key);
        if child.is_empty() {
            node.remove_child(first);
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
        let dollar = topic.starts_with('$');
        Self::match_at(&self.root, Some(topic), dollar, &mut visit);
    }

    /// Matches the levels in `rest` (`None` once every level is consumed) below `node`.
    fn match_at(node: &Node<K, V>, rest: Option<&str>, no_wildcard_here: bool, visit: &mut impl FnMut(&K, &V)) {
        if !no_wildcard_here && let Some(hash) = &node.hash {
            hash.subscribers.iter().for_each(|(k, v)| visit(k, v));
        }
        let Some(rest) = rest else {
            node.subscribers.iter().for_each(|(k, v)| visit(k, v));
            return;
        };
        let (first, rest) = match rest.split_once('/') {
            Some((first, rest)) => (first, Some(rest)),
            None => (rest, None),
        };
        if !no_wildcard_here && let Some(plus) = &node.plus {
            Self::match_at(plus, rest, false, visit);
        }
        if let Some(exact) = node.children.get(first) {
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

    #[test]
    fn removing_every_filter_prunes_the_wildcard_children_too() {
        let filters = ["#", "+", "+/+/#", "a/+/c", "a/#", "$SYS/+/x"];
        let mut trie = SubscriptionTrie::default();
        for (key, filter) in filters.iter().enumerate() {
            trie.insert(filter, key as u32, filter.to_string());
        }
        assert_eq!(matched(&trie, "a/b/c"), vec!["#", "+/+/#", "a/#", "a/+/c"]);
        assert_eq!(matched(&trie, "$SYS/b/x"), vec!["$SYS/+/x"]);
        for (key, filter) in filters.iter().enumerate() {
            assert_eq!(trie.remove(filter, &(key as u32)), Some(filter.to_string()));
        }
        assert!(trie.is_empty() && trie.root.is_empty(), "nodes left behind: {:?}", trie.root);
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

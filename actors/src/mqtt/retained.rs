//! Retained messages indexed by topic level, so that a subscribe walks only the branches its
//! filter can match instead of testing every retained message against it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::mqtt::message::Message;

/// One topic level: the message retained at exactly this topic, and the levels below.
#[derive(Debug, Default)]
struct Level {
    message: Option<Arc<Message>>,
    children: BTreeMap<Box<str>, Level>,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }

    fn remove(&mut self, levels: &[&str]) -> Option<Arc<Message>> {
        let Some((first, rest)) = levels.split_first() else {
            return self.message.take();
        };
        let child = self.children.get_mut(*first)?;
        let removed = child.remove(rest);
        if child.is_empty() {
            self.children.remove(*first);
        }
        removed
    }

    /// Every message at or below this level.
    fn collect_all(&self, out: &mut Vec<Arc<Message>>) {
        out.extend(self.message.iter().cloned());
        for child in self.children.values() {
            child.collect_all(out);
        }
    }

    /// The messages below this level that `filter` (its remaining levels) matches; `top` at
    /// the first level, where wildcards do not match `$` topics.
    fn collect(&self, filter: &[&str], top: bool, out: &mut Vec<Arc<Message>>) {
        let Some((first, rest)) = filter.split_first() else {
            out.extend(self.message.iter().cloned());
            return;
        };
        let visible = |name: &str| !(top && name.starts_with('$'));
        match *first {
            // `a/#` matches `a` itself and everything below it
            "#" => {
                if !top {
                    out.extend(self.message.iter().cloned());
                }
                for (name, child) in &self.children {
                    if visible(name) {
                        child.collect_all(out);
                    }
                }
            }
            "+" => {
                for (name, child) in &self.children {
                    if visible(name) {
                        child.collect(rest, false, out);
                    }
                }
            }
            literal => {
                if let Some(child) = self.children.get(literal) {
                    child.collect(rest, false, out);
                }
            }
        }
    }
}

/// The node's retained messages by topic.
#[derive(Debug, Default)]
pub struct RetainedIndex {
    root: Level,
    len: usize,
}

impl RetainedIndex {
    /// Retains `message` at its topic, replacing what was there.
    pub fn insert(&mut self, message: Arc<Message>) {
        let mut level = &mut self.root;
        for name in message.topic.split('/') {
            level = level.children.entry(Box::from(name)).or_default();
        }
        if level.message.replace(message).is_none() {
            self.len += 1;
        }
    }

    /// Clears the message retained at `topic`.
    pub fn remove(&mut self, topic: &str) {
        let levels: Vec<&str> = topic.split('/').collect();
        if self.root.remove(&levels).is_some() {
            self.len -= 1;
        }
    }

    /// The retained messages whose topics `filter` matches (a valid filter, without
    /// `$share/`), in topic order.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        self.root.collect(&levels, true, &mut out);
        out
    }

    /// The number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic;
    use proptest::prelude::*;

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.to_string(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 0,
            retain: true,
            properties: Default::default(),
            expires_at_ms: None,
            received_at_ms: 0,
            publisher: Arc::from("p"),
        })
    }

    fn topics(found: Vec<Arc<Message>>) -> Vec<String> {
        let mut topics: Vec<String> = found.iter().map(|m| m.topic.clone()).collect();
        topics.sort();
        topics
    }

    #[test]
    fn a_filter_finds_what_the_matching_rules_say() {
        let mut index = RetainedIndex::default();
        for topic in ["sport", "sport/tennis", "sport/tennis/player1", "/finance", "$SYS/uptime", "a//b"] {
            index.insert(message(topic));
        }
        assert_eq!(index.len(), 6);
        assert_eq!(topics(index.matching("sport/#")), ["sport", "sport/tennis", "sport/tennis/player1"]);
        assert_eq!(topics(index.matching("sport/+")), ["sport/tennis"]);
        assert_eq!(topics(index.matching("+/+")), ["/finance", "sport/tennis"]);
        assert_eq!(topics(index.matching("#")).len(), 5, "no $ topic for a leading wildcard");
        assert_eq!(topics(index.matching("$SYS/#")), ["$SYS/uptime"]);
        assert_eq!(topics(index.matching("a/+/b")), ["a//b"]);
        index.remove("sport/tennis");
        index.remove("sport/tennis");
        assert_eq!(index.len(), 5);
        assert_eq!(topics(index.matching("sport/#")), ["sport", "sport/tennis/player1"]);
        index.insert(message("sport"));
        assert_eq!(index.len(), 5, "a topic retained again replaces its message");
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just(String::new()), Just("$s".to_string())]
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|levels| levels.join("/"))
    }

    fn filter_strategy() -> impl Strategy<Value = String> {
        let part = prop_oneof![level(), Just("+".to_string())];
        (prop::collection::vec(part, 0..4), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#".to_string());
            }
            levels.join("/")
        })
    }

    proptest! {
        #[test]
        fn the_index_finds_exactly_what_a_scan_finds(
            topics_in in prop::collection::vec(topic_strategy(), 0..20),
            removed in prop::collection::vec(topic_strategy(), 0..5),
            filter in filter_strategy(),
        ) {
            let mut index = RetainedIndex::default();
            let mut all = std::collections::BTreeSet::new();
            for topic in &topics_in {
                index.insert(message(topic));
                all.insert(topic.clone());
            }
            for topic in &removed {
                index.remove(topic);
                all.remove(topic);
            }
            prop_assert_eq!(index.len(), all.len());
            let scanned: Vec<String> = all.iter().filter(|t| topic::matches(&filter, t)).cloned().collect();
            prop_assert_eq!(topics(index.matching(&filter)), scanned);
        }
    }
}

//! MQTT topic names and filters: validation, matching and shared-subscription parsing.
//!
//! Follows MQTT 5.0 §4.7: `+` matches one level, `#` the rest (including the parent level),
//! and a topic whose first level starts with `$` is not matched by a filter that starts
//! with a wildcard.

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// empty topic or filter
    #[error("empty topic")]
    Empty,
    /// wildcards are not allowed in a topic name
    #[error("wildcard in topic name")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level
    #[error("misplaced wildcard in topic filter")]
    MisplacedWildcard,
    /// U+0000 is not allowed anywhere
    #[error("null character in topic")]
    NullCharacter,
    /// `$share/` filter without a group name or without a filter
    #[error("invalid shared subscription")]
    InvalidShare,
}

const MAX_TOPIC_LEN: usize = 65535;

/// How many levels a topic name or filter has (`a/b` two, `a/` two, `#` one).
pub fn levels(topic: &str) -> usize {
    topic.bytes().filter(|byte| *byte == b'/').count() + 1
}

/// Checks a topic name used in PUBLISH.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::Empty);
    }
    if topic.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter used in SUBSCRIBE (without the `$share/group/` prefix).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(TopicError::MisplacedWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// A subscription filter split into its share group (if any) and the topic filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFilter<'a> {
    /// The share group of a `$share/<group>/<filter>` subscription.
    pub share_group: Option<&'a str>,
    /// The topic filter that is matched against topic names.
    pub filter: &'a str,
}

/// Splits and validates a SUBSCRIBE filter, recognising `$share/<group>/<filter>`.
pub fn parse_filter(raw: &str) -> Result<ParsedFilter<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::InvalidShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::InvalidShare);
        }
        validate_filter(filter)?;
        return Ok(ParsedFilter { share_group: Some(group), filter });
    }
    validate_filter(raw)?;
    Ok(ParsedFilter { share_group: None, filter: raw })
}

/// Whether `filter` matches the topic name `topic`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by `inner` is also matched by `outer` (both filters).
///
/// Used by the ACL: a subscription to `inner` is covered by a rule on `outer`.
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(i)) if i != "#" => {}
            (Some(o), Some(i)) if o == i => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("$SYS/+", "$SYS/broker"));
    }

    #[test]
    fn filters_are_validated() {
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("+/+/#").is_ok());
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::MisplacedWildcard));
        assert_eq!(validate_filter("a#"), Err(TopicError::MisplacedWildcard));
        assert_eq!(validate_filter("a/b+"), Err(TopicError::MisplacedWildcard));
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn shared_filters_are_parsed() {
        let parsed = parse_filter("$share/g1/a/+/c").unwrap();
        assert_eq!(parsed.share_group, Some("g1"));
        assert_eq!(parsed.filter, "a/+/c");
        assert_eq!(parse_filter("$share/g1"), Err(TopicError::InvalidShare));
        assert_eq!(parse_filter("$share//a"), Err(TopicError::InvalidShare));
        assert_eq!(parse_filter("a/b").unwrap().share_group, None);
    }

    #[test]
    fn covering_filters() {
        assert!(filter_covers("a/#", "a/b/+"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(filter_covers("#", "#"));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("".to_string()), Just("$x".to_string())]
    }

    proptest! {
        /// A filter made of a topic's own levels, with any level replaced by `+` or the tail by `#`, matches it.
        #[test]
        fn generalised_topic_matches(levels in proptest::collection::vec(level(), 1..6), plus in any::<u8>(), cut in any::<u8>()) {
            let topic = levels.join("/");
            let mut filter_levels = levels.clone();
            let plus_at = plus as usize % filter_levels.len();
            if plus_at > 0 || !topic.starts_with('$') {
                filter_levels[plus_at] = "+".to_string();
            }
            let filter = filter_levels.join("/");
            prop_assert!(matches(&filter, &topic), "{} should match {}", filter, topic);
            let cut_at = cut as usize % (levels.len() + 1);
            if cut_at > 0 || !topic.starts_with('$') {
                let mut hashed: Vec<String> = levels[..cut_at].to_vec();
                hashed.push("#".to_string());
                let hashed = hashed.join("/");
                prop_assert!(matches(&hashed, &topic), "{} should match {}", hashed, topic);
            }
        }

        /// A topic name always matches itself and never panics on arbitrary input.
        #[test]
        fn exact_match_and_no_panic(topic in "[a-c/$+#]{0,12}", filter in "[a-c/$+#]{0,12}") {
            let _ = matches(&filter, &topic);
            let _ = filter_covers(&filter, &topic);
            if validate_topic_name(&topic).is_ok() {
                prop_assert!(matches(&topic, &topic));
            }
        }
    }
}

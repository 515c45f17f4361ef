//! The one hash map the actors may use: for lookups only.
//!
//! `HashMap` iterates in a per-process random order, and an order that reaches the wire or a
//! decision makes a simulated run depend on more than its seed (clippy disallows `HashMap`
//! everywhere else). Where only `get`/`insert`/`remove` are needed on a hot path, this alias
//! says so; iterate a `BTreeMap` instead.

/// A hash map that is never iterated where the order could matter.
#[allow(clippy::disallowed_types)]
pub(crate) type LookupMap<K, V, S = std::collections::hash_map::RandomState> = std::collections::HashMap<K, V, S>;

/// An entry of a [`LookupMap`].
#[allow(clippy::disallowed_types)]
pub(crate) type LookupEntry<'a, K, V> = std::collections::hash_map::Entry<'a, K, V>;

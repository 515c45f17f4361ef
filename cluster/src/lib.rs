//! Cluster membership (chitchat), partition placement and the data-plane RPC channel.
//!
//! Empty until the cluster issue: a single node needs none of it. The seams it will plug
//! into (`Net`, `LogStore`, clock, RNG) already exist in `tidewater-actors` and
//! `tidewater-storage`.

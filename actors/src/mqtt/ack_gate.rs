//! The acknowledgement gate of a publishing session, sans-IO.
//!
//! A PUBACK or PUBREC is a promise that the message is kept. The gate holds each one until
//! everything its PUBLISH caused is durable — the stream appends of bound streams and the
//! stored deliveries to persistent sessions — and releases them in the order the PUBLISH
//! packets arrived ([MQTT-4.6.0-2]). A completion that failed turns its acknowledgement into a
//! refusal: nothing is sent, and the client's retry is taken as a new message.

use std::collections::{BTreeMap, VecDeque};

use crate::mqtt::codec::Packet;

/// What the gate lets out, in packet order.
#[derive(Debug)]
pub(crate) enum Released {
    /// Write this packet.
    Send(Packet),
    /// This acknowledgement is withheld because something it promised failed; the packet id
    /// of a QoS 2 PUBLISH must be forgotten, so that the retry is stored again.
    Refused(Packet),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Completions still outstanding.
    left: usize,
    /// Whether any completion failed (or could not even be requested).
    failed: bool,
}

/// Holds PUBACK/PUBREC until what their PUBLISH promised is durable.
#[derive(Debug, Default)]
pub(crate) struct AckGate {
    next_token: u64,
    outstanding: BTreeMap<u64, Pending>,
    /// The token of the PUBLISH routed last, until its acknowledgement passes the gate.
    last_route: Option<u64>,
    deferred: VecDeque<(Option<u64>, Box<Packet>)>,
    /// Test-only: release acknowledgements at once (proves the simulation's checker can fail).
    ack_before_durable: bool,
}

impl AckGate {
    /// A gate; `ack_before_durable` (tests only) disables it.
    pub(crate) fn new(ack_before_durable: bool) -> Self {
        Self { ack_before_durable, ..Self::default() }
    }

    /// Forgets everything held (the connection ended: the client retries unacknowledged
    /// PUBLISH packets on its next connection).
    pub(crate) fn clear(&mut self) {
        self.outstanding.clear();
        self.last_route = None;
        self.deferred.clear();
    }

    /// The token that the completions of the PUBLISH being routed now must carry.
    pub(crate) fn next_token(&self) -> u64 {
        self.next_token
    }

    /// Records that the PUBLISH being routed waits for `waits` completions carrying
    /// [`AckGate::next_token`], and whether a part of it could not even be requested (`refused`).
    pub(crate) fn routed(&mut self, waits: usize, refused: bool) {
        self.last_route = None;
        if (waits == 0 && !refused) || self.ack_before_durable {
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.outstanding.insert(token, Pending { left: waits, failed: refused });
        self.last_route = Some(token);
    }

    /// Takes a packet the session wants to write; returns what may be written now, in order.
    pub(crate) fn gate(&mut self, packet: Box<Packet>) -> Vec<Released> {
        let is_ack = matches!(*packet, Packet::PubAck(_) | Packet::PubRec(_));
        if !is_ack || (self.last_route.is_none() && self.deferred.is_empty()) {
            self.last_route = None;
            return vec![Released::Send(*packet)];
        }
        self.deferred.push_back((self.last_route.take(), packet));
        self.release()
    }

    /// Takes a packet that waits, like an acknowledgement, for the completions of the last
    /// [`AckGate::routed`] (a SUBACK waiting for the cluster's routes).
    pub(crate) fn hold(&mut self, packet: Box<Packet>) -> Vec<Released> {
        if self.last_route.is_none() && self.deferred.is_empty() {
            return vec![Released::Send(*packet)];
        }
        self.deferred.push_back((self.last_route.take(), packet));
        self.release()
    }

    /// Records one completion of `token`; returns what may be written now, in order.
    pub(crate) fn durable(&mut self, token: u64, ok: bool) -> Vec<Released> {
        if let Some(pending) = self.outstanding.get_mut(&token) {
            pending.left = pending.left.saturating_sub(1);
            pending.failed |= !ok;
        }
        self.release()
    }

    /// Whether acknowledgements are waiting.
    #[cfg(test)]
    fn holds(&self) -> usize {
        self.deferred.len()
    }

    fn release(&mut self) -> Vec<Released> {
        let mut ready = Vec::new();
        while let Some((token, _)) = self.deferred.front() {
            let pending = token.and_then(|t| self.outstanding.get(&t).copied());
            if pending.is_some_and(|p| p.left > 0) {
                break;
            }
            let (token, packet) = self.deferred.pop_front().expect("front exists");
            if let Some(token) = token {
                let removed = self.outstanding.remove(&token);
                crate::check_invariant!(
                    crate::invariants::InvariantId::AckBeforeDurable,
                    removed.is_none_or(|p| p.left == 0),
                    "acknowledgement of token {token} released with completions outstanding"
                );
            }
            if pending.is_some_and(|p| p.failed) {
                ready.push(Released::Refused(*packet));
            } else {
                ready.push(Released::Send(*packet));
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::codec::{PubAck, PubAckReason, PubRec, PubRecReason};

    fn puback(pkid: u16) -> Box<Packet> {
        Box::new(Packet::PubAck(PubAck { pkid, reason: PubAckReason::Success, properties: None }))
    }

    fn pubrec(pkid: u16) -> Box<Packet> {
        Box::new(Packet::PubRec(PubRec { pkid, reason: PubRecReason::Success, properties: None }))
    }

    fn sent(released: &[Released]) -> Vec<u16> {
        released
            .iter()
            .filter_map(|r| match r {
                Released::Send(Packet::PubAck(ack)) => Some(ack.pkid),
                Released::Send(Packet::PubRec(rec)) => Some(rec.pkid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_ack_without_durable_work_passes_at_once() {
        let mut gate = AckGate::new(false);
        gate.routed(0, false);
        assert_eq!(sent(&gate.gate(puback(1))), vec![1]);
    }

    #[test]
    fn acks_wait_for_every_completion_and_leave_in_packet_order() {
        let mut gate = AckGate::new(false);
        let first = gate.next_token();
        gate.routed(2, false);
        assert!(gate.gate(puback(1)).is_empty());
        // the second PUBLISH needs nothing durable, but must not overtake the first
        gate.routed(0, false);
        assert!(gate.gate(puback(2)).is_empty());
        assert!(gate.durable(first, true).is_empty());
        assert_eq!(sent(&gate.durable(first, true)), vec![1, 2]);
        assert_eq!(gate.holds(), 0);
    }

    #[test]
    fn a_failed_completion_refuses_the_ack_and_releases_the_next() {
        let mut gate = AckGate::new(false);
        let first = gate.next_token();
        gate.routed(1, false);
        assert!(gate.gate(pubrec(7)).is_empty());
        gate.routed(0, false);
        assert!(gate.gate(puback(8)).is_empty());
        let released = gate.durable(first, false);
        assert!(matches!(released[0], Released::Refused(Packet::PubRec(ref rec)) if rec.pkid == 7));
        assert_eq!(sent(&released), vec![8]);
    }

    #[test]
    fn an_append_that_could_not_be_requested_refuses_the_ack_at_once() {
        let mut gate = AckGate::new(false);
        gate.routed(0, true);
        let released = gate.gate(puback(3));
        assert!(matches!(released[..], [Released::Refused(Packet::PubAck(_))]));
        assert_eq!(gate.holds(), 0);
    }

    #[test]
    fn completions_of_a_cleared_gate_are_ignored() {
        let mut gate = AckGate::new(false);
        let first = gate.next_token();
        gate.routed(1, false);
        assert!(gate.gate(puback(1)).is_empty());
        gate.clear();
        assert!(gate.durable(first, true).is_empty());
        gate.routed(0, false);
        assert_eq!(sent(&gate.gate(puback(2))), vec![2]);
    }

    #[test]
    fn a_held_suback_waits_for_its_completion_and_for_the_acks_before_it() {
        use crate::mqtt::codec::SubAck;
        let suback = || Box::new(Packet::SubAck(SubAck { pkid: 9, return_codes: Vec::new(), properties: None }));
        let mut gate = AckGate::new(false);
        let publish = gate.next_token();
        gate.routed(1, false);
        assert!(gate.gate(puback(1)).is_empty());
        let routes = gate.next_token();
        gate.routed(1, false);
        assert!(gate.hold(suback()).is_empty(), "the SUBACK waits for the cluster's routes");
        // the routes are held first: the SUBACK still waits for the PUBACK before it
        assert!(gate.durable(routes, true).is_empty());
        let released = gate.durable(publish, true);
        assert!(matches!(released[..], [Released::Send(Packet::PubAck(_)), Released::Send(Packet::SubAck(_))]));
        // with nothing to wait for, a held packet passes at once
        assert!(matches!(gate.hold(suback())[..], [Released::Send(Packet::SubAck(_))]));
    }

    #[test]
    fn the_test_switch_acknowledges_before_anything_is_durable() {
        let mut gate = AckGate::new(true);
        gate.routed(3, false);
        assert_eq!(sent(&gate.gate(puback(1))), vec![1]);
    }
}

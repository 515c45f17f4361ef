//! Token buckets for the rate limits of `[mqtt]`: connects per second on the node, and
//! messages and bytes per second on one connection. A bucket holds one second of its rate,
//! so a client may burst that much and no more, and the long-run rate is the configured one.

/// A token bucket refilled at `rate` tokens a second, holding at most one second's worth.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens a second.
    pub fn per_second(rate: u64, now_ms: i64) -> Self {
        let rate = rate as f64;
        Self { rate, tokens: rate, at_ms: now_ms }
    }

    /// Takes `cost` tokens if the bucket has them at `now_ms`. A cost above a whole second's
    /// worth passes when the bucket is full, and leaves it in debt for as long as it exceeded
    /// (a message larger than the byte rate is not refused for ever).
    pub fn take(&mut self, cost: u64, now_ms: i64) -> bool {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.at_ms = self.at_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        let cost = cost as f64;
        if self.tokens <= 0.0 || self.tokens < cost.min(self.rate) {
            return false;
        }
        self.tokens -= cost;
        true
    }
}

/// A byte rate a connection may use, as Kafka's quotas: every request is served, and one past
/// the rate earns a throttle time (answered in the response's `throttle_time_ms`, the connection
/// muted for as long), so that the long-run rate is the configured one. A second's worth may
/// burst.
#[derive(Debug, Clone)]
pub struct ByteQuota {
    rate: f64,
    balance: f64,
    at_ms: i64,
}

impl ByteQuota {
    /// A quota of `rate` bytes a second, a second's worth available.
    pub fn per_second(rate: u64, now_ms: i64) -> Self {
        let rate = rate.max(1) as f64;
        Self { rate, balance: rate, at_ms: now_ms }
    }

    /// Charges `bytes` at `now_ms`: the milliseconds the connection must now wait (0 within the
    /// rate).
    pub fn charge(&mut self, bytes: u64, now_ms: i64) -> u64 {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        self.at_ms = self.at_ms.max(now_ms);
        self.balance = (self.balance + elapsed * self.rate).min(self.rate) - bytes as f64;
        if self.balance >= 0.0 { 0 } else { (-self.balance / self.rate * 1000.0).ceil() as u64 }
    }
}

/// Open connections per IP address, for a listener's `max_connections_per_address`.
#[derive(Debug, Default)]
pub struct AddressCounts {
    counts: std::sync::Mutex<std::collections::BTreeMap<std::net::IpAddr, usize>>,
}

/// One connection counted in its address's total, until dropped.
#[derive(Debug)]
pub struct AddressHold {
    counts: std::sync::Arc<AddressCounts>,
    address: std::net::IpAddr,
}

impl AddressCounts {
    /// Counts a connection from `address`: the hold, and how many are open from it with this one.
    pub fn hold(self: &std::sync::Arc<Self>, address: std::net::IpAddr) -> (AddressHold, usize) {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(address).or_insert(0);
        *count += 1;
        let open = *count;
        drop(counts);
        (AddressHold { counts: std::sync::Arc::clone(self), address }, open)
    }
}

impl Drop for AddressHold {
    fn drop(&mut self) {
        let mut counts = self.counts.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_quota_throttles_for_the_time_the_excess_takes_at_the_rate() {
        let mut quota = ByteQuota::per_second(1000, 0);
        assert_eq!(quota.charge(1000, 0), 0, "a second's worth bursts");
        assert_eq!(quota.charge(500, 0), 500, "half a second's worth more: half a second");
        assert_eq!(quota.charge(0, 500), 0, "paid off after waiting");
        assert_eq!(quota.charge(3000, 10_000), 2000, "a burst larger than a second waits the rest");
    }

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let mut bucket = TokenBucket::per_second(10, 0);
        assert_eq!((0..15).filter(|_| bucket.take(1, 0)).count(), 10, "one second's worth at once");
        assert!(!bucket.take(1, 50));
        assert!(bucket.take(1, 100), "a token every 100 ms");
        assert!(!bucket.take(1, 150));
        // over a long run, no more than the rate
        let admitted = (0..10_000).filter(|i| bucket.take(1, 1_000 + i)).count();
        assert!((100..=111).contains(&admitted), "{admitted} in 10 s at 10/s");
    }

    #[test]
    fn a_cost_above_the_rate_passes_when_full_and_leaves_a_debt() {
        let mut bucket = TokenBucket::per_second(1_000, 0);
        assert!(bucket.take(5_000, 0), "a full bucket passes one large message");
        assert!(!bucket.take(1, 3_000), "four seconds of debt, three repaid");
        assert!(bucket.take(1, 4_100));
        assert!(!TokenBucket::per_second(0, 0).take(1, 1_000), "a zero rate admits nothing");
    }
}

//! Tidewater's actors and protocol front ends.
//!
//! Every client session is a ractor actor over a sans-IO state machine; everything a node's
//! actors share lives in a [`NodeContext`] passed explicitly, never in globals.

pub mod acl;
pub mod context;
pub mod kafka;
pub mod log_limit;
mod lookup;
pub mod memory;
pub mod metrics;
pub mod mqtt;
pub mod rate_limit;
pub use tidewater_cluster::{check_invariant, invariants, seams};
pub mod stream;

pub use context::{KafkaSettings, MqttSettings, NodeContext, NodeParts};

/// Why an actor did not start, in words for an operator: an error its `pre_start` returned
/// (a storage failure, most often) as itself, not as ractor's "panicked during startup".
pub fn startup_error(error: ractor::SpawnErr) -> String {
    match error {
        ractor::SpawnErr::StartupFailed(cause) => cause.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    struct FailsToStart;

    impl ractor::Actor for FailsToStart {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ractor::ActorRef<()>, _: ()) -> Result<(), ractor::ActorProcessingErr> {
            Err("partition s-0: io: injected sync failure".into())
        }
    }

    #[tokio::test]
    async fn a_startup_error_reads_as_its_cause() {
        let Err(error) = ractor::Actor::spawn(None, FailsToStart, ()).await else { panic!("it started") };
        assert_eq!(super::startup_error(error), "partition s-0: io: injected sync failure");
    }
}

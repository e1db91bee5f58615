//! The `delay` action: wait, cut short by a stop.

use super::{
    duration::parse_duration,
    runner::{Shared, StageOutcome, failed},
};
use crate::api::DelayAction;

pub(crate) async fn run(shared: &Shared, delay: &DelayAction) -> StageOutcome {
    let d = match parse_duration(&delay.duration) {
        Ok(d) => d,
        Err(e) => return failed("InvalidDuration", format!("delay.duration: {e}")),
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => StageOutcome::Succeeded,
        _ = shared.stop.cancelled() => StageOutcome::Stopped,
    }
}

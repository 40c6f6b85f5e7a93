//! Per-CPU verdict counters: one slot per [`Reason`], so `gateway stats` can account
//! for every packet without cross-CPU contention.

use gateway_common::consts::Reason;

use crate::maps::COUNTERS;

/// Adds one packet of `bytes` to the counter of `reason`.
#[inline(always)]
pub fn count(reason: Reason, bytes: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, and XDP runs with preemption disabled, so nothing else
        // touches this memory while we update it.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

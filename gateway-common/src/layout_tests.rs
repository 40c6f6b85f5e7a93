//! Pins the size and field offsets of every shared struct: the kernel program and the
//! daemon are built separately, so a silent layout change would corrupt the maps.

use core::mem::{offset_of, size_of};

use crate::maps::{
    Addr4, Addr6, BlockEntry, CidrRule, Counter, RateBucket, RateEvent, XdpConfig, addr4,
};

#[test]
fn address_keys() {
    assert_eq!(size_of::<Addr4>(), 4);
    assert_eq!(size_of::<Addr6>(), 16);
    // Network byte order in memory, whatever the host's: the tries match from the
    // first byte.
    assert_eq!(addr4([198, 18, 0, 1]).to_ne_bytes(), [198, 18, 0, 1]);
}

#[test]
fn cidr_rule() {
    assert_eq!(size_of::<CidrRule>(), 48);
    assert_eq!(offset_of!(CidrRule, allow_expires_at_ns), 0);
    assert_eq!(offset_of!(CidrRule, block_expires_at_ns), 8);
    assert_eq!(offset_of!(CidrRule, own_allow_expires_at_ns), 16);
    assert_eq!(offset_of!(CidrRule, own_block_expires_at_ns), 24);
    assert_eq!(offset_of!(CidrRule, flags), 32);
    assert_eq!(offset_of!(CidrRule, own_allow_reason), 36);
    assert_eq!(offset_of!(CidrRule, own_block_reason), 40);
    assert_eq!(offset_of!(CidrRule, reserved), 44);
}

#[test]
fn cidr_flags_are_distinct_bits() {
    use crate::consts::cidr_flags::{ALLOW, ALLOWLISTED, BLOCK, BLOCKLISTED};
    let all = [ALLOW, BLOCK, ALLOWLISTED, BLOCKLISTED];
    for (i, a) in all.iter().enumerate() {
        assert_eq!(a.count_ones(), 1);
        for b in &all[i + 1..] {
            assert_eq!(a & b, 0);
        }
    }
}

#[test]
fn block_entry() {
    assert_eq!(size_of::<BlockEntry>(), 32);
    assert_eq!(offset_of!(BlockEntry, expires_at_ns), 0);
    assert_eq!(offset_of!(BlockEntry, hits), 8);
    assert_eq!(offset_of!(BlockEntry, bytes), 16);
    assert_eq!(offset_of!(BlockEntry, reason), 24);
    assert_eq!(offset_of!(BlockEntry, reserved), 28);
}

#[test]
fn rate_bucket() {
    assert_eq!(size_of::<RateBucket>(), 40);
    assert_eq!(offset_of!(RateBucket, tat_ns), 0);
    assert_eq!(offset_of!(RateBucket, syn_tat_ns), 8);
    assert_eq!(offset_of!(RateBucket, passed), 16);
    assert_eq!(offset_of!(RateBucket, dropped), 24);
    assert_eq!(offset_of!(RateBucket, last_event_ns), 32);
}

#[test]
fn xdp_config() {
    assert_eq!(size_of::<XdpConfig>(), 56);
    assert_eq!(offset_of!(XdpConfig, rate_interval_ns), 0);
    assert_eq!(offset_of!(XdpConfig, rate_burst_ns), 8);
    assert_eq!(offset_of!(XdpConfig, syn_interval_ns), 16);
    assert_eq!(offset_of!(XdpConfig, syn_burst_ns), 24);
    assert_eq!(offset_of!(XdpConfig, ipv6_rate_mask), 32);
    assert_eq!(offset_of!(XdpConfig, monitor), 48);
    assert_eq!(offset_of!(XdpConfig, layout), 52);
}

#[test]
fn counter() {
    assert_eq!(size_of::<Counter>(), 16);
    assert_eq!(offset_of!(Counter, packets), 0);
    assert_eq!(offset_of!(Counter, bytes), 8);
}

#[test]
fn rate_event() {
    assert_eq!(size_of::<RateEvent>(), 32);
    assert_eq!(offset_of!(RateEvent, addr), 0);
    assert_eq!(offset_of!(RateEvent, timestamp_ns), 16);
    assert_eq!(offset_of!(RateEvent, kind), 24);
    assert_eq!(offset_of!(RateEvent, reserved), 28);
}

#[test]
fn map_names_fit_the_kernel_and_are_distinct() {
    use crate::consts::map_names::{ALL, RATE_LIMIT_V4, RATE_LIMIT_V6};
    for (i, name) in ALL.iter().enumerate() {
        // BPF_OBJ_NAME_LEN is 16 with the terminating NUL; a longer name is cut, and
        // the pins and the object would disagree.
        assert!(name.len() <= 15, "{name}");
        assert!(!ALL[i + 1..].contains(name), "{name} twice");
    }
    assert!(ALL.contains(&RATE_LIMIT_V4) && ALL.contains(&RATE_LIMIT_V6));
}

#[test]
fn reasons_are_dense_and_named() {
    for (index, reason) in crate::consts::Reason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, index);
        assert!(!reason.name().is_empty());
    }
}

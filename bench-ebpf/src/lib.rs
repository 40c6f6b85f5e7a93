//! Empty on purpose: the programs are the `bench-xdp` binary. This library target only
//! lets `gateway-bench` declare a build-dependency, so cargo rebuilds the object when
//! this crate changes.
#![no_std]

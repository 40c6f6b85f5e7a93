//! Empty on purpose: the program is the `gateway-xdp` binary. This library target
//! only lets `gateway` declare a build-dependency, so cargo rebuilds the object when
//! this crate or `gateway-common` changes.
#![no_std]

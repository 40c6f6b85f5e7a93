//! Types shared by the XDP program (`gateway-ebpf`) and the daemon (`gateway`).
//!
//! Everything here crosses the kernel/userspace boundary through BPF maps, so every
//! struct is `#[repr(C)]` with fixed-width fields and explicit padding; `layout_tests`
//! pins their sizes and offsets.
#![no_std]

pub mod consts;
pub mod maps;

#[cfg(test)]
mod layout_tests;

//! The reference programs of `bench-ebpf` (bare drop, single lookup, generator),
//! loaded with aya, and timing any XDP program with `BPF_PROG_TEST_RUN`.

use std::net::Ipv4Addr;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, TestRunResult, include_bytes_aligned,
    maps::{Array, HashMap},
    programs::{TestRun as _, TestRunOptions, Xdp},
};

/// The object `build.rs` builds from `bench-ebpf`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-xdp"));

/// `return XDP_DROP`.
pub const DROP: &str = "bench_drop";
/// Ethernet + IPv4 parse, one hash lookup, one atomic add.
pub const LOOKUP: &str = "bench_lookup";
/// The live-frames generator.
pub const GENERATOR: &str = "bench_gen";

/// XDP actions, as `BPF_PROG_TEST_RUN` returns them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// One load of the reference object: all three programs and their maps.
pub struct References {
    ebpf: Ebpf,
}

impl References {
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the reference XDP object")?;
        for name in [DROP, LOOKUP, GENERATOR] {
            xdp(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name} into the kernel"))?;
        }
        Ok(Self { ebpf })
    }

    pub fn program(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        xdp(&mut self.ebpf, name)
    }

    /// Lists `addr` in the lookup program's map, so frames from it are dropped.
    pub fn list_for_lookup(&mut self, addr: Ipv4Addr) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("LOOKUP")
            .ok_or_else(|| anyhow!("the object has no LOOKUP map"))?;
        let mut map: HashMap<_, u32, u64> = HashMap::try_from(map)?;
        map.insert(&u32::from_ne_bytes(addr.octets()), &0, 0)?;
        Ok(())
    }

    /// Makes the generator cycle through `count` sources starting at `first`.
    pub fn configure_generator(&mut self, first: Ipv4Addr, count: u32) -> anyhow::Result<()> {
        let map = self
            .ebpf
            .map_mut("GEN_CONFIG")
            .ok_or_else(|| anyhow!("the object has no GEN_CONFIG map"))?;
        let mut config: Array<_, u32> = Array::try_from(map)?;
        config.set(0, &u32::from(first), 0)?;
        config.set(1, &count, 0)?;
        Ok(())
    }
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the reference object has no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

/// Runs `program` `repeat` times on `frame`; `duration` is the kernel's mean per run.
pub fn time(program: &Xdp, frame: &[u8], repeat: u32) -> anyhow::Result<TestRunResult> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    program
        .test_run(options)
        .with_context(|| format!("BPF_PROG_TEST_RUN with repeat {repeat}"))
}

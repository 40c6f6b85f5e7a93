//! The real XDP object loaded (not attached) with its maps pinned in a private bpffs
//! directory, run on crafted frames with `BPF_PROG_TEST_RUN`.

use aya::{
    Ebpf, TestRunResult,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use gateway::{
    lists::Lists,
    state::StateDir,
    xdp::{Capacity, KernelMaps, PinDir},
};
use gateway_common::{
    consts::{PROGRAM_NAME, Reason},
    maps::Counter,
};

/// XDP return codes.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A loaded program, its maps and a private state directory; all removed on drop.
pub struct LoadedProgram {
    ebpf: Ebpf,
    pub pins: PinDir,
    pub maps: KernelMaps,
    pub state: StateDir,
    _state_dir: tempfile::TempDir,
}

impl LoadedProgram {
    /// Loads the object with small maps, as `gateway xdp attach` would.
    pub fn load() -> Self {
        Self::load_with(&Capacity {
            rate_limit_entries: 1024,
            blocklist_entries: 1024,
            cidr_entries: 1024,
        })
    }

    /// Loads the object with maps of the given sizes (the benchmark fills them with
    /// up to a million entries).
    pub fn load_with(capacity: &Capacity) -> Self {
        crate::require_root();
        let pins = PinDir::new(format!(
            "/sys/fs/bpf/gateway-verdict-{}",
            crate::unique_suffix()
        ));
        let ebpf = gateway::xdp::load(&pins, capacity)
            .unwrap_or_else(|err| panic!("loading the XDP program failed: {err}"));
        let maps = KernelMaps::open(&pins).expect("the maps were just pinned");
        let state_dir = tempfile::tempdir().expect("temporary state directory");
        Self {
            ebpf,
            maps,
            state: StateDir::new(state_dir.path()),
            pins,
            _state_dir: state_dir,
        }
    }

    /// The list API over this program's maps.
    pub fn lists(&self) -> Lists<'_> {
        Lists::new(&self.maps, &self.state)
    }

    /// Runs the program once on `frame` and returns its XDP action.
    pub fn run(&mut self, frame: &[u8]) -> u32 {
        self.test_run(frame, 1).return_value
    }

    /// Runs the program `repeat` times on `frame`; the result's `duration` is the
    /// kernel's own mean time per run, what the benchmark reports.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> TestRunResult {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .expect("the object has the program")
            .try_into()
            .expect("an XDP program");
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        program.test_run(options).unwrap_or_else(|err| {
            panic!(
                "BPF_PROG_TEST_RUN on a {}-byte frame failed: {err}",
                frame.len()
            )
        })
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Vec<Counter> {
        self.maps.counters().expect("reading the counters")
    }

    /// Runs `frame` and checks the action and that exactly the counter of `reason`
    /// (plus any `extra` monitor counters) moved, by one packet of the frame's size.
    pub fn expect(&mut self, frame: &[u8], action: u32, reason: Reason, extra: &[Reason]) {
        self.expect_named("frame", frame, action, reason, extra);
    }

    /// [`LoadedProgram::expect`] with a name for the frame in failure messages.
    pub fn expect_named(
        &mut self,
        name: &str,
        frame: &[u8],
        action: u32,
        reason: Reason,
        extra: &[Reason],
    ) {
        let before = self.counters();
        let got = self.run(frame);
        let after = self.counters();
        assert_eq!(
            got,
            action,
            "{name} of {} bytes: expected action {action} ({}), got {got}",
            frame.len(),
            reason.name()
        );
        for candidate in Reason::ALL {
            let index = candidate as usize;
            let moved = after[index].packets - before[index].packets;
            let bytes = after[index].bytes - before[index].bytes;
            if candidate == reason || extra.contains(&candidate) {
                assert_eq!(moved, 1, "{name}: {} should count it", candidate.name());
                assert_eq!(
                    bytes,
                    frame.len() as u64,
                    "{name}: {} should count its bytes",
                    candidate.name()
                );
            } else {
                assert_eq!(moved, 0, "{name}: {} should not count it", candidate.name());
            }
        }
    }
}

impl Drop for LoadedProgram {
    fn drop(&mut self) {
        // Unpinning releases the maps once the object is dropped too.
        let _ = gateway::xdp::detach(&self.pins);
    }
}

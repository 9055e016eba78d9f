//! Benchmark (not a test): time from start to the agent's hello per
//! firmware under TCG, and throughput per transport each way, as medians.
//!
//! `cargo bench --bench builder_vm` (needs QEMU and the static agent from
//! `scripts/build-agent`). `NIXDISK_BENCH_RUNS` sets the runs per case
//! (default 3), `NIXDISK_BENCH_MIB` the stream size (default 256).

use std::time::{Duration, Instant};

use nixdisk::builder_vm::{AccelChoice, BuilderVm, BuilderVmConfig};
use nixdisk::transport::{TransportChoice, TransportKind};
use nixdisk_firmware::FirmwareKind;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn config(firmware: FirmwareKind, transport: TransportKind) -> BuilderVmConfig {
    BuilderVmConfig {
        firmware,
        transport: TransportChoice::Only(transport),
        accel: AccelChoice::Tcg,
        ..BuilderVmConfig::default()
    }
}

async fn start(config: &BuilderVmConfig) -> BuilderVm {
    BuilderVm::start(config)
        .await
        .unwrap_or_else(|e| panic!("the builder VM did not start: {e}"))
}

/// Seconds from start to hello, once.
async fn time_to_hello(firmware: FirmwareKind) -> f64 {
    let vm = start(&config(firmware, TransportKind::VirtioSerial)).await;
    let seconds = vm.startup_time().as_secs_f64();
    let _ = vm.shutdown(Duration::from_secs(20)).await;
    seconds
}

/// MiB/s to and from the guest for `mib` MiB, one run each way.
async fn throughput(vm: &mut BuilderVm, data: &[u8]) -> (f64, f64) {
    let mib = data.len() as f64 / (1024.0 * 1024.0);
    let started = Instant::now();
    vm.agent()
        .write_file("/mnt/bench", 0o600, data)
        .await
        .unwrap_or_else(|e| panic!("write failed: {e}"));
    let up = mib / started.elapsed().as_secs_f64();
    let started = Instant::now();
    vm.agent()
        .read_file("/mnt/bench", tokio::io::sink())
        .await
        .unwrap_or_else(|e| panic!("read failed: {e}"));
    let down = mib / started.elapsed().as_secs_f64();
    (up, down)
}

fn main() {
    let runs = env_number("NIXDISK_BENCH_RUNS", 3);
    let mib = env_number("NIXDISK_BENCH_MIB", 256);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        println!("builder VM benchmark: TCG, {runs} runs per case, medians");
        for (name, firmware) in [("SeaBIOS", FirmwareKind::Bios), ("OVMF", FirmwareKind::Uefi)] {
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(time_to_hello(firmware).await);
            }
            println!(
                "start to hello, {name:7}: {:6.2} s   (runs: {times:.2?})",
                median(times.clone())
            );
        }
        let data: Vec<u8> = (0..mib * 1024 * 1024)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect();
        for transport in [TransportKind::VirtioSerial, TransportKind::VhostUserVsock] {
            let mut vm = start(&config(FirmwareKind::Bios, transport)).await;
            let (mut ups, mut downs) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let (up, down) = throughput(&mut vm, &data).await;
                ups.push(up);
                downs.push(down);
            }
            println!(
                "{mib} MiB over {transport:17}: to the guest {:6.1} MiB/s, from the guest {:6.1} MiB/s   (to: {ups:.1?}, from: {downs:.1?})",
                median(ups.clone()),
                median(downs.clone())
            );
            let _ = vm.shutdown(Duration::from_secs(20)).await;
        }
    });
}

//! The `patchloop` binary: argument parsing and dispatch only; the logic lives
//! in the library.

mod cli;

// jemalloc rather than the C library's malloc: the controller holds every
// Inventory and Workload of its scope in caches that churn with each watch
// event, and glibc's per-thread arenas kept about a third more memory
// resident for the same live heap (BENCHMARKS.md: 124 vs 141-150 MiB peak
// at 2,000 Workloads).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}

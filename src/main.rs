// musl's allocator serializes threads on one lock; the static (musl) build of the container
// image would pay for it under concurrent reviews. mimalloc is the usual remedy.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    daemonset_webhook::cli::main()
}

fn main() -> std::process::ExitCode {
    daemonset_webhook::cli::main()
}

//! The binary's commands other than `serve`.

use super::*;

/// `daemonset-webhook ARGS` in the crate's root, with empty standard input, none of the
/// developer's environment that changes what it does (the binary's variables, `NO_COLOR`), and
/// killed after 120 s.
pub fn cli(args: &[&str]) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(BIN);
    command.current_dir(manifest_dir());
    for var in ENV_VARS {
        command.env_remove(var);
    }
    command
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "warn")
        .args(args)
        .write_stdin(Vec::new())
        .timeout(Duration::from_secs(120));
    command
}

/// What a command-line run printed, and its exit code.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// `None` when killed by a signal (or the timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as it was written.
    pub stdout_bytes: Vec<u8>,
}

impl CliOutput {
    /// stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `command` to completion.
pub fn run_cli(command: &mut assert_cmd::Command) -> CliOutput {
    let output = command.output().expect("running daemonset-webhook");
    CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_bytes: output.stdout,
    }
}

//! Reading the files the server is configured with and watches: the serving certificate, its
//! key, the client CA, the policy file. They are small regular files; anything else is refused
//! with a reason, never waited on or read without end. A FIFO is opened without blocking and
//! refused, a device (a symlink to `/dev/zero`) is refused, and a file over [`MAX_FILE_BYTES`]
//! is refused rather than read whole. (A read on a hung network mount can still block: the
//! reloads run these reads off the async workers, with a timeout.)

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// One file's contents, or why they could not be read.
pub type Contents = Result<Vec<u8>, String>;

/// The most a configuration file may hold: certificate chains and policy files are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads `path` whole: a regular file of at most [`MAX_FILE_BYTES`].
pub fn read(path: &Path) -> Contents {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    // Opening a FIFO for reading waits for a writer; non-blocking, it returns at once and is
    // then refused for what it is.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path).map_err(|e| e.to_string())?;
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err(format!(
            "not a regular file (a {}); only regular files are read",
            kind(&metadata.file_type())
        ));
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mut contents = Vec::with_capacity(metadata.len() as usize);
    // The size can change under us: read one byte past the cap to tell.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut contents)
        .map_err(|e| e.to_string())?;
    if contents.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok(contents)
}

fn too_big() -> String {
    format!("larger than {MAX_FILE_BYTES} bytes; a certificate or policy file is a few KiB")
}

fn kind(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        if file_type.is_fifo() {
            return "FIFO";
        }
        if file_type.is_char_device() {
            return "character device";
        }
        if file_type.is_block_device() {
            return "block device";
        }
        if file_type.is_socket() {
            return "socket";
        }
    }
    if file_type.is_dir() {
        "directory"
    } else {
        "special file"
    }
}

/// Reads each of `paths` whole, in order.
pub fn read_all(paths: &[PathBuf]) -> Vec<Contents> {
    paths.iter().map(|p| read(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, "{}\n").unwrap();
        assert_eq!(read(&file), Ok(b"{}\n".to_vec()));

        let err = read(dir.path()).unwrap_err();
        assert!(err.contains("not a regular file (a directory)"), "{err}");

        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = read(&zero).unwrap_err();
        assert!(err.contains("character device"), "{err}");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Returns at once, though no writer will ever come.
            let err = read(&fifo).unwrap_err();
            assert!(err.contains("FIFO"), "{err}");
        }

        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(read(&big).unwrap_err().contains("larger than"));

        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert!(missing.contains("No such file"), "{missing}");
    }
}

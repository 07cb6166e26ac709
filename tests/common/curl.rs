//! The real `curl`.

use super::*;

/// Which HTTP version curl is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurlHttp {
    /// `--http1.1`
    Http1,
    /// `--http2` (negotiated through ALPN)
    Http2,
}

/// One `curl` invocation against `https://HOST:PORT/PATH`, `HOST` resolving to 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Curl {
    host: String,
    port: u16,
    path: String,
    args: Vec<String>,
}

/// What curl did.
#[derive(Debug, Clone)]
pub struct CurlOutput {
    /// curl's exit code (0 on success; 35 for a failed handshake, 60 for an untrusted
    /// certificate).
    pub exit_code: Option<i32>,
    /// `%{http_code}`; 0 when there was no response.
    pub status: u16,
    /// `%{http_version}`: `1.1`, `2`.
    pub version: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "curl's response body is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&self.body),
                self.stderr
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Curl {
    pub fn new(port: u16, path: &str) -> Self {
        Curl {
            host: "localhost".to_owned(),
            port,
            path: path.to_owned(),
            args: Vec::new(),
        }
    }

    /// The host name in the URL (and so the name verified); resolved to 127.0.0.1.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub fn cacert(self, path: &Path) -> Self {
        self.arg("--cacert")
            .arg(path.to_str().expect("a UTF-8 path"))
    }

    pub fn http(self, version: CurlHttp) -> Self {
        match version {
            CurlHttp::Http1 => self.arg("--http1.1"),
            CurlHttp::Http2 => self.arg("--http2"),
        }
    }

    /// `--data-binary @path` with `Content-Type: application/json`.
    pub fn json_file(self, path: &Path) -> Self {
        self.header("Content-Type: application/json")
            .arg("--data-binary")
            .arg(&format!("@{}", path.to_str().expect("a UTF-8 path")))
    }

    pub fn header(self, header: &str) -> Self {
        self.arg("-H").arg(header)
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub fn run(&self) -> CurlOutput {
        let out_dir = tempfile::tempdir().expect("temporary directory");
        let body_path = out_dir.path().join("body");
        let url = format!("https://{}:{}{}", self.host, self.port, self.path);
        let mut command = Command::new("curl");
        command
            // -q first: ignore any ~/.curlrc.
            .arg("-q")
            .args(["-sS", "--max-time", "30", "--noproxy", "*"])
            .arg("--resolve")
            .arg(format!("{}:{}:127.0.0.1", self.host, self.port))
            .arg("-o")
            .arg(&body_path)
            .args(["-w", "%{http_version} %{http_code}"])
            .args(&self.args)
            .arg(&url);
        for var in [
            "CURL_CA_BUNDLE",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "CURL_HOME",
        ] {
            command.env_remove(var);
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .expect("running curl (is it installed?)");
        let written = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut fields = written.split_whitespace();
        let version = fields.next().unwrap_or("").to_owned();
        let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        CurlOutput {
            exit_code: output.status.code(),
            status,
            version,
            body: std::fs::read(&body_path).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

//! Metrics and plain HTTP.

use super::*;

/// One scrape of `/metrics`: every sample line by its series (name and labels as written).
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    samples: std::collections::BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("a metrics line without a value: {line}"));
                let value = value
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("{line}: value {value:?}: {e}"));
                (series.to_owned(), value)
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of one series, e.g. `daemonset_webhook_policy_reloads_total{result="error"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// The value of one series; panics, showing the scrape, when it is missing.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// Every series, in order.
    pub fn series(&self) -> impl Iterator<Item = (&str, f64)> {
        self.samples.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// `GET path` over plain HTTP/1.1 (the `--metrics-listen` port): status, content type, body.
pub async fn plain_get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    let (mut sender, connection) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let status = response.status();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a response body")
        .to_bytes();
    (
        status,
        content_type,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

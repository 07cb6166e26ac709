//! The Rust client: rustls + hyper's connection API, HTTP/1.1 or HTTP/2 as ALPN decides, from
//! a chosen source address; client certificates.

use super::*;

/// Which application protocols the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `http/1.1` only.
    Http1,
    /// `h2` only.
    Http2,
    /// `h2` and `http/1.1`: the server chooses.
    Both,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
            Alpn::Http2 => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// Builds a [`TlsClient`].
pub struct TlsClientBuilder {
    ca_path: PathBuf,
    addr: SocketAddr,
    server_name: String,
    alpn: Alpn,
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// PEM certificate chain and key to present (mutual TLS).
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsClientBuilder {
    /// Presents this PEM certificate chain and private key when the server asks for a client
    /// certificate (mutual TLS).
    pub fn client_identity(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Self {
        self.identity = Some((cert_pem.to_vec(), key_pem.to_vec()));
        self
    }

    /// The name to verify the certificate for (and send as SNI); `localhost` by default.
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = name.to_owned();
        self
    }

    pub fn alpn(mut self, alpn: Alpn) -> Self {
        self.alpn = alpn;
        self
    }

    /// The TLS versions to offer; 1.3 and 1.2 by default.
    pub fn versions(mut self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Self {
        self.versions = versions.to_vec();
        self
    }

    pub fn build(self) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca_path)
            .unwrap_or_else(|e| panic!("{}: {e}", self.ca_path.display()))
        {
            roots.add(cert.expect("a PEM certificate")).expect("a CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions)
            .expect("protocol versions")
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .expect("a PEM client certificate chain");
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                    .expect("a PEM client key");
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("a client certificate and its key")
            }
        };
        config.alpn_protocols = self.alpn.protocols();
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            addr: self.addr,
            server_name: ServerName::try_from(self.server_name).expect("a server name"),
            source: None,
        }
    }
}

/// An HTTPS client that verifies the server's certificate against one CA and one name.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
    /// The address to connect from; the system's choice when `None`.
    source: Option<IpAddr>,
}

/// Connects to `addr` from `source` (any loopback address is ours on Linux: 127.0.0.2 is a
/// second client as far as the server can tell).
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = if source.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

impl TlsClient {
    pub fn builder(ca_path: &Path, addr: SocketAddr) -> TlsClientBuilder {
        TlsClientBuilder {
            ca_path: ca_path.to_owned(),
            addr,
            server_name: "localhost".to_owned(),
            alpn: Alpn::Both,
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            identity: None,
        }
    }

    /// The same client, connecting from `source`.
    pub fn with_source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Opens one TCP connection (from the client's source address), nothing sent.
    pub async fn connect_tcp(&self) -> std::io::Result<TcpStream> {
        tcp_connect(self.addr, self.source).await
    }

    /// Opens one TLS connection and returns the stream, for tests that speak (or withhold)
    /// HTTP themselves.
    pub async fn connect_tls(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
        let tcp = tcp_connect(self.addr, self.source).await?;
        tcp.set_nodelay(true)?;
        self.connector.connect(self.server_name.clone(), tcp).await
    }

    /// The `host:port` the client sends in `Host` and `:authority`.
    pub fn authority(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(name) => format!("{}:{}", name.as_ref(), self.addr.port()),
            _ => self.addr.to_string(),
        }
    }

    /// Opens one TLS connection and starts HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
    pub async fn connect(&self) -> Result<Connection, std::io::Error> {
        let tcp = tcp_connect(self.addr, self.source).await?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let peer_certificate = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.clone().into_owned());
        let tls_version = session
            .protocol_version()
            .expect("a finished handshake has a version");
        let authority = match &self.server_name {
            ServerName::DnsName(name) => format!("{}:{}", name.as_ref(), self.addr.port()),
            _ => self.addr.to_string(),
        };
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::H2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            Sender::H1(sender)
        };
        Ok(Connection {
            sender,
            alpn,
            tls_version,
            peer_certificate,
            authority,
        })
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One HTTPS connection; requests on it reuse it (keep-alive or HTTP/2 streams).
pub struct Connection {
    sender: Sender,
    /// What ALPN chose.
    pub alpn: Option<Vec<u8>>,
    pub tls_version: rustls::ProtocolVersion,
    /// The certificate the server presented (the leaf, DER).
    pub peer_certificate: Option<CertificateDer<'static>>,
    authority: String,
}

/// An HTTP response, body read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Connection {
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// A clone that sends on the same connection (HTTP/2 only: streams are multiplexed).
    pub fn h2_handle(&self) -> Connection {
        match &self.sender {
            Sender::H2(sender) => Connection {
                sender: Sender::H2(sender.clone()),
                alpn: self.alpn.clone(),
                tls_version: self.tls_version,
                peer_certificate: self.peer_certificate.clone(),
                authority: self.authority.clone(),
            },
            Sender::H1(_) => panic!("an HTTP/1.1 connection cannot be shared"),
        }
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<Reply, hyper::Error> {
        let mut builder = Request::builder().method(method);
        builder = match &self.sender {
            // Origin form and a Host header for HTTP/1.1; HTTP/2 takes :scheme and :authority
            // from an absolute URI.
            Sender::H1(_) => builder
                .uri(path)
                .header(hyper::header::HOST, &self.authority),
            Sender::H2(_) => builder.uri(format!("https://{}{path}", self.authority)),
        };
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body.into()))
            .expect("a well-formed request");
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
            Sender::H2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await?
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request(Method::GET, path, None, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POSTs `body` as `application/json`.
    pub async fn post_json(&mut self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.request(Method::POST, path, Some("application/json"), body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }
}

/// A CA that signs client certificates (as a cluster's front-proxy or apiserver client CA does).
pub struct ClientCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    pub fn new(name: &str) -> ClientCa {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("a key");
        ClientCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("a client CA"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate (`clientAuth`) for `common_name` and its key, PEM.
    pub fn issue(&self, common_name: &str) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a client cert");
        (cert.pem(), key.serialize_pem())
    }
}

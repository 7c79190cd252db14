//! How a server accepts connections and how the gateway dials its stages: TLS and mutual TLS,
//! connection age (so that clients of a headless Service spread onto new pods) and HTTP/2
//! keepalive (so that a dead peer is noticed without a call timing out first).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The transport flags every server takes (flattened into its config).
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// PEM certificate chain to serve TLS with (needs --tls-key); unset = plaintext. The gateway
    /// also presents it to its stages when --tls-ca is set.
    #[arg(long, env = "TANDEM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TANDEM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mutual TLS); needs
    /// --tls-cert.
    #[arg(long, env = "TANDEM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds after which a connection is asked to go away (GOAWAY; calls in flight get
    /// --max-connection-age-grace-s more), so clients reconnect and spread onto new pods;
    /// 0 = never.
    #[arg(long, env = "TANDEM_MAX_CONNECTION_AGE_S", default_value_t = 300)]
    pub max_connection_age_s: u64,
    #[arg(long, env = "TANDEM_MAX_CONNECTION_AGE_GRACE_S", default_value_t = 30)]
    pub max_connection_age_grace_s: u64,
    /// Seconds between HTTP/2 PINGs on an idle connection (a peer that does not answer within
    /// the same time is dropped); 0 = off.
    #[arg(long, env = "TANDEM_KEEPALIVE_S", default_value_t = 30)]
    pub keepalive_s: u64,
    /// A second, plaintext listener that serves only `grpc.health.v1`: for the kubelet's gRPC
    /// probes, which cannot speak TLS. Unset = none.
    #[arg(long, env = "TANDEM_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
}

impl Default for TransportArgs {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_connection_age_s: 300,
            max_connection_age_grace_s: 30,
            keepalive_s: 30,
            health_listen: None,
        }
    }
}

/// What [`TransportArgs`] validated to: files read, certificates ready.
#[derive(Debug, Clone, Default)]
pub struct ServerTransport {
    pub(crate) tls: Option<ServerTlsConfig>,
    pub(crate) max_connection_age: Option<Duration>,
    pub(crate) max_connection_age_grace: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) health_listen: Option<SocketAddr>,
    /// The certificate and key, for the gateway's stage clients.
    identity: Option<Identity>,
}

fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("{flag} {}: not a PEM file", path.display()));
    }
    Ok(pem)
}

impl TransportArgs {
    /// Reads the certificate files; an unreadable or non-PEM file is named in the error.
    pub fn load(&self) -> Result<ServerTransport, String> {
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read_pem("--tls-cert", cert)?,
                read_pem("--tls-key", key)?,
            )),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let tls = match (&identity, &self.tls_client_ca) {
            (Some(identity), client_ca) => {
                let mut tls = ServerTlsConfig::new().identity(identity.clone());
                if let Some(ca) = client_ca {
                    tls =
                        tls.client_ca_root(Certificate::from_pem(read_pem("--tls-client-ca", ca)?));
                }
                Some(tls)
            }
            (None, Some(_)) => return Err("--tls-client-ca needs --tls-cert and --tls-key".into()),
            (None, None) => None,
        };
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Ok(ServerTransport {
            tls,
            max_connection_age: seconds(self.max_connection_age_s),
            max_connection_age_grace: Duration::from_secs(self.max_connection_age_grace_s),
            keepalive: seconds(self.keepalive_s),
            health_listen: self.health_listen,
            identity,
        })
    }
}

impl ServerTransport {
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The builder with these settings applied.
    pub(crate) fn apply(
        &self,
        builder: tonic::transport::Server,
    ) -> Result<tonic::transport::Server, tonic::transport::Error> {
        let mut builder = builder
            .http2_keepalive_interval(self.keepalive)
            .http2_keepalive_timeout(self.keepalive);
        if let Some(age) = self.max_connection_age {
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(self.max_connection_age_grace);
        }
        match &self.tls {
            Some(tls) => builder.tls_config(tls.clone()),
            None => Ok(builder),
        }
    }

    /// TLS for calls to other tandem servers: their certificates must chain to `ca` (PEM
    /// file); this server's own certificate, if any, is presented for mutual TLS. `server_name`
    /// overrides the name checked against their certificates (default: the address's host).
    pub fn client_tls(
        &self,
        ca: &Path,
        server_name: Option<&str>,
    ) -> Result<ClientTlsConfig, String> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?));
        if let Some(identity) = &self.identity {
            tls = tls.identity(identity.clone());
        }
        if let Some(name) = server_name {
            tls = tls.domain_name(name);
        }
        Ok(tls)
    }

    /// The keepalive interval, for clients dialled with the same settings.
    pub fn keepalive(&self) -> Option<Duration> {
        self.keepalive
    }
}

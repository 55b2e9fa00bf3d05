//! The bridge's connection to the controller: one mutual-TLS channel authenticated as the
//! bridge principal, kept fresh by renewing the certificate at ~70% of its lifetime, and
//! requests stamped with the MCP client they are made for.

use std::path::PathBuf;
use std::time::Duration;

use tailops_proto::v1::{
    self, audit_client::AuditClient, fleet_client::FleetClient, identity_client::IdentityClient,
    monitoring_client::MonitoringClient,
};
use tailopsctl::Profile;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

/// How often the renewal loop looks at the certificate. Bridge certificates live for days, so
/// an hourly look renews well before they expire.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);
/// Longest client attribution sent; the controller truncates anything longer anyway.
const MAX_CLIENT_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Profile(#[from] tailopsctl::ProfileError),
    #[error(transparent)]
    Client(#[from] tailopsctl::ClientError),
    #[error(
        "the controller refused the bridge's profile: {}; is the bridge enabled \
         (`tailopsctl bridges ls`) and its certificate current?",
        .0.message()
    )]
    Refused(tonic::Status),
}

/// Who the bridge is, as the controller sees it.
#[derive(Debug, Clone)]
pub struct BridgeIdentity {
    pub id: String,
    pub role: String,
    pub scope: Option<v1::HostSelector>,
}

/// Handle to the controller; cheap to clone. Every request goes through [`Controller::request`]
/// so it carries the MCP client's name for the audit log.
#[derive(Debug, Clone)]
pub struct Controller {
    channel: watch::Receiver<Channel>,
}

/// The MCP client a request is made for (`name/version` from its `initialize`).
#[derive(Debug, Clone, Default)]
pub struct ClientTag(Option<AsciiMetadataValue>);

impl ClientTag {
    pub fn new(name: &str, version: &str) -> Self {
        let mut tag: String = format!("{name}/{version}")
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .collect();
        tag.truncate(MAX_CLIENT_LEN);
        Self(AsciiMetadataValue::try_from(tag).ok())
    }
}

impl Controller {
    /// Loads the profile, connects, learns who the bridge is, and keeps the certificate renewed
    /// until `shutdown`. Fails when the controller is unreachable or refuses the profile: better
    /// at start than on an assistant's first call.
    pub async fn connect(
        profile_path: PathBuf,
        shutdown: CancellationToken,
    ) -> Result<(Self, BridgeIdentity), ConnectError> {
        let profile = Profile::load(&profile_path).await?;
        let channel = tailopsctl::connect(&profile).await?;
        let me = IdentityClient::new(channel.clone())
            .who_am_i(v1::WhoAmIRequest {})
            .await
            .map_err(ConnectError::Refused)?
            .into_inner();
        let (sender, receiver) = watch::channel(channel);
        tokio::spawn(renew_forever(sender, profile, profile_path, shutdown));
        Ok((Self { channel: receiver }, BridgeIdentity { id: me.id, role: me.role, scope: me.scope }))
    }

    fn channel(&self) -> Channel {
        self.channel.borrow().clone()
    }

    pub fn fleet(&self) -> FleetClient<Channel> {
        FleetClient::new(self.channel())
    }

    pub fn monitoring(&self) -> MonitoringClient<Channel> {
        MonitoringClient::new(self.channel())
    }

    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel())
    }

    /// A request stamped with the client it is made for.
    pub fn request<T>(message: T, client: &ClientTag) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(tag) = &client.0 {
            request.metadata_mut().insert(tailops_proto::CLIENT_HEADER, tag.clone());
        }
        request
    }
}

/// Renews the certificate when due and swaps in a channel that presents the new one. A failed
/// renewal is retried at the next check; the old certificate keeps working until it expires.
async fn renew_forever(
    sender: watch::Sender<Channel>,
    mut profile: Profile,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    loop {
        let current = sender.borrow().clone();
        match tailopsctl::renew::renew_if_due(current, &mut profile, &path).await {
            Ok(false) => {}
            Ok(true) => match tailopsctl::client::endpoint(&profile) {
                Ok(endpoint) => {
                    tracing::info!("bridge certificate renewed");
                    sender.send_replace(endpoint.connect_lazy());
                }
                Err(e) => tracing::error!(error = %e, "renewed certificate is unusable"),
            },
            Err(e) => tracing::warn!(error = %e, "certificate renewal failed; retrying later"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RENEWAL_CHECK) => {}
        }
    }
}

//! The one Docker Engine API call the CLI cannot express: creating a container from another
//! container's complete configuration (`container.update` recreates a container exactly as it
//! was, on a newer image). Spoken over the engine's Unix socket with hyper's HTTP/1 client.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::OpError;

/// The create request for a container configured like `inspected` (a `docker inspect` object)
/// but running `image`.
pub fn create_body(inspected: &Value, image: &str) -> Value {
    let mut config = inspected.get("Config").cloned().unwrap_or_else(|| json!({}));
    config["Image"] = Value::String(image.to_owned());
    let endpoints: serde_json::Map<String, Value> = inspected
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|networks| {
            networks
                .iter()
                .map(|(name, endpoint)| {
                    // Only what the user configured: addresses and ids are assigned anew.
                    let aliases = endpoint.get("Aliases").cloned().unwrap_or(Value::Null);
                    let ipam = endpoint.get("IPAMConfig").cloned().unwrap_or(Value::Null);
                    let links = endpoint.get("Links").cloned().unwrap_or(Value::Null);
                    (name.clone(), json!({"Aliases": aliases, "IPAMConfig": ipam, "Links": links}))
                })
                .collect()
        })
        .unwrap_or_default();
    if let Value::Object(body) = &mut config {
        body.insert("HostConfig".into(), inspected.get("HostConfig").cloned().unwrap_or_else(|| json!({})));
        body.insert("NetworkingConfig".into(), json!({"EndpointsConfig": endpoints}));
    }
    config
}

/// `POST /containers/create?name=NAME` with `body`; returns the new container's id.
pub async fn create(socket: &Path, name: &str, body: &Value) -> Result<String, OpError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| OpError::Failed(format!("Docker API {what}: {e}"));
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        OpError::Failed(format!("cannot reach the Docker Engine at {}: {e}", socket.display()))
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail("handshake", &e))?;
    let driver = tokio::spawn(connection);
    // `name` passed the container-name check: letters, digits, `_`, `.`, `-` need no escaping.
    let request = http::Request::post(format!("/containers/create?name={name}"))
        .header(http::header::HOST, "docker")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| fail("request", &e))?;
    let response = sender.send_request(request).await.map_err(|e| fail("create", &e))?;
    let status = response.status();
    let bytes = response.into_body().collect().await.map_err(|e| fail("response", &e))?.to_bytes();
    driver.abort();
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer.get("message").and_then(Value::as_str).unwrap_or("no message");
        return Err(OpError::Failed(format!("creating {name}: {message} (HTTP {status})")));
    }
    answer
        .get("Id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| OpError::Failed(format!("creating {name}: the engine returned no id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_container_keeps_config_host_config_and_networks() {
        let inspected = json!({
            "Config": {"Image": "app:1", "Env": ["A=1"], "Labels": {"x": "y"}, "Cmd": ["serve"]},
            "HostConfig": {"RestartPolicy": {"Name": "always"}, "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}},
            "NetworkSettings": {"Networks": {"back": {"Aliases": ["app"], "IPAddress": "172.18.0.5", "NetworkID": "n1"}}}
        });
        let body = create_body(&inspected, "app:2");
        assert_eq!(body["Image"], "app:2");
        assert_eq!(body["Env"], json!(["A=1"]));
        assert_eq!(body["HostConfig"]["RestartPolicy"]["Name"], "always");
        assert_eq!(body["NetworkingConfig"]["EndpointsConfig"]["back"]["Aliases"], json!(["app"]));
        assert!(body["NetworkingConfig"]["EndpointsConfig"]["back"].get("IPAddress").is_none());
    }
}

//! How imgstream authenticates to Kafka: the settings users of Kafka clients expect
//! (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_*`), and any other librdkafka property
//! from a client properties file (`KAFKA_CLIENT_PROPERTIES`, as Kafka's own tools take with
//! `--command-config`). The producer, consumer, admin and dead-letter writer all get them.

use super::{ConfigError, invalid};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// The environment variables and the librdkafka property each one sets.
const FROM_ENV: [(&str, &str); 9] = [
    ("KAFKA_SECURITY_PROTOCOL", "security.protocol"),
    ("KAFKA_SASL_MECHANISM", "sasl.mechanism"),
    ("KAFKA_SASL_USERNAME", "sasl.username"),
    ("KAFKA_SASL_PASSWORD", "sasl.password"),
    ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
    ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
    ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    ("KAFKA_SSL_KEY_PASSWORD", "ssl.key.password"),
    (
        "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
        "ssl.endpoint.identification.algorithm",
    ),
];

/// librdkafka properties for every Kafka client; values of secret ones never show in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(Vec<(String, String)>);

impl ClientProperties {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn set(&mut self, key: &str, value: &str) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.to_string()));
    }
}

/// Whether a property holds a secret (a password, a key, a token).
pub fn is_secret(key: &str) -> bool {
    ["password", "secret", "token", "key.pem"]
        .iter()
        .any(|s| key.contains(s))
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (k, v) in self.iter() {
            if is_secret(k) {
                map.entry(&k, &"<redacted>");
            } else {
                map.entry(&k, &v);
            }
        }
        map.finish()
    }
}

/// The properties file first, then the environment, which wins; then checks that what is asked
/// for is complete.
pub fn client_properties(vars: &HashMap<String, String>) -> Result<ClientProperties, ConfigError> {
    let mut props = ClientProperties::default();
    if let Some(path) = vars
        .get("KAFKA_CLIENT_PROPERTIES")
        .filter(|p| !p.trim().is_empty())
    {
        for (k, v) in read_properties_file(Path::new(path.trim()))? {
            props.set(&k, &v);
        }
    }
    for (var, key) in FROM_ENV {
        if let Some(value) = vars.get(var).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            props.set(key, value);
        }
    }
    check(&props)?;
    Ok(props)
}

fn check(props: &ClientProperties) -> Result<(), ConfigError> {
    let protocol = props
        .get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
        return Err(invalid(
            "KAFKA_SECURITY_PROTOCOL",
            format!("{protocol:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
        ));
    }
    if protocol.starts_with("sasl") {
        let mechanism = props
            .get("sasl.mechanism")
            .unwrap_or("GSSAPI")
            .to_ascii_uppercase();
        match mechanism.as_str() {
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
                for (var, key) in [
                    ("KAFKA_SASL_USERNAME", "sasl.username"),
                    ("KAFKA_SASL_PASSWORD", "sasl.password"),
                ] {
                    if props.get(key).is_none() {
                        return Err(invalid(
                            var,
                            format!(
                                "SASL {mechanism} needs it (or {key} in KAFKA_CLIENT_PROPERTIES)"
                            ),
                        ));
                    }
                }
            }
            "OAUTHBEARER" => {}
            other => {
                return Err(invalid(
                    "KAFKA_SASL_MECHANISM",
                    format!("{other:?} is not PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"),
                ));
            }
        }
    }
    for (var, key) in [
        ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
        ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
        ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
    ] {
        if let Some(path) = props.get(key)
            && !Path::new(path).is_file()
        {
            return Err(invalid(var, format!("{path} is not a readable file")));
        }
    }
    Ok(())
}

/// `key=value` lines (also `key: value`); `#` and `!` start comments, as in Java properties.
fn read_properties_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    const VAR: &str = "KAFKA_CLIENT_PROPERTIES";
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(VAR, format!("cannot read {}: {e}", path.display())))?;
    let mut props = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some((k, v)) = line.split_once(['=', ':']) else {
            return Err(invalid(
                VAR,
                format!("{} line {}: expected key=value", path.display(), n + 1),
            ));
        };
        props.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::vars;

    #[test]
    fn nothing_set_means_plaintext_with_no_extra_properties() {
        assert_eq!(
            client_properties(&vars(&[])).unwrap(),
            ClientProperties::default()
        );
    }

    #[test]
    fn sasl_scram_over_tls_from_the_environment() {
        let props = client_properties(&vars(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "app"),
            ("KAFKA_SASL_PASSWORD", "s3cret"),
        ]))
        .unwrap();
        assert_eq!(props.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(props.get("sasl.password"), Some("s3cret"));
        let shown = format!("{props:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn a_properties_file_passes_any_librdkafka_setting_and_the_environment_wins() {
        let path = std::env::temp_dir().join(format!("imgstream-props-{}", std::process::id()));
        std::fs::write(
            &path,
            "# comment\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n\
             sasl.username=from-file\nsasl.password=p\nsocket.keepalive.enable = true\n",
        )
        .unwrap();
        let props = client_properties(&vars(&[
            ("KAFKA_CLIENT_PROPERTIES", path.to_str().unwrap()),
            ("KAFKA_SASL_USERNAME", "from-env"),
        ]))
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(props.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(props.get("sasl.username"), Some("from-env"));
    }

    #[test]
    fn incomplete_or_unknown_security_settings_are_named_by_their_variable() {
        let err = client_properties(&vars(&[("KAFKA_SECURITY_PROTOCOL", "tls")])).unwrap_err();
        assert_eq!(err.var, "KAFKA_SECURITY_PROTOCOL");
        let err = client_properties(&vars(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "PLAIN"),
            ("KAFKA_SASL_USERNAME", "app"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "KAFKA_SASL_PASSWORD");
        assert!(!err.to_string().contains("app"), "{err}");
        let err =
            client_properties(&vars(&[("KAFKA_SSL_CA_LOCATION", "/no/such/ca.pem")])).unwrap_err();
        assert_eq!(err.var, "KAFKA_SSL_CA_LOCATION");
    }
}

//! Credentials, region and endpoint, found the standard AWS ways, in the AWS CLI's order: the
//! environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_REGION or
//! AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL), then the shared files' profile
//! (AWS_PROFILE, else `default`) in AWS_SHARED_CREDENTIALS_FILE (~/.aws/credentials) and
//! AWS_CONFIG_FILE (~/.aws/config). object_store reads only environment variables, never the shared
//! files, so this small reader fills the gap for static keys, which is what S3-compatible stores use.
//! SSO, assumed roles, credential_process and instance metadata are not supported: with no key found
//! the upload stops and says so, and never asks the cloud metadata address.
//!
//! A secret is kept in [`Secret`], which has no Debug or Display: no message, log or panic can show it.
//! Errors about the files name the file and line, never the line's text.

use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A value that must never be printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// What was found, and where, for messages.
#[derive(Clone)]
pub struct Settings {
    pub credentials: Credentials,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// "the environment" or "profile garage in /root/.aws/credentials".
    pub credentials_from: String,
}

/// Finds the settings; `env` reads one environment variable (std::env::var in use, a map in tests).
pub fn resolve(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, name: &str| {
        env(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
    };
    let profile_name = env("AWS_PROFILE");
    let name = profile_name.clone().unwrap_or_else(|| "default".to_string());
    let credentials_file = file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config_file = file("AWS_CONFIG_FILE", "config");
    // The credentials file names a profile [NAME]; the config file [profile NAME], or [default].
    let config_section = if name == "default" { name.clone() } else { format!("profile {name}") };
    let from_credentials = read_section(credentials_file.as_deref(), &name)?;
    let from_config = read_section(config_file.as_deref(), &config_section)?;
    if profile_name.is_some() && from_credentials.is_none() && from_config.is_none() {
        bail!(
            "AWS_PROFILE names profile {name:?}, but neither {} nor {} has it",
            display(credentials_file.as_deref()),
            display(config_file.as_deref())
        );
    }
    let profile = |key: &str| {
        from_credentials
            .as_ref()
            .and_then(|s| s.get(key))
            .or_else(|| from_config.as_ref().and_then(|s| s.get(key)))
            .cloned()
    };

    let credentials = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret)) => Credentials {
            access_key_id,
            secret_access_key: Secret(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Secret),
        },
        (Some(_), None) | (None, Some(_)) => {
            bail!(
                "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY is set: set both, or neither to use a profile"
            )
        }
        (None, None) => match (profile("aws_access_key_id"), profile("aws_secret_access_key")) {
            (Some(access_key_id), Some(secret)) => Credentials {
                access_key_id,
                secret_access_key: Secret(secret),
                session_token: profile("aws_session_token").map(Secret),
            },
            _ => bail!(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give profile {name:?} \
                 aws_access_key_id and aws_secret_access_key in {} (choose the profile with AWS_PROFILE)",
                display(credentials_file.as_deref())
            ),
        },
    };
    let credentials_from = if env("AWS_ACCESS_KEY_ID").is_some() {
        "the environment".to_string()
    } else if from_credentials.as_ref().is_some_and(|s| s.contains_key("aws_access_key_id")) {
        format!("profile {name} in {}", display(credentials_file.as_deref()))
    } else {
        format!("profile {name} in {}", display(config_file.as_deref()))
    };
    Ok(Settings {
        credentials,
        region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")).or_else(|| profile("region")),
        endpoint: env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")).or_else(|| profile("endpoint_url")),
        credentials_from,
    })
}

fn display(path: Option<&Path>) -> String {
    path.map_or("~/.aws/* (HOME is not set)".to_string(), |p| p.display().to_string())
}

/// One section of an INI file (keys lowercased), or None when the file or the section is missing.
fn read_section(path: Option<&Path>, section: &str) -> Result<Option<BTreeMap<String, String>>> {
    let Some(path) = path else { return Ok(None) };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    };
    let origin = path.display().to_string();
    Ok(parse_ini(&text, &origin)?.remove(section))
}

/// section → key → value. Indented lines (the config file's nested `s3 =` settings) and comments
/// are skipped; any other line that is neither `[section]` nor `key = value` is an error naming the
/// line's number only (it may hold a secret).
fn parse_ini(text: &str, origin: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') || raw.starts_with([' ', '\t']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let (Some((key, value)), Some(section)) = (line.split_once('='), current.as_ref()) else {
            bail!("{origin}:{}: not `[section]` or `key = value` inside a section", index + 1);
        };
        sections.entry(section.clone()).or_default().insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_with(vars: &[(&str, String)]) -> Result<Settings> {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        resolve(&|name| vars.get(name).cloned())
    }

    #[test]
    fn environment_then_profile_and_no_secret_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(&credentials, "[default]\naws_access_key_id = AKD\naws_secret_access_key = SD\n[garage]\naws_access_key_id=AKG\naws_secret_access_key=SG\n").unwrap();
        std::fs::write(&config, "[default]\nregion = r1\n[profile garage]\nregion = garage\nendpoint_url = http://127.0.0.1:1\ns3 =\n  max_concurrent_requests = 4\n").unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", credentials.display().to_string()),
            ("AWS_CONFIG_FILE", config.display().to_string()),
        ];
        let s = resolve_with(&files).unwrap();
        assert_eq!((s.credentials.access_key_id.as_str(), s.region.as_deref()), ("AKD", Some("r1")));
        let mut with_profile = files.to_vec();
        with_profile.push(("AWS_PROFILE", "garage".into()));
        let s = resolve_with(&with_profile).unwrap();
        assert_eq!(s.credentials.secret_access_key.expose(), "SG");
        assert_eq!((s.region.as_deref(), s.endpoint.as_deref()), (Some("garage"), Some("http://127.0.0.1:1")));
        assert!(s.credentials_from.starts_with("profile garage in "), "{}", s.credentials_from);
        let mut from_env = with_profile.clone();
        from_env.extend([("AWS_ACCESS_KEY_ID", "AKE".into()), ("AWS_SECRET_ACCESS_KEY", "SE".into())]);
        from_env.push(("AWS_REGION", "r2".into()));
        let s = resolve_with(&from_env).unwrap();
        assert_eq!((s.credentials.access_key_id.as_str(), s.region.as_deref()), ("AKE", Some("r2")));
        assert_eq!(s.credentials_from, "the environment");

        let mut missing = files.to_vec();
        missing.push(("AWS_PROFILE", "nope".into()));
        assert!(format!("{:#}", resolve_with(&missing).err().unwrap()).contains("\"nope\""));
        std::fs::write(&credentials, "[default]\naws_secret_access_key SECRETVALUE\n").unwrap();
        let err = format!("{:#}", resolve_with(&files).err().unwrap());
        assert!(err.contains("credentials:2:") && !err.contains("SECRETVALUE"), "{err}");
        let none = resolve_with(&[("HOME", dir.path().join("empty").display().to_string())]);
        assert!(format!("{:#}", none.err().unwrap()).contains("no credentials"));
    }
}

//! Keeping Svix in step with the channels (`delivery.provider = "svix"`):
//! one Svix application per namespace (uid = namespace), one endpoint per
//! live channel (uid = channel id) with its URL, signing secret, headers,
//! disabled flag and rate limit.
//!
//! Both front doors call [`after_change`] once a channel change has
//! committed. The change is ours to keep whatever Svix says: when Svix is
//! unreachable (or refuses), the change stays committed, the door shows a
//! warning naming the channel, and `svix sync` (or the next change of the
//! channel) repairs the drift. [`sync`] compares every channel with its
//! endpoint and repairs (or, dry run, only lists) what differs: an
//! endpoint missing, changed behind our back, or left over from a deleted
//! channel.

use uuid::Uuid;

use crate::config::Config;
use crate::db::channels::{self, Channel};
use crate::delivery::svix::{self, Client, EndpointSpec, SvixError};
use crate::ops::OpsError;

/// One endpoint's drift, found (and repaired unless a dry run).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drift {
    /// The namespace (Svix application uid).
    pub namespace: String,
    /// The channel id (endpoint uid).
    pub channel_id: String,
    /// `create` (missing in Svix), `update` (differs), `delete` (left over
    /// from a deleted channel).
    pub action: &'static str,
    /// The fields that differ, for `update`.
    pub fields: Vec<&'static str>,
    /// Repaired (false in a dry run, or when the repair failed).
    pub repaired: bool,
    /// Why the repair failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `svix sync` found and did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SyncReport {
    /// Only listed, nothing changed.
    pub dry_run: bool,
    /// Namespaces looked at.
    pub namespaces: usize,
    /// Live channels looked at.
    pub channels: usize,
    /// Endpoints already in step.
    pub in_step: usize,
    /// What differed.
    pub drift: Vec<Drift>,
    /// Namespaces that could not be looked at (not a valid Svix uid, or
    /// Svix failed), with the reason.
    pub errors: Vec<String>,
}

/// A Svix client for the command line and the API (`None` with the http
/// provider).
pub fn client(config: &Config) -> Option<Client> {
    config
        .svix
        .as_ref()
        .map(|s| Client::new(s, &config.delivery, 2))
}

/// The endpoint channel `c` should have (secrets opened by `db`).
pub fn want(c: &Channel) -> EndpointSpec {
    let headers: Vec<(String, String)> = c
        .headers
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    svix::spec(
        c.id,
        &c.url,
        c.signing_secret.as_deref().unwrap_or_default(),
        &headers,
        c.disabled,
        c.rate_limit.map(|r| (r.count, r.window())),
    )
}

/// Makes channel `id`'s endpoint what the database says (deleted: no
/// endpoint). What differed, `None` when it was in step.
pub fn sync_channel(
    db: &mut impl postgres::GenericClient,
    svix: &Client,
    id: Uuid,
    dry_run: bool,
) -> Result<Option<Drift>, OpsError> {
    let Some(namespace) = channels::namespace_of(db, id)? else {
        return Err(OpsError::NotFound(format!("no channel {id}")));
    };
    let live = channels::get(db, id, true)?;
    let uid = id.to_string();
    let drift = |action, fields| Drift {
        namespace: namespace.clone(),
        channel_id: uid.clone(),
        action,
        fields,
        repaired: false,
        error: None,
    };
    check_namespace(&namespace)?;
    let actual = svix.endpoint(&namespace, &uid).map_err(svix_failed)?;
    let (mut found, repair): (Drift, Box<dyn Fn() -> Result<(), SvixError>>) = match (live, actual)
    {
        (None, None) => return Ok(None),
        (None, Some(_)) => (
            drift("delete", Vec::new()),
            Box::new(|| svix.delete_endpoint(&namespace, &uid)),
        ),
        (Some(c), actual) => {
            let want = want(&c);
            let (action, fields) = match &actual {
                None => ("create", Vec::new()),
                Some(a) => ("update", want.differences(a)),
            };
            if action == "update" && fields.is_empty() {
                return Ok(None);
            }
            let (name, ns) = (c.name.clone(), namespace.clone());
            (
                drift(action, fields),
                Box::new(move || svix.put_endpoint(&ns, &name, &want, actual.as_ref())),
            )
        }
    };
    if !dry_run {
        match repair() {
            Ok(()) => found.repaired = true,
            Err(e) => found.error = Some(e.to_string()),
        }
    }
    Ok(Some(found))
}

/// Keeps Svix in step after a committed change of channel `id`; a warning
/// for the operator when Svix could not be told (the change stays; `svix
/// sync` repairs it). Nothing with the http provider.
pub fn after_change(
    config: &Config,
    db: &mut impl postgres::GenericClient,
    id: Uuid,
) -> Option<String> {
    let svix = client(config)?;
    let warn = |why: String| {
        let text = format!(
            "channel {id}: the change is saved but Svix was not updated ({why}); run `svix sync` once Svix answers"
        );
        log::warn!("{text}");
        Some(text)
    };
    match sync_channel(db, &svix, id, false) {
        Ok(Some(Drift { error: Some(e), .. })) => warn(e),
        Ok(_) => None,
        Err(e) => warn(e.to_string()),
    }
}

/// Compares every channel with its Svix endpoint and repairs what differs
/// (only lists it with `dry_run`).
pub fn sync(
    db: &mut impl postgres::GenericClient,
    svix: &Client,
    dry_run: bool,
) -> Result<SyncReport, OpsError> {
    let mut report = SyncReport {
        dry_run,
        namespaces: 0,
        channels: 0,
        in_step: 0,
        drift: Vec::new(),
        errors: Vec::new(),
    };
    for namespace in channels::namespaces(db)? {
        report.namespaces += 1;
        if let Err(e) = check_namespace(&namespace) {
            report.errors.push(format!("namespace {namespace:?}: {e}"));
            continue;
        }
        let live = channels::list(db, Some(&namespace), false)?;
        let mut ids: Vec<Uuid> = live.iter().map(|c| c.id).collect();
        let in_svix = match svix.endpoint_uids(&namespace) {
            Ok(uids) => uids,
            Err(e) => {
                report.errors.push(format!("namespace {namespace:?}: {e}"));
                continue;
            }
        };
        // Endpoints of deleted channels (ours: the uid is a channel id of
        // this namespace); others are left alone.
        for uid in &in_svix {
            if let Ok(id) = uid.parse::<Uuid>() {
                if !ids.contains(&id)
                    && channels::namespace_of(db, id)?.as_deref() == Some(&*namespace)
                {
                    ids.push(id);
                }
            }
        }
        report.channels += live.len();
        for id in ids {
            match sync_channel(db, svix, id, dry_run) {
                Ok(None) => report.in_step += 1,
                Ok(Some(d)) => report.drift.push(d),
                Err(e) => report.errors.push(format!("channel {id}: {e}")),
            }
        }
    }
    Ok(report)
}

/// A namespace must be a valid Svix uid to be an application.
fn check_namespace(namespace: &str) -> Result<(), OpsError> {
    if svix::is_svix_uid(namespace) {
        Ok(())
    } else {
        Err(OpsError::Conflict(format!(
            "namespace {namespace:?} cannot be a Svix application uid (1 to 256 of a-z A-Z 0-9 - _ .)"
        )))
    }
}

fn svix_failed(e: SvixError) -> OpsError {
    OpsError::Conflict(e.to_string())
}

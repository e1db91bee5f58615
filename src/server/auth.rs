//! Who the caller is (TokenReview of the bearer token) and what they may do
//! (SubjectAccessReview against the RBAC that guards WorkflowRuns). Answers are cached for a
//! few seconds so that a thousand streams opening at once cost a handful of reviews.

use super::error::ApiError;
use axum::http::{HeaderMap, header};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, UserInfo},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a review's answer is reused.
const TTL: Duration = Duration::from_secs(10);
/// Entries kept at most per cache (it is cleared when full).
const MAX_ENTRIES: usize = 10_000;

/// How callers are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Bearer tokens checked with TokenReview, access with SubjectAccessReview.
    Kubernetes,
    /// No checks at all: for local development only.
    None,
}

/// The caller, as the API server knows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Caller {
    pub user: UserInfo,
}

impl Caller {
    pub fn name(&self) -> &str {
        self.user.username.as_deref().unwrap_or("anonymous")
    }
}

/// An action on WorkflowRuns in a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Patch,
    /// Deleting runs (one or several through the API).
    Delete,
    /// Creating runs (the trigger, retry and re-run routes).
    Create,
    /// The custom verb that decides approval stages.
    Approve,
    /// `get` on WorkflowSchedules.
    GetSchedule,
    /// `list` on WorkflowSchedules.
    ListSchedules,
    /// `patch` on WorkflowSchedules (suspend, resume).
    PatchSchedule,
    /// `list` on Workflows.
    ListWorkflows,
    /// `list` on BrokerConnectors.
    ListConnectors,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Create => "create",
            Verb::Approve => "approve",
            Verb::GetSchedule => "get",
            Verb::ListSchedules | Verb::ListWorkflows | Verb::ListConnectors => "list",
            Verb::PatchSchedule => "patch",
        }
    }

    /// The resource the verb is on: `workflowruns`, `workflowschedules`, `workflows` or
    /// `brokerconnectors`.
    fn resource(self) -> &'static str {
        match self {
            Verb::GetSchedule | Verb::ListSchedules | Verb::PatchSchedule => "workflowschedules",
            Verb::ListWorkflows => "workflows",
            Verb::ListConnectors => "brokerconnectors",
            _ => "workflowruns",
        }
    }
}

struct Cache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap();
        entries
            .get(k)
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, k: K, v: V) {
        let mut entries = self.entries.lock().unwrap();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(k, (Instant::now(), v));
    }
}

type AccessKey = (String, Vec<String>, String, Verb, Option<String>);

/// Authentication and authorization of API calls.
pub struct Auth {
    mode: AuthMode,
    client: Client,
    tokens: Cache<String, Option<UserInfo>>,
    access: Cache<AccessKey, (bool, String)>,
}

impl Auth {
    pub fn new(mode: AuthMode, client: Client) -> Auth {
        Auth {
            mode,
            client,
            tokens: Cache::new(),
            access: Cache::new(),
        }
    }

    /// Whether callers are checked at all (`--auth=kubernetes`).
    pub fn checks(&self) -> bool {
        self.mode != AuthMode::None
    }

    /// Checks that the caller of `headers` (bearer token, else the sign-in cookie) may `verb`
    /// in `namespace` (the object `name`, when one is named; `""`: all namespaces): 401
    /// without a valid token, 403 without the RBAC.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        namespace: &str,
        verb: Verb,
        name: Option<&str>,
    ) -> Result<Caller, ApiError> {
        let caller = self.caller(headers).await?;
        match self.denial(&caller, namespace, verb, name).await? {
            None => Ok(caller),
            Some(msg) => Err(ApiError::forbidden(msg)),
        }
    }

    /// Who sends `headers` (bearer token, else the sign-in cookie): 401 without a valid token.
    /// With `--auth=none`, "anonymous".
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(Caller::default());
        }
        let (token, source) = super::session::token(headers).ok_or_else(|| {
            ApiError::unauthorized(
                "a bearer token is required (Authorization: Bearer TOKEN), or sign in \
                 (POST /api/v1/session)",
            )
        })?;
        let user = self.review(token).await?.ok_or_else(|| {
            ApiError::unauthorized(match source {
                super::session::Source::Bearer => "the bearer token is not valid",
                super::session::Source::Cookie => {
                    "the token of the sign-in cookie is not valid (any more): sign in again"
                }
            })
        })?;
        Ok(Caller { user })
    }

    /// Why `caller` may not `verb` in `namespace` (the object `name`, when one is named; `""`:
    /// all namespaces), or `None` when they may. With `--auth=none`, always `None`.
    pub async fn denial(
        &self,
        caller: &Caller,
        namespace: &str,
        verb: Verb,
        name: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(None);
        }
        let (allowed, reason) = self.authorize(&caller.user, namespace, verb, name).await?;
        if allowed {
            return Ok(None);
        }
        let what = match name {
            Some(n) => format!("{}.devset.io {n:?}", verb.resource()),
            None => format!("{}.devset.io", verb.resource()),
        };
        let place = if namespace.is_empty() {
            "in all namespaces".to_owned()
        } else {
            format!("in the namespace {namespace:?}")
        };
        let mut msg = format!("{} cannot {} {what} {place}", caller.name(), verb.as_str());
        if !reason.is_empty() {
            msg.push_str(": ");
            msg.push_str(&reason);
        }
        if verb == Verb::Approve {
            msg.push_str(
                " (deciding approvals needs the RBAC verb \"approve\" on \
                 workflowruns.devset.io, e.g. a RoleBinding to the ClusterRole devset-approver)",
            );
        }
        Ok(Some(msg))
    }

    /// The user a token belongs to (TokenReview, cached), or `None` for a token the API
    /// server does not accept.
    pub async fn review(&self, token: &str) -> Result<Option<UserInfo>, ApiError> {
        let known = match self.tokens.get(&token.to_owned()) {
            Some(v) => v,
            None => {
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let res = Api::<TokenReview>::all(self.client.clone())
                    .create(&PostParams::default(), &review)
                    .await
                    .map_err(|e| ApiError::unavailable(format!("TokenReview failed: {e}")))?;
                let status = res.status.unwrap_or_default();
                let user = status
                    .authenticated
                    .unwrap_or(false)
                    .then(|| status.user.unwrap_or_default());
                self.tokens.put(token.to_owned(), user.clone());
                user
            }
        };
        Ok(known)
    }

    async fn authorize(
        &self,
        user: &UserInfo,
        namespace: &str,
        verb: Verb,
        name: Option<&str>,
    ) -> Result<(bool, String), ApiError> {
        let key: AccessKey = (
            user.username.clone().unwrap_or_default(),
            user.groups.clone().unwrap_or_default(),
            namespace.to_owned(),
            verb,
            name.map(str::to_owned),
        );
        if let Some(v) = self.access.get(&key) {
            return Ok(v);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                groups: user.groups.clone(),
                uid: user.uid.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("devset.io".into()),
                    resource: Some(verb.resource().into()),
                    namespace: Some(namespace.to_owned()),
                    verb: Some(verb.as_str().into()),
                    name: name.map(str::to_owned),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let res = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ApiError::unavailable(format!("SubjectAccessReview failed: {e}")))?;
        let status = res.status.unwrap_or_default();
        let v = (status.allowed, status.reason.unwrap_or_default());
        self.access.put(key, v.clone());
        Ok(v)
    }
}

/// The token of `Authorization: Bearer TOKEN`.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc.def"));
        h.insert(header::AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(bearer(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

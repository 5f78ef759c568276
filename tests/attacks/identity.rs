//! Least-privileged identities for the attacks: a ServiceAccount bound to
//! exactly the rules an attacker would hold, and a client with its own token
//! (no impersonation, no admin credentials).
#![allow(dead_code)]

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::support;

const MANAGER: &str = "patchloop-attack-tests";

/// A ServiceAccount `name` in `ns` bound (RoleBinding) to a Role `name` with
/// exactly `rules`, and a client holding its token.
pub async fn with_rules(ns: &str, name: &str, rules: Vec<PolicyRule>) -> kube::Client {
    let env = support::env();
    let admin = env.client().await;
    apply(
        &admin,
        ns,
        &Role {
            metadata: meta(name, ns),
            rules: Some(rules),
        },
    )
    .await;
    bind(
        ns,
        name,
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}),
    )
    .await
}

/// A ServiceAccount `name` in `ns` bound in `ns` only to the rules of the
/// shipped ClusterRole `cluster_role` (e.g. `patchloop-node-agent`,
/// `patchloop-reporter`, `patchloop-approver`), read from `deploy/patchloop.yaml`:
/// the identity a user gets by following the README.
pub async fn shipped_role(ns: &str, name: &str, cluster_role: &str) -> kube::Client {
    with_rules(ns, name, shipped_rules(cluster_role)).await
}

/// The rules of the shipped ClusterRole `name` in `deploy/patchloop.yaml`.
pub fn shipped_rules(name: &str) -> Vec<PolicyRule> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/patchloop.yaml");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).expect("deploy/patchloop.yaml parses");
    let doc = docs
        .into_iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name} in deploy/patchloop.yaml"));
    let role: ClusterRole = serde_json::from_value(doc).expect("a ClusterRole");
    role.rules.unwrap_or_default()
}

/// One rule: `verbs` on `resources` of `group` (`""` for core).
pub fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

async fn bind(ns: &str, name: &str, role_ref: Value) -> kube::Client {
    let env = support::env();
    let admin = env.client().await;
    apply(
        &admin,
        ns,
        &ServiceAccount {
            metadata: meta(name, ns),
            ..Default::default()
        },
    )
    .await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "roleRef": role_ref,
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .expect("a RoleBinding");
    apply(&admin, ns, &binding).await;
    env.client_for_service_account(ns, name).await
}

fn meta(name: &str, ns: &str) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    }
}

async fn apply<K>(client: &kube::Client, ns: &str, obj: &K)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(obj).expect("serializable");
    let types = (
        K::api_version(&Default::default()).into_owned(),
        K::kind(&Default::default()).into_owned(),
    );
    value["apiVersion"] = types.0.into();
    value["kind"] = types.1.into();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .unwrap_or_else(|e| panic!("cannot apply {name} in {ns}: {e}"));
}

/// The identity must exist and be refused what it lacks: a sanity check
/// every attack module can call so an attack never passes because the
/// attacker was accidentally an admin.
pub async fn assert_cannot_read_secrets(client: &kube::Client, ns: &str) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the attacker can list Secrets in {ns}: {other:?}"),
    }
}

//! The Installation controller: validate → defaults → render → apply → status.
//!
//! 1. validate what admission cannot (pools overlapping each other); an invalid Installation
//!    gets `Degraded=True` and a Warning Event, and nothing is applied.
//! 2. defaults (`trellis_api::defaults`, pure) go to `status.computed`, never into the spec: a
//!    GitOps tool owns the spec and would fight every write.
//! 3. the IPPools of `spec.network.ipPools` ([`crate::pools`]): create the missing ones, carry
//!    later entry changes without reverting direct patches.
//! 4. the node agent's ServiceAccount, ClusterRole(Binding), the admission policy that keeps
//!    each agent to its own NodeNetwork, and the DaemonSet ([`crate::render`]),
//!    server-side-applied under the field manager `trellis-operator`. The controller owns the
//!    DaemonSet and the policy objects: deleting one brings a reconcile that re-applies it.
//! 5. status: computed spec, effective MTU, observedGeneration, Ready/Progressing/Degraded.
//!
//! Every decision a user wants to see is an Event on the Installation (pool created, change
//! carried, DaemonSet created or rolled, invalid configuration).

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ObjectReference, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;
use trellis_api::installation::{Installation, InstallationSpec, InstallationStatus};
use trellis_api::ip_pool::IPPool;
use trellis_api::node_network::NodeNetwork;
use trellis_api::{defaults, overlap};

use crate::conditions::{self, DEGRADED, Desired, IGNORED_SETTINGS, PROGRESSING, READY};
use crate::pools::{self, ExistingPool, PoolStep};
use crate::render::agent::{self, AGENT_NAME, AgentInputs, AgentObjects};
use crate::render::agent_policy::{self, POLICY_NAME, PolicyInputs, PolicyObjects};
use crate::{Context, Error, FIELD_MANAGER, Result, Stop};

/// Name of this controller in logs and metrics.
pub const CONTROLLER: &str = "installation";
/// The only Installation (admission rejects other names).
pub const SINGLETON: &str = "default";
/// Periodic re-check even without events (drift of rendered objects, NodeNetwork MTUs).
const RESYNC: Duration = Duration::from_secs(300);

/// Runs the controller until `stop`.
pub async fn run(ctx: Arc<Context>, stop: Stop) {
    let client = ctx.client.clone();
    let singleton = || Some(ObjectRef::<Installation>::new(SINGLETON));
    let managed = watcher::Config::default().labels(&format!("{}={}", crate::MANAGED_BY_LABEL, crate::MANAGED_BY));
    let created =
        watcher::Config::default().labels(&format!("{}={}", pools::CREATED_BY_LABEL, pools::CREATED_BY_INSTALLATION));
    let controller = Controller::new(Api::<Installation>::all(client.clone()), watcher::Config::default())
        .owns(Api::<DaemonSet>::namespaced(client.clone(), &ctx.config.namespace), managed.clone())
        .owns(Api::<ValidatingAdmissionPolicy>::all(client.clone()), managed.clone())
        .owns(Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()), managed)
        .watches(Api::<IPPool>::all(client.clone()), created, move |_| singleton())
        .watches(Api::<NodeNetwork>::all(client), watcher::Config::default(), move |_| singleton())
        .graceful_shutdown_on(stop);
    super::drive(CONTROLLER, controller.run(reconcile, error_policy, ctx)).await;
}

async fn reconcile(inst: Arc<Installation>, ctx: Arc<Context>) -> Result<Action> {
    super::measured(CONTROLLER, &ctx.clone(), reconcile_installation(inst, ctx)).await
}

fn error_policy(inst: Arc<Installation>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(installation = %inst.name_any(), %error, "reconcile failed");
    super::retry_after(error)
}

async fn reconcile_installation(inst: Arc<Installation>, ctx: Arc<Context>) -> Result<Action> {
    if inst.name_any() != SINGLETON {
        // Admission refuses other names; one that slipped in (an old CRD) is ignored loudly.
        tracing::warn!(installation = %inst.name_any(), "ignoring an Installation not named 'default'");
        return Ok(Action::await_change());
    }
    ctx.ensure_leader()?;
    let generation = inst.metadata.generation;
    let previous = inst.status.clone().unwrap_or_default();

    // 1 + 2: validate, then the defaults (pure).
    let computed = defaults::installation(&inst.spec);
    if let Err(problem) = validate(&computed) {
        publish_state(&ctx, &inst, EventType::Warning, "InvalidConfiguration", "Validate", problem.clone()).await;
        let status = InstallationStatus {
            observed_generation: generation,
            computed: previous.computed.clone(),
            mtu: previous.mtu,
            conditions: conditions::merge(
                &previous.conditions,
                &[
                    Desired::new(READY, false, "InvalidConfiguration", format!("nothing applied: {problem}")),
                    Desired::new(PROGRESSING, false, "InvalidConfiguration", "waiting for a valid Installation"),
                    Desired::new(DEGRADED, true, "InvalidConfiguration", problem),
                ],
                generation,
                Timestamp::now(),
            ),
        };
        write_status(&ctx, status).await?;
        return Ok(Action::await_change());
    }

    // Accepted but not acted on (e.g. nodeAddressAutodetectionV6): said, not silently dropped.
    let ignored = inst.spec.unsupported_fields();
    if !ignored.is_empty() {
        publish_state(&ctx, &inst, EventType::Warning, "SettingsIgnored", "Validate", ignored.join("; ")).await;
    }

    // 3: pools.
    let mut problems = Vec::new();
    let entries = computed.network.as_ref().and_then(|n| n.ip_pools.clone()).unwrap_or_default();
    for problem in sync_pools(&ctx, &inst, &entries).await? {
        problems.push(problem);
    }

    // 4: the agent's objects.
    let objects = agent::render(&agent_inputs(&ctx, &inst, &computed));
    let policy = agent_policy::render(&PolicyInputs {
        namespace: ctx.config.namespace.clone(),
        owner: inst.controller_owner_ref(&()),
    });
    let daemon_set = apply_agent(&ctx, &inst, &objects, &policy).await?;

    // 5: status.
    let node_mtus = node_mtus(&ctx).await?;
    let mtu = effective_mtu(&computed, &node_mtus);
    let status = InstallationStatus {
        observed_generation: generation,
        computed: Some(computed),
        mtu,
        conditions: conditions::merge(
            &previous.conditions,
            &[decide_conditions(&problems, &rollout(&daemon_set)), vec![ignored_settings(&ignored)]].concat(),
            generation,
            Timestamp::now(),
        ),
    };
    write_status(&ctx, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// What admission cannot check: pools of the Installation overlapping each other.
pub fn validate(computed: &InstallationSpec) -> Result<(), String> {
    let entries = computed.network.as_ref().and_then(|n| n.ip_pools.as_deref()).unwrap_or_default();
    let mut cidrs = Vec::new();
    for e in entries {
        let cidr: IpNet = e.cidr.parse().map_err(|_| format!("spec.network.ipPools: {} is not a CIDR", e.cidr))?;
        cidrs.push((e.cidr.as_str(), cidr));
    }
    let overlaps = overlap::overlapping_pools(&cidrs);
    if let Some((a, b)) = overlaps.first() {
        return Err(format!("spec.network.ipPools: {a} and {b} overlap; pools must be disjoint"));
    }
    Ok(())
}

fn agent_inputs(ctx: &Context, inst: &Installation, computed: &InstallationSpec) -> AgentInputs {
    let cni = computed.cni.clone().unwrap_or_default();
    AgentInputs {
        namespace: ctx.config.namespace.clone(),
        image: agent::image(computed.registry.as_deref(), &ctx.config.agent_image),
        cni_conf_dir: cni.conf_dir.unwrap_or_else(|| agent::DEFAULT_CNI_CONF_DIR.into()),
        cni_bin_dir: cni.bin_dir.unwrap_or_else(|| agent::DEFAULT_CNI_BIN_DIR.into()),
        owner: inst.controller_owner_ref(&()),
    }
}

/// Creates and carries the Installation's pools; returns problems for the Degraded condition.
async fn sync_pools(
    ctx: &Context,
    inst: &Installation,
    entries: &[trellis_api::installation::InstallationPool],
) -> Result<Vec<String>> {
    let api: Api<IPPool> = Api::all(ctx.client.clone());
    let existing: Vec<ExistingPool> = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing IPPools", e))?
        .items
        .iter()
        .map(ExistingPool::from_ippool)
        .collect();
    let mut problems = Vec::new();
    for step in pools::plan(entries, &existing) {
        ctx.ensure_leader()?;
        match step {
            PoolStep::Create { name, spec, memory } => {
                let pool = IPPool {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(
                            [(pools::CREATED_BY_LABEL.to_string(), pools::CREATED_BY_INSTALLATION.to_string())].into(),
                        ),
                        annotations: Some(
                            [(pools::MEMORY_ANNOTATION.to_string(), serialize("pool memory", &memory)?)].into(),
                        ),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                };
                let pp = PostParams { field_manager: Some(pools::FIELD_MANAGER.into()), ..Default::default() };
                match api.create(&pp, &pool).await {
                    Ok(_) => {
                        let note = format!("created IPPool {name} ({}) from spec.network.ipPools", memory.cidr);
                        tracing::info!(pool = %name, cidr = %memory.cidr, "created IPPool");
                        publish_decision(ctx, inst, "PoolCreated", "CreatePool", note, pool_ref(&name)).await;
                    }
                    // Created by a concurrent pass: the next reconcile sees it.
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                    Err(e) => return Err(Error::kube(format!("creating IPPool {name}"), e)),
                }
            }
            PoolStep::Carry { name, spec_patch, fields, memory, resource_version } => {
                let patch = pools::merge_patch(&spec_patch, &memory, resource_version.as_deref());
                let pp = PatchParams { field_manager: Some(pools::FIELD_MANAGER.into()), ..Default::default() };
                api.patch(&name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| Error::kube(format!("carrying {} to IPPool {name}", fields.join(", ")), e))?;
                let note = format!(
                    "carried the Installation's change of {} to IPPool {name}: {}",
                    fields.join(", "),
                    serde_json::Value::Object(spec_patch)
                );
                tracing::info!(pool = %name, fields = ?fields, "carried Installation change to IPPool");
                publish_decision(ctx, inst, "PoolChangeCarried", "CarryPoolChange", note, pool_ref(&name)).await;
            }
            PoolStep::Unchanged { name, remember: Some(memory), resource_version } => {
                let patch = pools::merge_patch(&Default::default(), &memory, resource_version.as_deref());
                let pp = PatchParams { field_manager: Some(pools::FIELD_MANAGER.into()), ..Default::default() };
                api.patch(&name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| Error::kube(format!("recording the Installation entry on IPPool {name}"), e))?;
            }
            PoolStep::Unchanged { remember: None, .. } => {}
            PoolStep::NotOurs { name, cidr } => {
                tracing::debug!(pool = %name, %cidr, "an IPPool the Installation did not create has this CIDR; left alone");
            }
            PoolStep::Immutable { name, field, message } => {
                tracing::warn!(pool = %name, field, "{message}");
                publish_state(ctx, inst, EventType::Warning, "PoolChangeRefused", "CarryPoolChange", message.clone())
                    .await;
                problems.push(message);
            }
        }
    }
    Ok(problems)
}

/// Server-side-applies the agent's objects; returns the DaemonSet as stored.
async fn apply_agent(
    ctx: &Context,
    inst: &Installation,
    objects: &AgentObjects,
    policy: &PolicyObjects,
) -> Result<DaemonSet> {
    let ns = &ctx.config.namespace;
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    ctx.ensure_leader()?;
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns)
        .patch(AGENT_NAME, &pp, &Patch::Apply(&objects.service_account))
        .await
        .map_err(|e| Error::kube(format!("applying ServiceAccount {ns}/{AGENT_NAME}"), e))?;
    Api::<ClusterRole>::all(ctx.client.clone())
        .patch(AGENT_NAME, &pp, &Patch::Apply(&objects.cluster_role))
        .await
        .map_err(|e| Error::kube(format!("applying ClusterRole {AGENT_NAME}"), e))?;
    Api::<ClusterRoleBinding>::all(ctx.client.clone())
        .patch(AGENT_NAME, &pp, &Patch::Apply(&objects.cluster_role_binding))
        .await
        .map_err(|e| Error::kube(format!("applying ClusterRoleBinding {AGENT_NAME}"), e))?;
    // Before the DaemonSet: no agent runs before it is limited to its own NodeNetwork.
    Api::<ValidatingAdmissionPolicy>::all(ctx.client.clone())
        .patch(POLICY_NAME, &pp, &Patch::Apply(&policy.policy))
        .await
        .map_err(|e| Error::kube(format!("applying ValidatingAdmissionPolicy {POLICY_NAME}"), e))?;
    Api::<ValidatingAdmissionPolicyBinding>::all(ctx.client.clone())
        .patch(POLICY_NAME, &pp, &Patch::Apply(&policy.binding))
        .await
        .map_err(|e| Error::kube(format!("applying ValidatingAdmissionPolicyBinding {POLICY_NAME}"), e))?;

    let api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), ns);
    let before =
        api.get_opt(AGENT_NAME).await.map_err(|e| Error::kube(format!("reading DaemonSet {ns}/{AGENT_NAME}"), e))?;
    let applied = api
        .patch(AGENT_NAME, &pp, &Patch::Apply(&objects.daemon_set))
        .await
        .map_err(|e| Error::kube(format!("applying DaemonSet {ns}/{AGENT_NAME}"), e))?;
    let new_hash = agent::template_hash(&objects.daemon_set).unwrap_or_default().to_string();
    match before.as_ref().map(|ds| agent::template_hash(ds).unwrap_or_default().to_string()) {
        None => {
            let note = format!("created DaemonSet {ns}/{AGENT_NAME} (config {new_hash})");
            publish_decision(ctx, inst, "DaemonSetCreated", "ApplyDaemonSet", note, applied.object_ref(&())).await;
        }
        Some(old) if old != new_hash => {
            let note = format!(
                "the agent's pod template changed (config {old} -> {new_hash}): rolling DaemonSet {ns}/{AGENT_NAME}"
            );
            tracing::info!(%old, new = %new_hash, "rolling the agent DaemonSet");
            publish_decision(ctx, inst, "DaemonSetRolled", "ApplyDaemonSet", note, applied.object_ref(&())).await;
        }
        Some(_) => {}
    }
    Ok(applied)
}

/// The MTUs the agents reported (NodeNetwork `status.mtu`).
async fn node_mtus(ctx: &Context) -> Result<Vec<i32>> {
    let list = Api::<NodeNetwork>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube("listing NodeNetworks", e))?;
    Ok(list.items.iter().filter_map(|n| n.status.as_ref().and_then(|s| s.mtu)).collect())
}

/// `spec.network.mtu` when set, else the smallest MTU a node reported (pods must fit through
/// every node's tunnel), else unknown.
pub fn effective_mtu(computed: &InstallationSpec, node_mtus: &[i32]) -> Option<i32> {
    computed.network.as_ref().and_then(|n| n.mtu).or_else(|| node_mtus.iter().copied().min())
}

/// How far the DaemonSet controller got with the current template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// No status for the current generation yet (no DaemonSet controller has looked).
    NotObserved,
    InProgress {
        updated: i32,
        ready: i32,
        desired: i32,
    },
    Complete {
        desired: i32,
    },
}

pub fn rollout(ds: &DaemonSet) -> Rollout {
    let Some(status) = ds.status.as_ref() else { return Rollout::NotObserved };
    if status.observed_generation < ds.metadata.generation {
        return Rollout::NotObserved;
    }
    let desired = status.desired_number_scheduled;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let ready = status.number_ready;
    if updated >= desired && ready >= desired {
        Rollout::Complete { desired }
    } else {
        Rollout::InProgress { updated, ready, desired }
    }
}

/// Ready / Progressing / Degraded from the problems found and the rollout.
pub fn decide_conditions(problems: &[String], rollout: &Rollout) -> Vec<Desired> {
    let degraded = if problems.is_empty() {
        Desired::new(DEGRADED, false, "AsExpected", "no problems")
    } else {
        Desired::new(DEGRADED, true, "PoolChangeRefused", problems.join("; "))
    };
    let (progressing, ready) = match rollout {
        Rollout::NotObserved => (
            Desired::new(
                PROGRESSING,
                true,
                "WaitingForDaemonSet",
                "the DaemonSet controller has not reported the agents of the current template yet",
            ),
            Desired::new(
                READY,
                false,
                "WaitingForDaemonSet",
                "applied; waiting for the node agents to be scheduled and ready",
            ),
        ),
        Rollout::InProgress { updated, ready, desired } => (
            Desired::new(
                PROGRESSING,
                true,
                "RollingOut",
                format!("{updated} of {desired} node agents run the current template, {ready} ready"),
            ),
            Desired::new(READY, false, "AgentsNotReady", format!("{ready} of {desired} node agents ready")),
        ),
        Rollout::Complete { desired } => (
            Desired::new(
                PROGRESSING,
                false,
                "RolloutComplete",
                format!("all {desired} node agents run the current template"),
            ),
            if problems.is_empty() {
                Desired::new(READY, true, "AllAgentsReady", format!("all {desired} node agents ready"))
            } else {
                Desired::new(READY, false, "Degraded", "node agents ready, but see the Degraded condition")
            },
        ),
    };
    vec![ready, progressing, degraded]
}

/// The IgnoredSettings condition: True, naming each setting, when the spec has any.
pub fn ignored_settings(ignored: &[String]) -> Desired {
    if ignored.is_empty() {
        Desired::new(IGNORED_SETTINGS, false, "NoneIgnored", "every setting in the spec is in effect")
    } else {
        Desired::new(IGNORED_SETTINGS, true, "SettingsIgnored", ignored.join("; "))
    }
}

async fn write_status(ctx: &Context, status: InstallationStatus) -> Result<()> {
    ctx.ensure_leader()?;
    let api: Api<Installation> = Api::all(ctx.client.clone());
    let body = json!({
        "apiVersion": Installation::api_version(&()),
        "kind": Installation::kind(&()),
        "status": status,
    });
    api.patch_status(SINGLETON, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|e| Error::kube("writing Installation status", e))?;
    Ok(())
}

/// Publishes an Event on the Installation for a state that may persist across reconciles
/// (invalid configuration, a refused change): repeats become one Event with a growing count.
/// A failure is logged, not fatal (Events are best effort).
async fn publish_state(ctx: &Context, inst: &Installation, type_: EventType, reason: &str, action: &str, note: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &inst.object_ref(&())).await {
        tracing::warn!(reason, error = %e, "publishing an Event");
    }
}

/// Publishes a decision the operator took (pool created, change carried, DaemonSet rolled) as an
/// Event of its own naming the object it touched. The shared recorder would fold a second
/// decision of the same reason into the first Event and keep the first note; each decision is
/// news, so it gets a recorder without that memory.
async fn publish_decision(
    ctx: &Context,
    inst: &Installation,
    reason: &str,
    action: &str,
    note: String,
    related: ObjectReference,
) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: Some(related),
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &inst.object_ref(&())).await {
        tracing::warn!(reason, error = %e, "publishing an Event");
    }
}

fn pool_ref(name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(IPPool::api_version(&()).into_owned()),
        kind: Some(IPPool::kind(&()).into_owned()),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

fn serialize(what: &str, value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|source| Error::Serialize { what: what.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use trellis_api::installation::{InstallationPool, NetworkSpec};

    fn spec(cidrs: &[&str], mtu: Option<i32>) -> InstallationSpec {
        defaults::installation(&InstallationSpec {
            network: Some(NetworkSpec {
                ip_pools: Some(
                    cidrs.iter().map(|c| InstallationPool { cidr: c.to_string(), ..Default::default() }).collect(),
                ),
                mtu,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn overlapping_installation_pools_are_invalid() {
        assert!(validate(&spec(&["10.244.0.0/16", "10.245.0.0/16"], None)).is_ok());
        let e = validate(&spec(&["10.0.0.0/8", "10.244.0.0/16"], None)).unwrap_err();
        assert!(e.contains("10.0.0.0/8 and 10.244.0.0/16 overlap"), "{e}");
    }

    #[test]
    fn explicit_mtu_wins_else_the_smallest_node_mtu() {
        assert_eq!(effective_mtu(&spec(&["10.0.0.0/16"], Some(1400)), &[1450, 1480]), Some(1400));
        assert_eq!(effective_mtu(&spec(&["10.0.0.0/16"], None), &[1450, 1430, 1480]), Some(1430));
        assert_eq!(effective_mtu(&spec(&["10.0.0.0/16"], None), &[]), None);
    }

    fn ds(generation: i64, status: Option<DaemonSetStatus>) -> DaemonSet {
        DaemonSet { metadata: ObjectMeta { generation: Some(generation), ..Default::default() }, spec: None, status }
    }

    #[test]
    fn rollout_follows_the_daemonset_status_of_the_current_generation() {
        assert_eq!(rollout(&ds(1, None)), Rollout::NotObserved);
        let st = |observed, desired, updated, ready| DaemonSetStatus {
            observed_generation: Some(observed),
            desired_number_scheduled: desired,
            updated_number_scheduled: Some(updated),
            number_ready: ready,
            ..Default::default()
        };
        assert_eq!(rollout(&ds(2, Some(st(1, 3, 3, 3)))), Rollout::NotObserved, "status of the old template");
        assert_eq!(rollout(&ds(2, Some(st(2, 3, 1, 3)))), Rollout::InProgress { updated: 1, ready: 3, desired: 3 });
        assert_eq!(rollout(&ds(2, Some(st(2, 3, 3, 3)))), Rollout::Complete { desired: 3 });
    }

    #[test]
    fn ignored_settings_are_named_in_a_condition() {
        let spec = InstallationSpec {
            calico_network: Some(NetworkSpec {
                node_address_autodetection_v6: Some(Default::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = ignored_settings(&spec.unsupported_fields());
        assert!(c.status);
        assert!(c.message.contains("nodeAddressAutodetectionV6"), "{}", c.message);
        assert!(!ignored_settings(&InstallationSpec::default().unsupported_fields()).status);
    }

    #[test]
    fn conditions_say_why_in_words() {
        let c = decide_conditions(&[], &Rollout::Complete { desired: 3 });
        assert_eq!((c[0].type_, c[0].status, c[0].reason.as_str()), (READY, true, "AllAgentsReady"));
        assert_eq!((c[1].type_, c[1].status), (PROGRESSING, false));
        assert_eq!((c[2].type_, c[2].status), (DEGRADED, false));
        let c = decide_conditions(&[], &Rollout::InProgress { updated: 1, ready: 2, desired: 3 });
        assert!(!c[0].status && c[1].status);
        assert_eq!(c[1].message, "1 of 3 node agents run the current template, 2 ready");
        let c = decide_conditions(&["blockSize cannot change".into()], &Rollout::Complete { desired: 1 });
        assert!(!c[0].status, "not Ready while Degraded");
        assert!(c[2].status && c[2].message.contains("blockSize"));
    }
}

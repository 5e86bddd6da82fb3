//! The real Kubernetes API server, as tests see it.
//!
//! `make test-root` starts `e2e/testbed/kube-apiserver-lite` (etcd + the real apiextensions
//! API server: structural schemas, CEL rules, subresources, patches, server-side apply) and
//! exports `KUBECONFIG`; [`ApiServer::from_env`] connects to it. There is one server for all
//! tests of a run and tests run in parallel threads, so every test names its objects uniquely
//! ([`unique_name`]) and deletes them again ([`Cleanup`], which also runs when a test panics).
//!
//! Objects are handled as YAML + [`DynamicObject`] with the `ApiResource` discovered from the
//! server, the way `kubectl` does it, so a test can feed the server exactly the manifest a user
//! would write, including mistakes that typed Rust structs could not even express. Rejections
//! keep the server's [`Status`] so tests can assert the message users see. [`ApiServer::kubectl`]
//! runs the real `kubectl` against the same server for the commands users type.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind, Status};
use kube::discovery::Scope;
use kube::{Client, Config, Resource};

/// Field manager name of everything the test bed writes.
pub const FIELD_MANAGER: &str = "trellis-e2e";

/// How long to wait for a new CRD to be served.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "KUBECONFIG is not set: these tests need the real API server; run them with `make test-root` \
         (or `export KUBECONFIG=$(e2e/testbed/kube-apiserver-lite start)` first)"
    )]
    NoKubeconfig,
    #[error("kubeconfig {path}: {detail}")]
    Kubeconfig { path: PathBuf, detail: String },
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("gave up after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
}

impl ApiError {
    fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        ApiError::Kube { context: context.into(), source }
    }

    /// The server's answer when it refused the request (validation, conflict, not found ...).
    pub fn status(&self) -> Option<&Status> {
        match self {
            ApiError::Kube { source: kube::Error::Api(status), .. } => Some(status),
            _ => None,
        }
    }
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// `fieldValidation` of a write: what the server does with fields the schema does not know.
/// kubectl sends `Strict` for create/apply/replace; a client that sends nothing gets `Warn`
/// (the field is pruned from the stored object and a warning header is returned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
}

impl FieldValidation {
    fn as_str(self) -> &'static str {
        match self {
            FieldValidation::Strict => "Strict",
            FieldValidation::Warn => "Warn",
        }
    }
}

/// A connection to the test bed's API server.
#[derive(Clone)]
pub struct ApiServer {
    client: Client,
    kubeconfig: PathBuf,
}

impl ApiServer {
    /// Connects to the server `KUBECONFIG` points at (set by `make test-root`).
    pub async fn from_env() -> Result<Self> {
        let path = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()).ok_or(ApiError::NoKubeconfig)?;
        // KUBECONFIG may be a list; the test bed writes exactly one file.
        let kubeconfig = std::env::split_paths(&path).next().ok_or(ApiError::NoKubeconfig)?;
        Self::from_kubeconfig(&kubeconfig).await
    }

    /// Connects to the server a kubeconfig file points at (e.g. a test's private server).
    pub async fn from_kubeconfig(kubeconfig: &Path) -> Result<Self> {
        let kubeconfig = kubeconfig.to_path_buf();
        let file = Kubeconfig::read_from(&kubeconfig)
            .map_err(|e| ApiError::Kubeconfig { path: kubeconfig.clone(), detail: e.to_string() })?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| ApiError::Kubeconfig { path: kubeconfig.clone(), detail: e.to_string() })?;
        let client = Client::try_from(config).map_err(|e| ApiError::kube("building the kube client", e))?;
        Ok(ApiServer { client, kubeconfig })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client that acts as `user` through the API server's impersonation headers
    /// (`Impersonate-User`, `Impersonate-Extra-*`, what `kubectl --as` sends). A service
    /// account's token bound to a pod carries the pod's node as user-info extra
    /// `authentication.kubernetes.io/node-name`; `extra` plays that part.
    pub async fn impersonating(&self, user: &str, extra: &[(&str, &str)]) -> Result<Client> {
        let file = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| ApiError::Kubeconfig { path: self.kubeconfig.clone(), detail: e.to_string() })?;
        let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| ApiError::Kubeconfig { path: self.kubeconfig.clone(), detail: e.to_string() })?;
        let header = |name: String, value: &str| {
            let name = http::HeaderName::try_from(name).map_err(|e| ApiError::Manifest(e.to_string()))?;
            let value = http::HeaderValue::try_from(value).map_err(|e| ApiError::Manifest(e.to_string()))?;
            Ok::<_, ApiError>((name, value))
        };
        config.headers.push(header("Impersonate-User".into(), user)?);
        for (key, value) in extra {
            // Header names cannot hold '/': the key is percent-encoded, as kubectl does.
            config
                .headers
                .push(header(format!("Impersonate-Extra-{}", key.replace('%', "%25").replace('/', "%2F")), value)?);
        }
        Client::try_from(config).map_err(|e| ApiError::kube("building the impersonating kube client", e))
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates or updates the generated CRDs (`crds/yaml/*.yaml`) and waits until each is
    /// Established (served). Idempotent and safe to call from parallel tests and processes:
    /// it is a forced server-side apply, so identical manifests change nothing.
    pub async fn apply_crds(&self) -> Result<Vec<String>> {
        let dir = crd_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| ApiError::Io { context: format!("listing {}", dir.display()), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ApiError::Manifest(format!("no CRD manifests in {} (run `make crds`)", dir.display())));
        }
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let mut names = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|source| ApiError::Io { context: format!("reading {}", file.display()), source })?;
            let mut crd: CustomResourceDefinition =
                serde_yaml::from_str(&text).map_err(|e| ApiError::Manifest(format!("{}: {e}", file.display())))?;
            let name = crd
                .metadata
                .name
                .clone()
                .ok_or_else(|| ApiError::Manifest(format!("{}: CRD without metadata.name", file.display())))?;
            crd.metadata.managed_fields = None;
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            api.patch(&name, &pp, &Patch::Apply(&crd))
                .await
                .map_err(|e| ApiError::kube(format!("applying CRD {name} from {}", file.display()), e))?;
            names.push(name);
        }
        for name in &names {
            self.wait_established(&api, name).await?;
        }
        Ok(names)
    }

    async fn wait_established(&self, api: &Api<CustomResourceDefinition>, name: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ESTABLISH_TIMEOUT;
        loop {
            let crd = api.get(name).await.map_err(|e| ApiError::kube(format!("reading CRD {name}"), e))?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if established {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Timeout {
                    what: format!("CRD {name} to become Established"),
                    waited: ESTABLISH_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The resource behind a manifest's apiVersion + kind, discovered from the server.
    pub async fn resource(&self, api_version: &str, kind: &str) -> Result<(ApiResource, Scope)> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| ApiError::kube(format!("discovering {api_version} {kind}"), e))?;
        Ok((ar, caps.scope))
    }

    /// An `Api` for objects like `obj` (its kind, and its namespace when namespaced).
    pub async fn api_for(&self, obj: &DynamicObject) -> Result<(Api<DynamicObject>, ApiResource)> {
        let (api, ar, _) = self.resolve(obj).await?;
        Ok((api, ar))
    }

    async fn resolve(&self, obj: &DynamicObject) -> Result<(Api<DynamicObject>, ApiResource, Option<String>)> {
        let types = obj.types.as_ref().ok_or_else(|| ApiError::Manifest("no apiVersion/kind".into()))?;
        let (ar, scope) = self.resource(&types.api_version, &types.kind).await?;
        Ok(match scope {
            Scope::Cluster => (Api::all_with(self.client(), &ar), ar, None),
            Scope::Namespaced => {
                let ns = obj.metadata.namespace.clone().unwrap_or_else(|| "default".into());
                (Api::namespaced_with(self.client(), &ns, &ar), ar, Some(ns))
            }
        })
    }

    /// Creates the object of a YAML manifest (POST, like `kubectl create -f`), with the given
    /// field validation and optionally as a server-side dry run (full admission, nothing stored).
    pub async fn create_yaml(&self, yaml: &str, validation: FieldValidation, dry_run: bool) -> Result<DynamicObject> {
        let obj = parse_manifest(yaml)?;
        let (_, ar, ns) = self.resolve(&obj).await?;
        let path = DynamicObject::url_path(&ar, ns.as_deref());
        let mut query = format!("fieldValidation={}&fieldManager={FIELD_MANAGER}", validation.as_str());
        if dry_run {
            query.push_str("&dryRun=All");
        }
        let body = serde_json::to_vec(&obj).map_err(|e| ApiError::Manifest(e.to_string()))?;
        let request = http::Request::post(format!("{path}?{query}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| ApiError::Manifest(format!("building the request: {e}")))?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        self.client
            .request::<DynamicObject>(request)
            .await
            .map_err(|e| ApiError::kube(format!("creating {} {name}", ar.kind), e))
    }

    /// Reads the current state of the object a manifest names.
    pub async fn get_like(&self, yaml: &str) -> Result<DynamicObject> {
        let obj = parse_manifest(yaml)?;
        let (api, ar) = self.api_for(&obj).await?;
        let name = obj.metadata.name.unwrap_or_default();
        api.get(&name).await.map_err(|e| ApiError::kube(format!("reading {} {name}", ar.kind), e))
    }

    /// `kubectl patch --type merge`: a JSON merge patch on the object a manifest names.
    pub async fn merge_patch(&self, yaml: &str, patch: &serde_json::Value) -> Result<DynamicObject> {
        let obj = parse_manifest(yaml)?;
        let (api, ar) = self.api_for(&obj).await?;
        let name = obj.metadata.name.unwrap_or_default();
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.patch(&name, &pp, &Patch::Merge(patch))
            .await
            .map_err(|e| ApiError::kube(format!("merge-patching {} {name}", ar.kind), e))
    }

    /// A JSON merge patch on the `status` subresource.
    pub async fn merge_patch_status(&self, yaml: &str, patch: &serde_json::Value) -> Result<DynamicObject> {
        let obj = parse_manifest(yaml)?;
        let (api, ar) = self.api_for(&obj).await?;
        let name = obj.metadata.name.unwrap_or_default();
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        api.patch_status(&name, &pp, &Patch::Merge(patch))
            .await
            .map_err(|e| ApiError::kube(format!("merge-patching {} {name}/status", ar.kind), e))
    }

    /// Deletes the object a manifest names; absent is fine.
    pub async fn delete_yaml(&self, yaml: &str) -> Result<()> {
        let obj = parse_manifest(yaml)?;
        let (api, ar) = self.api_for(&obj).await?;
        let name = obj.metadata.name.unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
            Err(e) => Err(ApiError::kube(format!("deleting {} {name}", ar.kind), e)),
        }
    }

    /// Runs the real `kubectl` (`$KUBECTL`, default `kubectl` on PATH) against this server.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        kubectl_command(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|source| ApiError::Io { context: format!("running kubectl {}", args.join(" ")), source })
    }

    /// Runs the real `kubectl` with `input` on its standard input (for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<Output> {
        use std::io::Write;
        let context = || format!("running kubectl {}", args.join(" "));
        let mut child = kubectl_command(&self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| ApiError::Io { context: context(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).map_err(|source| ApiError::Io { context: context(), source })?;
        }
        child.wait_with_output().map_err(|source| ApiError::Io { context: context(), source })
    }

    /// Deletes the object a manifest names when the guard drops, also if the test panics.
    pub fn cleanup(&self, yaml: &str) -> Result<Cleanup> {
        let obj = parse_manifest(yaml)?;
        let types = obj.types.ok_or_else(|| ApiError::Manifest("no apiVersion/kind".into()))?;
        let name = obj.metadata.name.ok_or_else(|| ApiError::Manifest("no metadata.name".into()))?;
        let group = types.api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
        let resource =
            if group.is_empty() { types.kind.to_lowercase() } else { format!("{}.{group}", types.kind.to_lowercase()) };
        Ok(Cleanup { kubeconfig: self.kubeconfig.clone(), resource, name, namespace: obj.metadata.namespace })
    }
}

/// Deletes one object with `kubectl delete` on drop. Drop cannot be async and may run while
/// the test's runtime is unwinding, so it uses the CLI rather than the async client.
#[must_use = "the object is deleted when the guard drops"]
pub struct Cleanup {
    kubeconfig: PathBuf,
    resource: String,
    name: String,
    namespace: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut cmd = kubectl_command(&self.kubeconfig);
        cmd.args(["delete", &self.resource, &self.name, "--ignore-not-found", "--wait=false"]);
        if let Some(ns) = &self.namespace {
            cmd.args(["-n", ns]);
        }
        match cmd.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: kubectl delete {} {} failed: {}",
                self.resource,
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("cleanup: cannot run kubectl to delete {} {}: {e}", self.resource, self.name),
        }
    }
}

fn kubectl_command(kubeconfig: &Path) -> Command {
    let program = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let mut cmd = Command::new(program);
    cmd.env("KUBECONFIG", kubeconfig);
    cmd
}

/// Parses one YAML manifest into a [`DynamicObject`].
pub fn parse_manifest(yaml: &str) -> Result<DynamicObject> {
    let obj: DynamicObject = serde_yaml::from_str(yaml).map_err(|e| ApiError::Manifest(format!("{e}\n{yaml}")))?;
    if obj.types.is_none() {
        return Err(ApiError::Manifest(format!("apiVersion and kind are required\n{yaml}")));
    }
    Ok(obj)
}

/// The generated CRD manifests, `crds/yaml/` of the workspace.
pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("crds").join("yaml")
}

/// A DNS-1123 name unique to this process and call: `<prefix>-<pid>-<n>`, so parallel tests
/// (and leftovers of an earlier run on a reused server) never collide.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{:x}{:x}-{n}", std::process::id(), nanos & 0xfff)
}

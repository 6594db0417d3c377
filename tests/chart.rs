//! Tests of the Helm chart in charts/calsync-operator: `helm lint`, what `helm template`
//! renders with default and representative values, the messages of invalid values, and
//! installs into the real kube-apiserver of `calsync_operator::testenv`.
//!
//! Helm comes from `$CALSYNC_HELM`, else from `scripts/build-helm.sh`, which builds it from
//! its Go module into a cache outside the work tree (`make helm` does the same).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use calsync_operator::config::{LogFormat, RunConfig, TokenSource};
use calsync_operator::testenv::{
    BoundedOutput, COMMAND_TIMEOUT, ControlPlane, SKIP_CONTROL_PLANE_ENV, TestNamespace,
    wait_with_output_within,
};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use pretty_assertions::assert_eq;
use serde_json::Value;

/// The URL every test passes as `mytimetable.url`. Nothing contacts it: the test API server
/// runs no pods.
const URL: &str = "https://mytimetable.example.edu/api/v0";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/calsync-operator")
}

fn values_file(name: &str) -> PathBuf {
    repo_root().join("tests/chart-values").join(name)
}

/// Returns the helm binary, building it on first use when `$CALSYNC_HELM` is unset.
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Some(path) = std::env::var_os("CALSYNC_HELM") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "CALSYNC_HELM is set to {}, which is not a file; unset it, or set it to the path that `make -s helm` prints",
                path.display()
            );
            return path;
        }
        let script = repo_root().join("scripts/build-helm.sh");
        let output = Command::new(&script)
            .output()
            .unwrap_or_else(|error| panic!("failed to run {}: {error}", script.display()));
        assert!(
            output.status.success(),
            "helm is missing: {} failed ({}): {}\nInstall Go 1.26 or newer, or set CALSYNC_HELM \
             to a helm binary",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// Returns a helm command whose configuration, cache and data folders live in a temporary
/// folder of this test process, so that tests neither read nor change the user's Helm setup.
fn helm_command() -> Command {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home =
        HOME.get_or_init(|| tempfile::tempdir().expect("failed to create a temporary folder"));
    let mut command = Command::new(helm());
    for (variable, folder) in [
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_DATA_HOME", "data"),
    ] {
        command.env(variable, home.path().join(folder));
    }
    command
}

fn run_helm(args: &[&str]) -> Output {
    helm_command()
        .args(args)
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("failed to run {}: {error}", helm().display()))
}

/// Runs `helm template` on the chart in namespace calsync-system with the given extra
/// arguments; returns the rendered objects, or the error output when helm failed.
fn try_template(extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "calsync",
        chart.to_str().unwrap(),
        "--namespace",
        "calsync-system",
    ];
    args.extend_from_slice(extra);
    let output = run_helm(&args);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let stdout = String::from_utf8(output.stdout).expect("helm printed invalid UTF-8");
    let objects: Vec<Value> = serde_saphyr::from_multiple(&stdout)
        .unwrap_or_else(|error| panic!("helm template printed invalid YAML: {error}\n{stdout}"));
    Ok(objects
        .into_iter()
        .filter(|object| !object.is_null())
        .collect())
}

fn template(extra: &[&str]) -> Vec<Value> {
    try_template(extra).unwrap_or_else(|stderr| panic!("helm template failed: {stderr}"))
}

fn template_defaults() -> Vec<Value> {
    template(&["--set", &format!("mytimetable.url={URL}")])
}

fn template_representative() -> Vec<Value> {
    let values = values_file("representative.yaml");
    template(&["--values", values.to_str().unwrap()])
}

fn kind_and_name(object: &Value) -> (String, String) {
    (
        object["kind"].as_str().unwrap_or_default().to_string(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|object| object["kind"] == kind)
        .collect()
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

fn container(objects: &[Value]) -> &Value {
    let containers = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("Deployment has no containers");
    assert_eq!(containers.len(), 1, "the operator pod runs one container");
    &containers[0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .expect("the container has no args")
        .iter()
        .map(|arg| arg.as_str().expect("an arg is not a string").to_string())
        .collect()
}

/// One permission: the binding's namespace (None for cluster-wide), API group, resource,
/// verb and the resource name it is limited to.
type Grant = (Option<String>, String, String, String, Option<String>);

/// Resolves every binding to the rules of its role and flattens them into single grants,
/// so a test compares what the ServiceAccount may do, not how the YAML is laid out.
fn grants(objects: &[Value]) -> BTreeSet<Grant> {
    let mut result = BTreeSet::new();
    for binding in objects
        .iter()
        .filter(|object| object["kind"] == "RoleBinding" || object["kind"] == "ClusterRoleBinding")
    {
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role_name = binding["roleRef"]["name"].as_str().unwrap();
        let binding_namespace = binding["metadata"]["namespace"]
            .as_str()
            .map(str::to_string);
        let role = objects
            .iter()
            .find(|object| {
                object["kind"] == role_kind
                    && object["metadata"]["name"] == role_name
                    && (role_kind == "ClusterRole"
                        || object["metadata"]["namespace"].as_str() == binding_namespace.as_deref())
            })
            .unwrap_or_else(|| panic!("binding refers to missing {role_kind} {role_name}"));
        for rule in role["rules"].as_array().unwrap() {
            let names: Vec<Option<String>> = match rule["resourceNames"].as_array() {
                Some(names) => names
                    .iter()
                    .map(|n| Some(n.as_str().unwrap().to_string()))
                    .collect(),
                None => vec![None],
            };
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        for name in &names {
                            result.insert((
                                binding_namespace.clone(),
                                group.as_str().unwrap().to_string(),
                                resource.as_str().unwrap().to_string(),
                                verb.as_str().unwrap().to_string(),
                                name.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
    result
}

/// Returns `verbs` on `resource` of `group` in `namespace` (None: the whole cluster).
fn verb_grants(
    namespace: Option<&str>,
    group: &str,
    resource: &str,
    verbs: &[&str],
) -> BTreeSet<Grant> {
    verbs
        .iter()
        .map(|verb| {
            (
                namespace.map(str::to_string),
                group.to_string(),
                resource.to_string(),
                verb.to_string(),
                None,
            )
        })
        .collect()
}

/// Returns the grants for reading the managed resources in `namespace` (None: the whole
/// cluster).
fn read_grants(namespace: Option<&str>) -> BTreeSet<Grant> {
    let mut expected = BTreeSet::new();
    for resource in ["calendarusers", "calendarsyncs"] {
        expected.extend(verb_grants(
            namespace,
            "calsync.dev",
            resource,
            &["get", "list", "watch"],
        ));
    }
    expected
}

/// Returns the grants for writing the managed resources and events in `namespace` (None:
/// the whole cluster).
fn write_grants(namespace: Option<&str>) -> BTreeSet<Grant> {
    let mut expected = BTreeSet::new();
    expected.extend(verb_grants(
        namespace,
        "calsync.dev",
        "calendarusers",
        &["patch", "update"],
    ));
    expected.extend(verb_grants(
        namespace,
        "calsync.dev",
        "calendarsyncs",
        &["patch", "update", "delete"],
    ));
    for status in ["calendarusers/status", "calendarsyncs/status"] {
        expected.extend(verb_grants(
            namespace,
            "calsync.dev",
            status,
            &["get", "patch", "update"],
        ));
    }
    for finalizers in ["calendarusers/finalizers", "calendarsyncs/finalizers"] {
        expected.extend(verb_grants(
            namespace,
            "calsync.dev",
            finalizers,
            &["update"],
        ));
    }
    expected.extend(verb_grants(namespace, "", "events", &["create", "patch"]));
    expected.extend(verb_grants(
        namespace,
        "events.k8s.io",
        "events",
        &["create", "patch"],
    ));
    expected
}

fn crd_grants() -> BTreeSet<Grant> {
    ["calendarusers.calsync.dev", "calendarsyncs.calsync.dev"]
        .into_iter()
        .map(|crd| {
            (
                None,
                "apiextensions.k8s.io".to_string(),
                "customresourcedefinitions".to_string(),
                "get".to_string(),
                Some(crd.to_string()),
            )
        })
        .collect()
}

fn lease_grants(namespace: &str, lease: &str) -> BTreeSet<Grant> {
    let grant = |verb: &str, name: Option<&str>| {
        (
            Some(namespace.to_string()),
            "coordination.k8s.io".to_string(),
            "leases".to_string(),
            verb.to_string(),
            name.map(str::to_string),
        )
    };
    BTreeSet::from([
        grant("create", None),
        grant("get", Some(lease)),
        grant("update", Some(lease)),
    ])
}

fn secret_grants(namespace: &str, secret: &str) -> BTreeSet<Grant> {
    ["get", "list", "watch"]
        .into_iter()
        .map(|verb| {
            (
                Some(namespace.to_string()),
                String::new(),
                "secrets".to_string(),
                verb.to_string(),
                Some(secret.to_string()),
            )
        })
        .collect()
}

#[test]
fn lint_strict_passes() {
    let chart = chart_dir();
    let representative = values_file("representative.yaml");
    let url = format!("mytimetable.url={URL}");
    for extra in [
        vec!["--set", url.as_str()],
        vec!["--values", representative.to_str().unwrap()],
    ] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let output = run_helm(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "helm lint --strict {extra:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("0 chart(s) failed"),
            "unexpected lint output:\n{stdout}"
        );
        assert!(!stdout.contains("[WARNING]"), "lint warned:\n{stdout}");
        assert!(
            !stdout.contains("[ERROR]"),
            "lint reported an error:\n{stdout}"
        );
    }
}

#[test]
fn defaults_render_expected_objects() {
    let objects = template_defaults();
    let rendered: BTreeSet<(String, String)> = objects.iter().map(kind_and_name).collect();
    let expected: BTreeSet<(String, String)> = [
        ("ServiceAccount", "calsync-calsync-operator"),
        ("Service", "calsync-calsync-operator"),
        ("Deployment", "calsync-calsync-operator"),
        (
            "ClusterRole",
            "calsync-system-calsync-calsync-operator-crds",
        ),
        (
            "ClusterRoleBinding",
            "calsync-system-calsync-calsync-operator-crds",
        ),
        (
            "ClusterRole",
            "calsync-system-calsync-calsync-operator-read",
        ),
        (
            "ClusterRoleBinding",
            "calsync-system-calsync-calsync-operator-read",
        ),
        (
            "ClusterRole",
            "calsync-system-calsync-calsync-operator-write",
        ),
        (
            "ClusterRoleBinding",
            "calsync-system-calsync-calsync-operator-write",
        ),
        ("Role", "calsync-calsync-operator-leader-election"),
        ("RoleBinding", "calsync-calsync-operator-leader-election"),
        ("Role", "calsync-calsync-operator-token"),
        ("RoleBinding", "calsync-calsync-operator-token"),
    ]
    .into_iter()
    .map(|(kind, name)| (kind.to_string(), name.to_string()))
    .collect();
    assert_eq!(rendered, expected);
    assert_eq!(
        objects.len(),
        expected.len(),
        "an object was rendered twice"
    );
}

#[test]
fn defaults_pass_flags_of_run() {
    let objects = template_defaults();
    let expected = [
        "run",
        "--mytimetable-url=https://mytimetable.example.edu/api/v0",
        "--token-secret-namespace=calsync-system",
        "--token-secret-name=mytimetable-token",
        "--token-secret-key=token",
        "--resync-interval=5m",
        "--requests-per-second=20",
        "--max-concurrent-requests=8",
        "--request-timeout=30s",
        "--max-concurrent-reconciles=16",
        "--http-listen=0.0.0.0:8080",
        "--leader-election=true",
        "--lease-name=calsync-operator",
        "--lease-namespace=calsync-system",
        "--log-format=plain",
        "--log-level=info",
        "--shutdown-grace-period=30s",
    ];
    assert_eq!(args(&objects), expected);
}

#[test]
fn representative_values_reach_flags() {
    let objects = template_representative();
    let expected = [
        "run",
        "--mytimetable-url=https://mytimetable.example.edu/api/v0",
        "--token-secret-namespace=calsync-secrets",
        "--token-secret-name=mytimetable-provisioning",
        "--token-secret-key=api-token",
        "--ca-bundle=/etc/calsync-operator/ca/ca.pem",
        "--namespaces=faculty-science,faculty-humanities",
        "--label-selector=calsync.dev/instance=main",
        "--resync-interval=10m",
        "--requests-per-second=5",
        "--max-concurrent-requests=4",
        "--request-timeout=20s",
        "--max-concurrent-reconciles=8",
        "--http-listen=0.0.0.0:9090",
        "--leader-election=true",
        "--lease-name=calsync-operator-main",
        "--lease-namespace=calsync-leases",
        "--log-format=json",
        "--log-level=info,calsync_operator=debug",
        "--shutdown-grace-period=1m",
    ];
    assert_eq!(args(&objects), expected);
}

/// The `run` subcommand's flags on their own, to parse the chart's container args with the
/// same clap definition as the binary.
#[derive(Parser, Debug)]
struct RunCommand {
    #[command(flatten)]
    config: RunConfig,
}

/// Parses the rendered container args as `calsync-operator run` does and validates them.
fn parse_run_args(objects: &[Value]) -> RunConfig {
    let args = args(objects);
    assert_eq!(args[0], "run", "the container must run the run subcommand");
    let argv = std::iter::once("calsync-operator-run".to_string()).chain(args[1..].iter().cloned());
    let config = RunCommand::try_parse_from(argv)
        .unwrap_or_else(|error| {
            panic!("calsync-operator run rejects the chart's args {args:?}: {error}")
        })
        .config;
    if let Err(error) = config.validate() {
        panic!("calsync-operator run rejects the chart's args {args:?}: {error}");
    }
    config
}

#[test]
fn run_accepts_default_args() {
    let config = parse_run_args(&template_defaults());
    assert_eq!(
        config.token_source().unwrap(),
        TokenSource::Secret {
            namespace: "calsync-system".to_string(),
            name: "mytimetable-token".to_string(),
            key: "token".to_string(),
        }
    );
    assert_eq!(config.mytimetable_url.as_str(), URL);
    assert_eq!(config.leader_election, Some(true));
    assert_eq!(config.lease_namespace.as_deref(), Some("calsync-system"));
    assert_eq!(config.resync_interval, std::time::Duration::from_secs(300));
    assert_eq!(config.http_listen.port(), 8080);
    assert_eq!(config.namespaces, Vec::<String>::new());
}

#[test]
fn run_accepts_representative_args() {
    let config = parse_run_args(&template_representative());
    assert_eq!(config.namespaces, ["faculty-science", "faculty-humanities"]);
    assert_eq!(
        config.label_selector.as_deref(),
        Some("calsync.dev/instance=main")
    );
    assert_eq!(config.resync_interval, std::time::Duration::from_secs(600));
    assert_eq!(config.request_timeout, std::time::Duration::from_secs(20));
    assert_eq!(
        config.shutdown_grace_period,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(config.requests_per_second, 5);
    assert_eq!(config.max_concurrent_requests, 4);
    assert_eq!(config.max_concurrent_reconciles, 8);
    assert_eq!(config.http_listen.port(), 9090);
    assert_eq!(config.log_format, LogFormat::Json);
    assert_eq!(config.lease_name, "calsync-operator-main");
    assert_eq!(
        config.ca_bundle.as_deref(),
        Some(Path::new("/etc/calsync-operator/ca/ca.pem"))
    );
}

#[test]
fn run_accepts_file_token_args() {
    let objects = template(&[
        "--set",
        &format!("mytimetable.url={URL}"),
        "--set",
        "token.source=file",
        "--set",
        "leaderElection.enabled=false",
    ]);
    let config = parse_run_args(&objects);
    assert_eq!(
        config.token_source().unwrap(),
        TokenSource::File(PathBuf::from("/var/run/secrets/calsync.dev/token/token"))
    );
    assert_eq!(config.leader_election, Some(false));
}

#[test]
fn representative_values_reach_pod() {
    let objects = template_representative();
    let deployment = only(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = container(&objects);

    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        container["image"],
        "registry.example.edu/platform/calsync-operator:0.1.0"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "registry-credentials");
    assert_eq!(pod["priorityClassName"], "platform-critical");
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 70,
        "1m grace period plus 10 seconds"
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["example.edu/owner"],
        "platform-team"
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["example.edu/cost-centre"],
        "4711"
    );
    assert_eq!(container["resources"]["limits"]["memory"], "2Gi");
    assert_eq!(container["ports"][0]["containerPort"], 9090);

    let volume = pod["volumes"]
        .as_array()
        .expect("the CA bundle needs a volume")
        .iter()
        .find(|volume| volume["name"] == "ca-bundle")
        .expect("no ca-bundle volume");
    assert_eq!(volume["configMap"]["name"], "university-ca");
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/etc/calsync-operator/ca"
    );

    let service = only(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");

    let monitor = only(&objects, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "1m");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn deployment_is_hardened() {
    for objects in [template_defaults(), template_representative()] {
        let pod = &only(&objects, "Deployment")["spec"]["template"]["spec"];
        let container = container(&objects);

        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(
            container["securityContext"]["allowPrivilegeEscalation"],
            false
        );
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            container["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        assert!(container["securityContext"].get("privileged").is_none());

        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][kind][resource].is_null(),
                    "missing resources.{kind}.{resource}"
                );
            }
        }

        assert_eq!(container["ports"][0]["name"], "http");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");

        // The Lease identity and the Events' reporting instance come from the pod name.
        let pod_name = container["env"]
            .as_array()
            .expect("the container has no env")
            .iter()
            .find(|variable| variable["name"] == "POD_NAME")
            .expect("no POD_NAME variable");
        assert_eq!(
            pod_name["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
    }
}

#[test]
fn rbac_defaults_grant_least_privilege() {
    let objects = template_defaults();
    let mut expected = read_grants(None);
    expected.extend(write_grants(None));
    expected.extend(crd_grants());
    expected.extend(lease_grants("calsync-system", "calsync-operator"));
    expected.extend(secret_grants("calsync-system", "mytimetable-token"));
    assert_eq!(grants(&objects), expected);
}

#[test]
fn rbac_several_namespaces_write_per_namespace() {
    // Several watched namespaces share one cluster-wide watch, so reading is cluster-wide
    // while writing stays in the listed namespaces.
    let objects = template_representative();
    let mut expected = read_grants(None);
    expected.extend(write_grants(Some("faculty-science")));
    expected.extend(write_grants(Some("faculty-humanities")));
    expected.extend(crd_grants());
    expected.extend(lease_grants("calsync-leases", "calsync-operator-main"));
    expected.extend(secret_grants("calsync-secrets", "mytimetable-provisioning"));
    assert_eq!(grants(&objects), expected);
}

#[test]
fn rbac_one_namespace_binds_only_there() {
    let objects = template(&[
        "--set",
        &format!("mytimetable.url={URL}"),
        "--set",
        "watchNamespaces={faculty-science}",
    ]);
    let mut expected = read_grants(Some("faculty-science"));
    expected.extend(write_grants(Some("faculty-science")));
    expected.extend(crd_grants());
    expected.extend(lease_grants("calsync-system", "calsync-operator"));
    expected.extend(secret_grants("calsync-system", "mytimetable-token"));
    assert_eq!(grants(&objects), expected);

    // Only the CRD check is bound cluster-wide.
    let cluster_bindings: Vec<String> = find(&objects, "ClusterRoleBinding")
        .iter()
        .map(|binding| kind_and_name(binding).1)
        .collect();
    assert_eq!(
        cluster_bindings,
        ["calsync-system-calsync-calsync-operator-crds"]
    );
}

#[test]
fn rbac_has_no_wildcards() {
    for objects in [template_defaults(), template_representative()] {
        for role in objects
            .iter()
            .filter(|object| object["kind"] == "Role" || object["kind"] == "ClusterRole")
        {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    let values = rule[field].as_array().cloned().unwrap_or_default();
                    assert!(
                        !values
                            .iter()
                            .any(|value| value.as_str().unwrap().contains('*')),
                        "{} has a wildcard in {field}: {rule}",
                        kind_and_name(role).1
                    );
                }
            }
        }
    }
}

#[test]
fn file_token_needs_no_secret_rbac() {
    let objects = template(&[
        "--set",
        &format!("mytimetable.url={URL}"),
        "--set",
        "token.source=file",
    ]);

    let secret_rules: Vec<Grant> = grants(&objects)
        .into_iter()
        .filter(|(_, _, resource, _, _)| resource == "secrets")
        .collect();
    assert_eq!(secret_rules, Vec::<Grant>::new());

    let args = args(&objects);
    assert!(
        args.contains(&"--token-file=/var/run/secrets/calsync.dev/token/token".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|arg| arg.starts_with("--token-secret")),
        "{args:?}"
    );

    let pod = &only(&objects, "Deployment")["spec"]["template"]["spec"];
    let volume = &pod["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], "mytimetable-token");
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert_eq!(
        pod["securityContext"]["fsGroup"], 65532,
        "the group must be able to read the file"
    );
    let mount = &container(&objects)["volumeMounts"][0];
    assert_eq!(mount["mountPath"], "/var/run/secrets/calsync.dev/token");
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees a rotated token"
    );
}

#[test]
fn disabled_leader_election_recreates_pods() {
    let objects = template(&[
        "--set",
        &format!("mytimetable.url={URL}"),
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert_eq!(
        only(&objects, "Deployment")["spec"]["strategy"]["type"],
        "Recreate"
    );
    assert!(
        find(&objects, "Role")
            .iter()
            .all(|role| !kind_and_name(role).1.ends_with("leader-election"))
    );
    let args = args(&objects);
    assert!(
        args.contains(&"--leader-election=false".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|arg| arg.starts_with("--lease-")),
        "{args:?}"
    );

    let enabled = template_defaults();
    assert_eq!(
        only(&enabled, "Deployment")["spec"]["strategy"]["type"],
        "RollingUpdate"
    );
}

#[test]
fn label_selector_stays_one_argument() {
    let objects = template(&[
        "--set",
        &format!("mytimetable.url={URL}"),
        "--set-string",
        "labelSelector=!legacy\\,tier in (gold: silver)",
    ]);
    let args = args(&objects);
    assert!(
        args.contains(&"--label-selector=!legacy,tier in (gold: silver)".to_string()),
        "{args:?}"
    );
}

#[test]
fn invalid_values_fail_naming_value() {
    let cases = [
        ("invalid-missing-url.yaml", "mytimetable.url is required"),
        ("invalid-url.yaml", "at '/mytimetable/url'"),
        (
            "invalid-log-format.yaml",
            "at '/logFormat': value must be one of 'plain', 'json'",
        ),
        (
            "invalid-resync-interval.yaml",
            "at '/resyncInterval': '5 minutes' does not match",
        ),
        (
            "invalid-replica-count.yaml",
            "at '/replicaCount': got string, want integer",
        ),
        (
            "invalid-unknown-key.yaml",
            "additional properties 'tokn' not allowed",
        ),
        (
            "invalid-token-source.yaml",
            "at '/token/source': value must be one of 'secret', 'file'",
        ),
        (
            "invalid-watch-namespace.yaml",
            "at '/watchNamespaces/0': 'Faculty_Science' does not match",
        ),
        ("invalid-memory-limit.yaml", "at '/resources/limits/memory'"),
        (
            "invalid-replicas-without-leader.yaml",
            "replicaCount greater than 1 requires leaderElection.enabled=true",
        ),
    ];

    // Every invalid-*.yaml file has a case, so a new file cannot go untested.
    let files: BTreeSet<String> = std::fs::read_dir(repo_root().join("tests/chart-values"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("invalid-"))
        .collect();
    let covered: BTreeSet<String> = cases.iter().map(|(file, _)| file.to_string()).collect();
    assert_eq!(files, covered);

    for (file, expected) in cases {
        let path = values_file(file);
        match try_template(&["--values", path.to_str().unwrap()]) {
            Ok(_) => panic!("{file}: helm template accepted invalid values"),
            Err(stderr) => assert!(
                stderr.contains(expected),
                "{file}: expected {expected:?} in:\n{stderr}"
            ),
        }
    }
}

#[test]
fn chart_crds_match_top_level_crds() {
    let read = |dir: PathBuf| -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let top_level = read(repo_root().join("crds"));
    let chart = read(chart_dir().join("crds"));

    let names: Vec<&str> = top_level.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "calendarsyncs.calsync.dev.yaml",
            "calendarusers.calsync.dev.yaml"
        ]
    );
    assert!(
        top_level == chart,
        "charts/calsync-operator/crds/ differs from crds/; run `make crds` to copy them"
    );
}

#[test]
fn readme_lists_every_value() {
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();

    // Maps with user-chosen keys and lists are one row; other maps list each leaf.
    let whole = [
        "imagePullSecrets",
        "watchNamespaces",
        "service.annotations",
        "serviceMonitor.labels",
        "serviceAccount.annotations",
        "securityContext.capabilities.drop",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
    ];
    let mut keys = Vec::new();
    let mut stack = vec![(String::new(), &values)];
    while let Some((prefix, value)) = stack.pop() {
        match value.as_object() {
            Some(map) if !whole.contains(&prefix.as_str()) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    stack.push((path, child));
                }
            }
            _ => keys.push(prefix),
        }
    }
    assert!(
        keys.len() > 40,
        "values.yaml parsed into only {} keys",
        keys.len()
    );
    for key in keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "charts/calsync-operator/README.md has no row for `{key}`"
        );
    }
}

/// Runs a command to completion and panics with its output when it fails.
fn run_ok(mut command: Command, description: &str) -> String {
    let output = command
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("failed to run {description}: {error}"));
    assert!(
        output.status.success(),
        "{description} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `helm ARGS --kubeconfig KUBECONFIG` against a test control plane.
fn helm_on(control_plane: &ControlPlane, args: &[&str]) -> String {
    let mut command = helm_command();
    command
        .args(args)
        .arg("--kubeconfig")
        .arg(control_plane.kubeconfig());
    run_ok(command, &format!("helm {}", args.join(" ")))
}

/// Returns whether `kubectl auth can-i` allows `request` (verb, resource and flags) to the
/// ServiceAccount `account` of namespace `account_namespace`.
fn service_account_can(
    control_plane: &ControlPlane,
    account_namespace: &str,
    account: &str,
    request: &[&str],
) -> bool {
    let output = control_plane
        .kubectl()
        .args(["auth", "can-i"])
        .args(request)
        .arg(format!(
            "--as=system:serviceaccount:{account_namespace}:{account}"
        ))
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "failed to run kubectl auth can-i"));
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {request:?} printed {answer:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[tokio::test]
async fn install_grants_service_account_least_privilege() {
    let Some(control_plane) = ControlPlane::shared_or_skip() else {
        return;
    };
    let client = control_plane.client().await;

    // Phase 1: the namespaces the representative values name, made unique for this run.
    let release = TestNamespace::create(&client, "chart-release").await;
    let secrets = TestNamespace::create(&client, "chart-secrets").await;
    let leases = TestNamespace::create(&client, "chart-leases").await;
    let watched = TestNamespace::create(&client, "chart-watched").await;
    let also_watched = TestNamespace::create(&client, "chart-also-watched").await;
    let unwatched = TestNamespace::create(&client, "chart-unwatched").await;
    let (release_ns, secrets_ns, leases_ns, watched_ns, also_watched_ns, unwatched_ns) = (
        release.name(),
        secrets.name(),
        leases.name(),
        watched.name(),
        also_watched.name(),
        unwatched.name(),
    );

    // Phase 2: install the chart with the representative values into the API server.
    let chart = chart_dir();
    let representative = values_file("representative.yaml");
    let overrides = format!(
        "token.secretNamespace={secrets_ns},leaderElection.leaseNamespace={leases_ns},\
         watchNamespaces={{{watched_ns},{also_watched_ns}}},serviceMonitor.enabled=false"
    );
    helm_on(
        control_plane,
        &[
            "install",
            "calsync",
            chart.to_str().unwrap(),
            "--namespace",
            release_ns,
            "--values",
            representative.to_str().unwrap(),
            "--set",
            &overrides,
        ],
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), release_ns);
    let deployment = deployments
        .get("calsync-calsync-operator")
        .await
        .expect("helm install created the Deployment");
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), watched_ns);
    bindings
        .get("calsync-calsync-operator-write")
        .await
        .expect("helm install bound the write role in the watched namespace");

    // Phase 3: ask the API server's RBAC authorizer what the ServiceAccount may do.
    let account = "calsync-calsync-operator";
    // Each case: the request to `kubectl auth can-i`, the namespace (None: cluster scope or
    // all namespaces), and whether it must be allowed.
    let (watched, also, unwatched) = (Some(watched_ns), Some(also_watched_ns), Some(unwatched_ns));
    let cases: Vec<(&str, Option<&str>, bool)> = vec![
        ("watch calendarusers.calsync.dev", watched, true),
        ("list calendarsyncs.calsync.dev", watched, true),
        ("patch calendarusers.calsync.dev", watched, true),
        ("delete calendarsyncs.calsync.dev", watched, true),
        ("delete calendarusers.calsync.dev", watched, false),
        ("create calendarusers.calsync.dev", watched, false),
        (
            "patch calendarsyncs.calsync.dev --subresource=status",
            watched,
            true,
        ),
        (
            "update calendarusers.calsync.dev --subresource=finalizers",
            watched,
            true,
        ),
        ("create events", watched, true),
        ("patch events.events.k8s.io", watched, true),
        // Two watched namespaces share one cluster-wide watch: reading is cluster-wide,
        // writing is limited to the watched namespaces.
        ("delete calendarsyncs.calsync.dev", also, true),
        (
            "list calendarusers.calsync.dev --all-namespaces",
            None,
            true,
        ),
        (
            "watch calendarsyncs.calsync.dev --all-namespaces",
            None,
            true,
        ),
        ("list calendarusers.calsync.dev", unwatched, true),
        ("patch calendarusers.calsync.dev", unwatched, false),
        ("delete calendarsyncs.calsync.dev", unwatched, false),
        (
            "patch calendarsyncs.calsync.dev --subresource=status",
            unwatched,
            false,
        ),
        ("create events", unwatched, false),
        ("create events.events.k8s.io", unwatched, false),
        (
            "get secrets/mytimetable-provisioning",
            Some(secrets_ns),
            true,
        ),
        (
            "watch secrets/mytimetable-provisioning",
            Some(secrets_ns),
            true,
        ),
        ("get secrets/another-secret", Some(secrets_ns), false),
        ("list secrets", Some(secrets_ns), false),
        (
            "get secrets/mytimetable-provisioning",
            Some(release_ns),
            false,
        ),
        ("create leases.coordination.k8s.io", Some(leases_ns), true),
        (
            "update leases.coordination.k8s.io/calsync-operator-main",
            Some(leases_ns),
            true,
        ),
        (
            "update leases.coordination.k8s.io/another-lease",
            Some(leases_ns),
            false,
        ),
        (
            "delete leases.coordination.k8s.io/calsync-operator-main",
            Some(leases_ns),
            false,
        ),
        (
            "get customresourcedefinitions/calendarusers.calsync.dev",
            None,
            true,
        ),
        (
            "get customresourcedefinitions/calendarsyncs.calsync.dev",
            None,
            true,
        ),
        ("list customresourcedefinitions", None, false),
        (
            "update customresourcedefinitions/calendarusers.calsync.dev",
            None,
            false,
        ),
        ("get pods", Some(release_ns), false),
        ("get configmaps", Some(release_ns), false),
    ];
    let mut wrong = Vec::new();
    for (request, namespace, expected) in cases {
        let mut arguments: Vec<&str> = request.split(' ').collect();
        if let Some(namespace) = namespace {
            arguments.extend(["-n", namespace]);
        }
        if service_account_can(control_plane, release_ns, account, &arguments) != expected {
            let answer = if expected { "yes" } else { "no" };
            wrong.push(format!("{arguments:?}: expected {answer}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC differs from the chart README:\n{}",
        wrong.join("\n")
    );

    // Phase 4: the token watch selects the Secret by name, which the name-limited role
    // admits, while a list of every Secret in the namespace is forbidden.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("mytimetable-provisioning".to_string()),
            ..ObjectMeta::default()
        },
        string_data: Some([("api-token".to_string(), "placeholder".to_string())].into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), secrets_ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("failed to create the token Secret");
    let impersonate = format!("--as=system:serviceaccount:{release_ns}:{account}");
    let mut selected = control_plane.kubectl();
    selected.args([
        "get",
        "secrets",
        "-n",
        secrets_ns,
        "--field-selector=metadata.name=mytimetable-provisioning",
        "-o",
        "name",
        &impersonate,
    ]);
    assert_eq!(
        run_ok(selected, "kubectl get secrets --field-selector").trim(),
        "secret/mytimetable-provisioning"
    );
    let unselected = control_plane
        .kubectl()
        .args([
            "get",
            "secrets",
            "-n",
            secrets_ns,
            "-o",
            "name",
            &impersonate,
        ])
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        !unselected.status.success(),
        "listing every Secret must be forbidden"
    );
    assert!(
        String::from_utf8_lossy(&unselected.stderr).contains("Forbidden"),
        "{}",
        String::from_utf8_lossy(&unselected.stderr)
    );

    // Phase 5: an upgrade to a mounted token file removes the Secret permissions.
    helm_on(
        control_plane,
        &[
            "upgrade",
            "calsync",
            chart.to_str().unwrap(),
            "--namespace",
            release_ns,
            "--reuse-values",
            "--set",
            "token.source=file",
        ],
    );
    let secret_request = ["get", "secrets/mytimetable-provisioning", "-n", secrets_ns];
    assert!(!service_account_can(
        control_plane,
        release_ns,
        account,
        &secret_request
    ));

    // Phase 6: uninstall removes the cluster-scoped roles as well.
    helm_on(
        control_plane,
        &["uninstall", "calsync", "--namespace", release_ns],
    );
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let role_name = format!("{release_ns}-calsync-calsync-operator-write");
    assert!(
        cluster_roles.get_opt(&role_name).await.unwrap().is_none(),
        "helm uninstall left ClusterRole {role_name}"
    );
}

#[tokio::test]
async fn first_install_creates_crds_and_uninstall_keeps_them() {
    // A private control plane that never had the CRDs, as a cluster before the first install.
    // Deleting them from a shared one instead would wait for the apiextensions finalizer,
    // which can take longer than any fixed timeout on a loaded machine.
    if std::env::var(SKIP_CONTROL_PLANE_ENV).as_deref() == Ok("1") {
        eprintln!("skipped: {SKIP_CONTROL_PLANE_ENV}=1 is set and this test needs a control plane");
        return;
    }
    let control_plane = ControlPlane::builder()
        .install_crds(false)
        .start()
        .unwrap_or_else(|error| panic!("the control plane did not start: {error}"));
    let client = control_plane.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names = ["calendarusers.calsync.dev", "calendarsyncs.calsync.dev"];

    for name in names {
        assert!(
            crds.get_opt(name).await.unwrap().is_none(),
            "{name} is installed before the chart"
        );
    }

    let release = TestNamespace::create(&client, "chart-crds").await;
    let chart = chart_dir();
    let url = format!("mytimetable.url={URL}");
    helm_on(
        &control_plane,
        &[
            "install",
            "calsync",
            chart.to_str().unwrap(),
            "--namespace",
            release.name(),
            "--set",
            &url,
        ],
    );
    let mut established = control_plane.kubectl();
    established
        .args(["wait", "--for=condition=Established", "--timeout=60s"])
        .args(names.map(|name| format!("crd/{name}")));
    run_ok(established, "kubectl wait for the chart's CRDs");

    // The chart's CRDs accept the example manifests.
    let mut apply = control_plane.kubectl();
    apply
        .args(["apply", "--server-side", "-k"])
        .arg(repo_root().join("examples"));
    run_ok(apply, "kubectl apply -k examples/");

    // The CRD upgrade the chart README documents, with a newer chart whose CRD changed a
    // field that Helm wrote at install time.
    let newer = newer_chart_with_changed_crd("calendarusers.calsync.dev.yaml", "upgraded schema");
    let show = helm_command()
        .args(["show", "crds"])
        .arg(newer.path())
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{}: {error}", "failed to run helm show crds"));
    assert!(
        show.status.success(),
        "helm show crds failed: {}",
        String::from_utf8_lossy(&show.stderr)
    );
    let mut upgrade = control_plane.kubectl();
    upgrade
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = upgrade.spawn().expect("failed to run kubectl apply");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &show.stdout).unwrap();
    let applied = wait_with_output_within(child, "kubectl", COMMAND_TIMEOUT)
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        applied.status.success(),
        "the documented CRD upgrade failed: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let upgraded = crds.get(names[0]).await.unwrap();
    let schema = upgraded.spec.versions[0].schema.as_ref().unwrap();
    assert_eq!(
        schema
            .open_api_v3_schema
            .as_ref()
            .unwrap()
            .description
            .as_deref(),
        Some("upgraded schema")
    );

    helm_on(
        &control_plane,
        &["uninstall", "calsync", "--namespace", release.name()],
    );
    for name in names {
        assert!(
            crds.get_opt(name).await.unwrap().is_some(),
            "helm uninstall deleted {name}"
        );
    }
}

/// Copies the chart into a temporary folder and replaces the top-level schema description of
/// one of its CRDs, as a later chart version with a changed CRD would.
fn newer_chart_with_changed_crd(file: &str, description: &str) -> tempfile::TempDir {
    let folder = tempfile::tempdir().expect("failed to create a temporary folder");
    copy_folder(&chart_dir(), folder.path());

    let path = folder.path().join("crds").join(file);
    let mut crd: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] =
        Value::from(description);
    // JSON is valid YAML, so the file stays a valid CRD manifest.
    std::fs::write(&path, serde_json::to_string_pretty(&crd).unwrap()).unwrap();
    folder
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

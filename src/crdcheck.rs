//! The start-up check of the installed CustomResourceDefinitions.
//!
//! Helm installs a chart's `crds/` folder once and never upgrades it, so after an upgrade of
//! the operator the cluster may still serve the CRDs of an older version. kube-apiserver then
//! prunes every field its schema lacks: status fields the controller writes would vanish
//! silently, and spec fields users set would be dropped before the controller reads them.
//! `calsync-operator run` therefore reads both installed CRDs first and stops with a message
//! that names the missing fields and the command that upgrades the CRDs.
//!
//! The required fields are derived from the schema that the Rust types generate, the same
//! schema that `calsync-operator crds` prints, so the check never falls behind the types. Only
//! the presence of fields is compared: types and validation rules of the installed schema are
//! enforced by kube-apiserver itself.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::ResourceExt;
use kube::api::Api;

use crate::resources::{self, VERSION};

/// The command that installs or upgrades the CRDs, run in the source tree of this version.
pub const UPGRADE_COMMAND: &str = "kubectl apply --server-side --force-conflicts -f crds/";

/// Attempts to read a CRD while kube-apiserver is unreachable or fails, for example during a
/// restart of the cluster's control plane. The delays double from 1 s to at most 8 s, so the
/// attempts span about 15 s before start-up fails.
const READ_ATTEMPTS: usize = 5;

/// A failure of the start-up check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An installed CRD could not be read; the message names the permission to grant the permission when
    /// the request was forbidden.
    #[error("reading the CustomResourceDefinition {name} failed{hint}")]
    Read {
        name: String,
        hint: &'static str,
        #[source]
        source: kube::Error,
    },
    /// The installed CRDs are missing, or lack fields or features this version needs.
    #[error("{0}")]
    Outdated(Outdated),
}

/// The problems found in the installed CRDs, with the command that fixes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    pub findings: Vec<Finding>,
}

/// One problem of one installed CRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The CRD is not installed at all.
    NotInstalled { crd: String },
    /// The CRD does not serve the version this controller reads and writes.
    VersionNotServed { crd: String, version: String },
    /// The served version's schema lacks these fields (dotted paths, `[]` for list items).
    MissingFields { crd: String, fields: Vec<String> },
    /// The served version has no status subresource, which the controller writes through.
    NoStatusSubresource { crd: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NotInstalled { crd } => write!(f, "{crd} is not installed"),
            Finding::VersionNotServed { crd, version } => {
                write!(f, "{crd} does not serve version {version}")
            }
            Finding::MissingFields { crd, fields } => {
                write!(f, "{crd} {VERSION} lacks the fields {}", fields.join(", "))
            }
            Finding::NoStatusSubresource { crd } => {
                write!(f, "{crd} {VERSION} has no status subresource")
            }
        }
    }
}

impl fmt::Display for Outdated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let findings: Vec<String> = self.findings.iter().map(Finding::to_string).collect();
        write!(
            f,
            "the installed CustomResourceDefinitions do not match calsync-operator {}: {}. \
             Install the CRDs of this version with `{UPGRADE_COMMAND}` in its source tree, or \
             with `helm show crds <chart> | kubectl apply --server-side --force-conflicts -f -` \
             for the Helm chart, because Helm never upgrades CRDs",
            env!("CARGO_PKG_VERSION"),
            findings.join("; ")
        )
    }
}

/// Reads the installed CalendarUser and CalendarSync CRDs and checks them against the
/// schema of this version's Rust types.
pub async fn check(client: &kube::Client) -> Result<(), Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut findings = Vec::new();
    for expected in resources::crds() {
        let name = expected.name_any();
        let installed = read(&api, &name).await?;
        findings.extend(compare(&expected, installed.as_ref()));
    }
    if findings.is_empty() {
        tracing::debug!("The installed CRDs have every field this version needs");
        Ok(())
    } else {
        Err(Error::Outdated(Outdated { findings }))
    }
}

/// Reads one CRD, retrying while kube-apiserver is unreachable or fails.
async fn read(
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> Result<Option<CustomResourceDefinition>, Error> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(READ_ATTEMPTS - 1);
    (|| api.get_opt(name))
        .retry(backoff)
        .when(is_transient)
        .notify(|error, delay| {
            tracing::warn!(crd = name, %error, retry_in_ms = delay.as_millis() as u64, "Reading a CRD failed");
        })
        .await
        .map_err(|source| {
            let hint = match &source {
                kube::Error::Api(status) if status.is_forbidden() => {
                    ": grant get on customresourcedefinitions.apiextensions.k8s.io for the two \
                     calsync.dev CRDs, as the Helm chart's ClusterRole does"
                }
                _ => "",
            };
            Error::Read {
                name: name.to_string(),
                hint,
                source,
            }
        })
}

// A response of kube-apiserver other than a server error is final; everything else (a 5xx,
// a refused connection, a timeout) may pass.
fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500,
        _ => true,
    }
}

/// Compares an installed CRD, or its absence, with the expected one.
pub fn compare(
    expected: &CustomResourceDefinition,
    installed: Option<&CustomResourceDefinition>,
) -> Vec<Finding> {
    let crd = expected.name_any();
    let Some(installed) = installed else {
        return vec![Finding::NotInstalled { crd }];
    };
    let served = installed
        .spec
        .versions
        .iter()
        .find(|version| version.name == VERSION && version.served);
    let Some(served) = served else {
        return vec![Finding::VersionNotServed {
            crd,
            version: VERSION.to_string(),
        }];
    };

    let mut findings = Vec::new();
    let missing = missing_fields(schema_of(expected), served_schema(served));
    if !missing.is_empty() {
        findings.push(Finding::MissingFields {
            crd: crd.clone(),
            fields: missing,
        });
    }
    let has_status = served
        .subresources
        .as_ref()
        .is_some_and(|subresources| subresources.status.is_some());
    if !has_status {
        findings.push(Finding::NoStatusSubresource { crd });
    }
    findings
}

fn schema_of(crd: &CustomResourceDefinition) -> Option<&JSONSchemaProps> {
    let version = crd
        .spec
        .versions
        .iter()
        .find(|version| version.name == VERSION)?;
    served_schema(version)
}

fn served_schema(
    version: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion,
) -> Option<&JSONSchemaProps> {
    version.schema.as_ref()?.open_api_v3_schema.as_ref()
}

/// Returns the fields of `expected` that `installed` lacks, as dotted paths with `[]` for the
/// items of a list and `*` for the values of a map. Only the outermost field of a missing
/// subtree is named. A field under an installed object that keeps unknown fields
/// (`x-kubernetes-preserve-unknown-fields`) counts as present, because kube-apiserver keeps
/// it.
pub fn missing_fields(
    expected: Option<&JSONSchemaProps>,
    installed: Option<&JSONSchemaProps>,
) -> Vec<String> {
    let mut missing = Vec::new();
    if let Some(expected) = expected {
        match installed {
            Some(installed) => collect_missing(expected, installed, "", &mut missing),
            // No schema at all: kube-apiserver rejects such a CRD in apiextensions.k8s.io/v1,
            // but name the top-level fields in case one was stored without it.
            None => missing.extend(properties(expected).keys().cloned()),
        }
    }
    missing
}

fn collect_missing(
    expected: &JSONSchemaProps,
    installed: &JSONSchemaProps,
    path: &str,
    missing: &mut Vec<String>,
) {
    if installed.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    let installed_properties = properties(installed);
    for (name, expected_child) in properties(expected) {
        let child_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match installed_properties.get(name) {
            Some(installed_child) => {
                collect_missing(expected_child, installed_child, &child_path, missing)
            }
            None => missing.push(child_path),
        }
    }

    let nested = [
        (items(expected), items(installed), "[]"),
        (
            additional_properties(expected),
            additional_properties(installed),
            ".*",
        ),
    ];
    for (expected_child, installed_child, suffix) in nested {
        let Some(expected_child) = expected_child else {
            continue;
        };
        let child_path = format!("{path}{suffix}");
        match installed_child {
            Some(installed_child) => {
                collect_missing(expected_child, installed_child, &child_path, missing)
            }
            None => missing.push(child_path),
        }
    }
}

fn properties(schema: &JSONSchemaProps) -> &BTreeMap<String, JSONSchemaProps> {
    static EMPTY: BTreeMap<String, JSONSchemaProps> = BTreeMap::new();
    schema.properties.as_ref().unwrap_or(&EMPTY)
}

fn items(schema: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match schema.items.as_ref()? {
        JSONSchemaPropsOrArray::Schema(item) => Some(item),
        // A tuple schema; the Rust types generate none, and the first entry stands for all.
        JSONSchemaPropsOrArray::Schemas(items) => items.first(),
    }
}

fn additional_properties(schema: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match schema.additional_properties.as_ref()? {
        JSONSchemaPropsOrBool::Schema(value) => Some(value),
        JSONSchemaPropsOrBool::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema(value: serde_json::Value) -> JSONSchemaProps {
        serde_json::from_value(value).expect("a valid schema")
    }

    // `resources::crds()` returns the CalendarUser CRD first.
    fn user_crd() -> CustomResourceDefinition {
        resources::crds().remove(0)
    }

    fn sync_crd() -> CustomResourceDefinition {
        resources::crds().remove(1)
    }

    // Removes the property at `path` (dotted, `[]` for list items) from a CRD's schema.
    fn without(mut crd: CustomResourceDefinition, path: &str) -> CustomResourceDefinition {
        let version = &mut crd.spec.versions[0];
        let mut node = version
            .schema
            .as_mut()
            .and_then(|schema| schema.open_api_v3_schema.as_mut())
            .expect("a schema");
        let mut segments: Vec<&str> = path.split('.').collect();
        let last = segments.pop().expect("a path");
        for segment in segments {
            let (name, item) = match segment.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (segment, false),
            };
            node = node.properties.as_mut().unwrap().get_mut(name).unwrap();
            if item {
                let Some(JSONSchemaPropsOrArray::Schema(inner)) = node.items.as_mut() else {
                    panic!("{segment} is not a list");
                };
                node = inner;
            }
        }
        node.properties.as_mut().unwrap().remove(last).expect(path);
        crd
    }

    #[test]
    fn current_crds_pass() {
        for crd in resources::crds() {
            assert_eq!(compare(&crd, Some(&crd)), Vec::new(), "{}", crd.name_any());
        }
    }

    #[test]
    fn nested_fields_are_named_by_path() {
        let sync = sync_crd();
        let mut all = Vec::new();
        let empty = schema(json!({"type": "object"}));
        collect_missing(schema_of(&sync).unwrap(), &empty, "", &mut all);
        assert_eq!(all, vec!["spec", "status"]);
        let reduced = without(
            without(sync_crd(), "status.pendingCreate.since"),
            "status.conditions[].observedGeneration",
        );
        let missing = missing_fields(schema_of(&sync), schema_of(&reduced));
        assert_eq!(
            missing,
            vec![
                "status.conditions[].observedGeneration",
                "status.pendingCreate.since",
            ]
        );
    }

    #[test]
    fn missing_subtree_is_named_once() {
        let user = user_crd();
        let reduced = without(user_crd(), "status");
        let findings = compare(&user, Some(&reduced));
        assert_eq!(
            findings,
            vec![Finding::MissingFields {
                crd: "calendarusers.calsync.dev".to_string(),
                fields: vec!["status".to_string()],
            }]
        );
    }

    #[test]
    fn preserved_unknown_fields_count_as_present() {
        let expected = schema(json!({
            "type": "object",
            "properties": {"status": {"type": "object", "properties": {"syncId": {"type": "integer"}}}}
        }));
        let installed = schema(json!({
            "type": "object",
            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
        }));
        assert_eq!(
            missing_fields(Some(&expected), Some(&installed)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn map_values_are_compared() {
        let expected = schema(json!({
            "type": "object",
            "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}}
        }));
        let installed = schema(json!({
            "type": "object",
            "properties": {"labels": {"type": "object"}}
        }));
        assert_eq!(
            missing_fields(Some(&expected), Some(&installed)),
            vec!["labels.*"]
        );
    }

    #[test]
    fn absent_crd_and_unserved_version_are_reported() {
        let expected = sync_crd();
        assert_eq!(
            compare(&expected, None),
            vec![Finding::NotInstalled {
                crd: "calendarsyncs.calsync.dev".to_string()
            }]
        );
        let mut unserved = expected.clone();
        unserved.spec.versions[0].served = false;
        assert_eq!(
            compare(&expected, Some(&unserved)),
            vec![Finding::VersionNotServed {
                crd: "calendarsyncs.calsync.dev".to_string(),
                version: VERSION.to_string(),
            }]
        );
    }

    #[test]
    fn missing_status_subresource_is_reported() {
        let expected = user_crd();
        let mut installed = expected.clone();
        installed.spec.versions[0].subresources = None;
        assert_eq!(
            compare(&expected, Some(&installed)),
            vec![Finding::NoStatusSubresource {
                crd: "calendarusers.calsync.dev".to_string()
            }]
        );
    }

    #[test]
    fn message_names_fields_and_fix() {
        let outdated = Outdated {
            findings: vec![Finding::MissingFields {
                crd: "calendarsyncs.calsync.dev".to_string(),
                fields: vec![
                    "spec.unlinkMode".to_string(),
                    "status.pendingCreate".to_string(),
                ],
            }],
        };
        let message = outdated.to_string();
        assert!(
            message.contains("calendarsyncs.calsync.dev v1alpha1 lacks the fields spec.unlinkMode, status.pendingCreate"),
            "{message}"
        );
        assert!(message.contains(UPGRADE_COMMAND), "{message}");
        assert!(message.contains(env!("CARGO_PKG_VERSION")), "{message}");
    }
}

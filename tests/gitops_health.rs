//! The Argo CD health check in gitops/. The ConfigMap embeds the checked-in Lua script for
//! both kinds. The script, run by Lua 5.1 (the language version of the gopher-lua interpreter
//! in Argo CD), maps the Ready condition and observedGeneration of objects in the shape the
//! operator writes to the expected health.
//!
//! The interpreter is `$CALSYNC_LUA`, else `lua5.1` from PATH, which `scripts/install-tools.sh`
//! installs from Debian's packages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use calsync_operator::resources::{
    CONDITION_READY, CalendarSync, CalendarSyncSpec, CalendarSyncStatus, CalendarUser,
    CalendarUserSpec, CalendarUserStatus, DeletionPolicy, UnlinkMode, UserReference, condition,
    reason,
};
use calsync_operator::testenv::{BoundedOutput, COMMAND_TIMEOUT};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::Value;

const GENERATION: i64 = 3;

fn gitops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gitops")
}

fn lua_interpreter() -> String {
    std::env::var("CALSYNC_LUA").unwrap_or_else(|_| "lua5.1".to_string())
}

/// Renders a JSON value as a Lua table constructor, the form Argo CD hands objects to
/// health scripts in (JSON null becomes nil).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => lua_string(text),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(key, field)| format!("[{}] = {}", lua_string(key), lua_literal(field)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
    }
}

fn lua_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for character in text.chars() {
        match character {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '\n' => quoted.push_str("\\n"),
            // Lua 5.1 strings hold bytes; a decimal escape writes any other control byte.
            control if (control as u32) < 0x20 => {
                quoted.push_str(&format!("\\{}", control as u32));
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// Runs the health script on `object` and returns the status and message it returns.
fn health_of(object: &Value) -> (String, String) {
    let script = gitops_dir().join("argocd-health.lua");
    let chunk = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message)",
        lua_literal(object),
        lua_string(&script.to_string_lossy())
    );
    let interpreter = lua_interpreter();
    let output = Command::new(&interpreter)
        .arg("-e")
        .arg(&chunk)
        .output_within(COMMAND_TIMEOUT)
        .unwrap_or_else(|error| {
            panic!(
                "cannot run the Lua interpreter {interpreter:?}: {error}; install it with \
                 `apt-get install lua5.1` (scripts/install-tools.sh does) or set CALSYNC_LUA"
            )
        });
    assert!(
        output.status.success(),
        "the health script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let (status, message) = stdout.split_once('\n').expect("status and message");
    (status.to_string(), message.to_string())
}

fn sync(status: Option<CalendarSyncStatus>) -> Value {
    let mut object = CalendarSync::new(
        "alice-o365",
        CalendarSyncSpec {
            user_ref: UserReference {
                name: "alice".to_string(),
            },
            type_: "o365".to_string(),
            smtp_address: None,
            unlink_mode: UnlinkMode::UnlinkOnly,
            deletion_policy: DeletionPolicy::Delete,
        },
    );
    object.metadata.namespace = Some("faculty-science".to_string());
    object.metadata.generation = Some(GENERATION);
    object.status = status;
    serde_json::to_value(object).expect("a CalendarSync serializes")
}

// A CalendarSync status with a Ready condition; `observed` and `condition_observed` are the
// generations of the status and of the condition.
fn sync_status(
    ready: bool,
    reason: &str,
    observed: i64,
    condition_observed: i64,
) -> Option<CalendarSyncStatus> {
    Some(CalendarSyncStatus {
        observed_generation: Some(observed),
        sync_id: ready.then_some(7),
        username: Some("alice".to_string()),
        conditions: vec![condition(
            CONDITION_READY,
            ready,
            reason,
            format!("a message about {reason}"),
            Some(condition_observed),
            None,
        )],
        ..CalendarSyncStatus::default()
    })
}

#[test]
fn argocd_config_map_embeds_the_script() {
    let script = std::fs::read_to_string(gitops_dir().join("argocd-health.lua"))
        .expect("read argocd-health.lua");
    let yaml =
        std::fs::read_to_string(gitops_dir().join("argocd-cm.yaml")).expect("read argocd-cm.yaml");
    let config_map: ConfigMap = serde_saphyr::from_str(&yaml).expect("argocd-cm.yaml parses");
    let data: BTreeMap<String, String> = config_map.data.expect("data");
    for kind in ["CalendarUser", "CalendarSync"] {
        let key = format!("resource.customizations.health.calsync.dev_{kind}");
        let embedded = data
            .get(&key)
            .unwrap_or_else(|| panic!("argocd-cm.yaml has no {key}"));
        assert!(
            embedded == &script,
            "{key} in argocd-cm.yaml differs from argocd-health.lua; copy the file into it"
        );
    }
}

#[test]
fn lua_health_follows_ready_and_generation() {
    let g = GENERATION;
    let cases = [
        ("no status yet", sync(None), "Progressing"),
        (
            "ready for this generation",
            sync(sync_status(true, reason::PROVISIONED, g, g)),
            "Healthy",
        ),
        (
            "adopted for this generation",
            sync(sync_status(true, reason::ADOPTED, g, g)),
            "Healthy",
        ),
        (
            "status of an older generation",
            sync(sync_status(true, reason::PROVISIONED, g - 1, g - 1)),
            "Progressing",
        ),
        (
            "condition of an older generation",
            sync(sync_status(true, reason::PROVISIONED, g, g - 1)),
            "Progressing",
        ),
        (
            "conflict",
            sync(sync_status(false, reason::CONFLICT, g, g)),
            "Degraded",
        ),
        (
            "rejected token",
            sync(sync_status(false, reason::UNAUTHORIZED, g, g)),
            "Degraded",
        ),
        (
            "failed request",
            sync(sync_status(false, reason::API_ERROR, g, g)),
            "Degraded",
        ),
        (
            "waiting for the user",
            sync(sync_status(false, reason::WAITING_FOR_USER, g, g)),
            "Progressing",
        ),
        (
            "first reconcile",
            sync(sync_status(false, reason::RECONCILING, g, g)),
            "Progressing",
        ),
        (
            "deleting",
            sync(sync_status(false, reason::DELETING, g, g)),
            "Progressing",
        ),
    ];
    for (case, object, expected) in cases {
        let (status, message) = health_of(&object);
        assert_eq!(status, expected, "{case}: message {message:?}");
    }
}

#[test]
fn lua_health_reports_reason_and_message() {
    let g = GENERATION;
    let (status, message) = health_of(&sync(sync_status(false, reason::CONFLICT, g, g)));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "Conflict: a message about Conflict");
}

#[test]
fn lua_health_reads_calendar_users() {
    let mut user = CalendarUser::new(
        "mvandijk",
        CalendarUserSpec {
            username: "MvanDijk".to_string(),
            deletion_policy: DeletionPolicy::Orphan,
        },
    );
    user.metadata.generation = Some(1);
    user.status = Some(CalendarUserStatus {
        observed_generation: Some(1),
        owned_username: Some("MvanDijk".to_string()),
        conditions: vec![condition(
            CONDITION_READY,
            true,
            reason::PROVISIONED,
            "the user exists in MyTimetable",
            Some(1),
            None,
        )],
    });
    let object = serde_json::to_value(user).expect("a CalendarUser serializes");
    let (status, message) = health_of(&object);
    assert_eq!(status, "Healthy", "{message}");
}

#[test]
fn lua_literal_escapes_strings() {
    assert_eq!(lua_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\1\"");
}

//! The CustomResourceDefinitions as they are installed and checked in under `crds/`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, ResourceExt};
use serde_json::Value;

use super::{CalendarSync, CalendarUser};

/// Returns the CustomResourceDefinitions of both resources, CalendarUser first, as they are
/// checked in under `crds/`.
///
/// Unlike `CalendarUser::crd()`, the descriptions have the line breaks of the doc comments
/// removed, so that `kubectl explain` wraps them to the terminal width.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        unwrap_descriptions(CalendarUser::crd()),
        unwrap_descriptions(CalendarSync::crd()),
    ]
}

/// Returns the file name under `crds/` that contains `crd`: its metadata.name plus `.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.name_any())
}

/// Renders a CustomResourceDefinition as the YAML document checked in under `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}

fn unwrap_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
    unwrap_descriptions_in(&mut value);
    serde_json::from_value(value).expect("joining description lines keeps the CRD valid")
}

/// Joins the lines of every `description` in `value`, keeping blank lines between
/// paragraphs.
fn unwrap_descriptions_in(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, entry) in map.iter_mut() {
                match entry {
                    Value::String(text) if key == "description" => *text = unwrap_lines(text),
                    _ => unwrap_descriptions_in(entry),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions_in),
        _ => {}
    }
}

fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwrap_lines_joins_lines_and_keeps_paragraphs() {
        assert_eq!(
            unwrap_lines("first line\nsecond line\n\nnext paragraph"),
            "first line second line\n\nnext paragraph"
        );
    }

    #[test]
    fn crds_have_no_line_breaks_inside_paragraphs() {
        for crd in crds() {
            let yaml = serde_json::to_string(&crd).unwrap();
            let value: Value = serde_json::from_str(&yaml).unwrap();
            let mut descriptions = Vec::new();
            collect_descriptions(&value, &mut descriptions);
            assert!(!descriptions.is_empty());
            for description in descriptions {
                let single_breaks = description.replace("\n\n", "");
                assert!(
                    !single_breaks.contains('\n'),
                    "{}: {description:?}",
                    crd.name_any()
                );
            }
        }
    }

    fn collect_descriptions(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, entry) in map {
                    match entry {
                        Value::String(text) if key == "description" => found.push(text.clone()),
                        _ => collect_descriptions(entry, found),
                    }
                }
            }
            Value::Array(items) => items
                .iter()
                .for_each(|item| collect_descriptions(item, found)),
            _ => {}
        }
    }
}

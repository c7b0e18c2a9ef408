//! How commands print: Kubernetes objects as YAML or JSON (`-o yaml|json`),
//! reports as text or JSON (`-o text|json`).

use anyhow::Result;
use serde::Serialize;

/// `-o yaml|json` of commands that print Kubernetes objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Manifest {
    Yaml,
    Json,
}

/// `-o text|json` of commands that print a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Report {
    Text,
    Json,
}

/// Prints objects as kubectl does: YAML documents separated by `---`; in
/// JSON one object as it is, several as a `v1` `List`.
pub fn print_objects<T: Serialize>(objects: &[T], format: Manifest) -> Result<()> {
    match format {
        Manifest::Yaml => {
            let docs = objects
                .iter()
                .map(serde_saphyr::to_string)
                .collect::<Result<Vec<_>, _>>()?;
            print!("{}", docs.join("---\n"));
        }
        Manifest::Json => {
            let text = match objects {
                [one] => serde_json::to_string_pretty(one)?,
                many => serde_json::to_string_pretty(
                    &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": many}),
                )?,
            };
            println!("{text}");
        }
    }
    Ok(())
}

/// Prints one value as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

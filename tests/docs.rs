//! The README's configuration reference stays true: it parses, its values are the built-in
//! defaults, and it names every key the shipped `config.toml` uses.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test or bench that cannot set up panics with a message: that is its failure report"
)]

use std::collections::BTreeSet;

use tiergate::config::Config;

fn reference_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme.split("<!-- config-reference -->").nth(1).expect("README has the config-reference marker");
    let start = after.find("```toml").expect("a toml block follows the marker") + "```toml".len();
    let end = after[start..].find("```").unwrap() + start;
    after[start..end].to_string()
}

/// Every key path in a TOML document, with tier names and array indexes folded so that
/// `tiers.pro.requests_per_hour` and `routes[3].prefix` compare to the reference's entries.
fn key_paths(value: &toml::Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if path == "tiers" { "T".to_string() } else { k.clone() };
                let p = if path.is_empty() { key } else { format!("{path}.{key}") };
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        toml::Value::Array(items) if items.iter().all(|i| i.is_table()) => {
            for item in items {
                key_paths(item, path, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_reference_parses_and_shows_the_defaults() {
    let reference =
        Config::parse(&reference_block()).unwrap_or_else(|e| panic!("README reference does not parse:\n{e}"));
    let minimal = Config::parse("[tiers.free]\n").unwrap();
    assert_eq!(
        format!("{:?}", reference.server),
        format!("{:?}", minimal.server),
        "[server] defaults differ from the README"
    );
    assert_eq!(format!("{:?}", reference.storage), format!("{:?}", minimal.storage), "[storage] defaults differ");
    assert_eq!(format!("{:?}", reference.identity), format!("{:?}", minimal.identity), "[identity] defaults differ");
    assert_eq!(format!("{:?}", reference.headers), format!("{:?}", minimal.headers), "[headers] defaults differ");
}

#[test]
fn the_reference_names_every_key_config_toml_uses() {
    let shipped: toml::Value =
        toml::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap()).unwrap();
    let reference: toml::Value = toml::from_str(&reference_block()).unwrap();
    let (mut used, mut documented) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&shipped, "", &mut used);
    key_paths(&reference, "", &mut documented);
    let missing: Vec<_> = used.difference(&documented).collect();
    assert!(missing.is_empty(), "config.toml uses keys the README reference does not show: {missing:?}");
}

/// The public contract's example config (`../shared/config.example.toml`, beside the checkout in CI
/// and on developer machines) is accepted as it is.
#[test]
fn the_contract_example_config_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/config.example.toml");
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("skipped: {path} is not there");
        return;
    };
    if let Err(e) = Config::parse(&text) {
        panic!("the contract's example config does not parse:\n{e}");
    }
}

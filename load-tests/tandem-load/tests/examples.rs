//! The shipped ghz configs in load-tests/ghz/ load and match the tandem.v1 messages.

use std::path::PathBuf;

use tandem_load::config::Settings;

#[test]
fn every_example_config_is_valid() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ghz");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let cfg = Settings::from_file(&path)
            .and_then(|s| s.resolve(true))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let prepared =
            tandem_load::validate(&cfg).map_err(|e| format!("{}: {e}", path.display()))?;
        assert!(
            cfg.insecure,
            "{}: the demo server is plaintext",
            path.display()
        );
        assert!(!prepared.data.is_empty());
        checked.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
    }
    checked.sort();
    let names: Vec<String> = checked.into_iter().flatten().collect();
    for expected in [
        "rank.json",
        "recommend-cold.json",
        "recommend-many.json",
        "recommend-warm.json",
        "record-events.json",
        "search.json",
        "warm-many.json",
        "warm-users.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    Ok(())
}

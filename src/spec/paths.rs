//! The one check of a spec that looks at the host: do the paths it names
//! exist? Run after [`super::validate`] and before any work, so a typo in a
//! store path fails in a second, not after a VM has booted.

use std::path::Path;

use super::{ImageSpec, SpecError};

/// Checks that every host path the spec names exists: `system`, `systems`,
/// `additionalPaths`, `channelSource`, `configFile`, `efiFirmware`,
/// `efiVariables`, and the `contents` sources that are not globs.
pub fn check_paths(spec: &ImageSpec) -> Result<(), SpecError> {
    let system_hint = "give a NixOS toplevel (`nix-build '<nixpkgs/nixos>' -A system`) or a closureInfo directory";
    if let Some(system) = &spec.system {
        exists("system", system, Some(system_hint))?;
    }
    for (index, system) in spec.systems.iter().enumerate() {
        exists(&format!("systems[{index}]"), system, Some(system_hint))?;
    }
    for (index, path) in spec.additional_paths.iter().enumerate() {
        exists(&format!("additionalPaths[{index}]"), path, None)?;
    }
    let optional = [
        ("channelSource", &spec.channel_source),
        ("configFile", &spec.config_file),
        ("efiFirmware", &spec.efi_firmware),
        ("efiVariables", &spec.efi_variables),
    ];
    for (field, path) in optional {
        if let Some(path) = path {
            exists(field, path, None)?;
        }
    }
    for (index, entry) in spec.contents.iter().enumerate() {
        // Globs may match nothing yet; the contents step reports those.
        if !entry.source.contains(['*', '?', '[']) {
            exists(
                &format!("contents[{index}].source"),
                Path::new(&entry.source),
                None,
            )?;
        }
    }
    Ok(())
}

fn exists(field: &str, path: &Path, hint: Option<&str>) -> Result<(), SpecError> {
    // metadata follows symlinks, so a dangling one counts as missing.
    std::fs::metadata(path)
        .map(drop)
        .map_err(|source| SpecError::PathMissing {
            field: field.to_owned(),
            path: path.to_owned(),
            hint: hint.map(str::to_owned),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_paths_pass_and_missing_ones_name_their_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ImageSpec {
            system: Some(dir.path().to_owned()),
            ..ImageSpec::default()
        };
        check_paths(&spec).unwrap();
        spec.additional_paths = vec![dir.path().to_owned(), dir.path().join("missing")];
        match check_paths(&spec) {
            Err(SpecError::PathMissing { field, .. }) => assert_eq!(field, "additionalPaths[1]"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_system_is_reported_with_a_hint() {
        let spec = ImageSpec {
            system: Some("/nix/store/does-not-exist-nixos-system".into()),
            ..ImageSpec::default()
        };
        let text = check_paths(&spec).unwrap_err().to_string();
        assert!(
            text.contains("`system`") && text.contains("hint:"),
            "{text}"
        );
    }
}

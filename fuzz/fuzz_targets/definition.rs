//! VM definition JSON through hangard's parser and validation (`VmDefinition::from_json`, as
//! the store loads each file). What validates must print back to JSON that parses to the same
//! definition, so a definition hangard writes can always be read again.
#![no_main]

use hangar_engine::host::definition::VmDefinition;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(definition) = VmDefinition::from_json(text) else {
        return;
    };
    let json = definition.to_json();
    let again = VmDefinition::from_json(&json)
        .unwrap_or_else(|err| panic!("a valid definition does not read back: {err}\n{json}"));
    assert_eq!(again, definition);
});

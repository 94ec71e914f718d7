//! Bytes a control client sends, through the worker's line splitter (`split_lines`, fed in
//! fuzzed pieces) and request parser (`Request::parse`). Every line gets a reply that
//! serialises to one JSON line; a parsed command serialises back to the same command.
#![no_main]

use hangar_engine::control::{split_lines, Line};
use hangar_engine::protocol::{Command, Reply, Request, MAX_REQUEST_LINE};
use hangar_fuzz::Input;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut buffer = Vec::new();
    let mut discarding = false;
    while !input.is_empty() {
        let n = usize::from(input.u8()) * 4 + 1;
        let piece = input.bytes(n);
        buffer.extend_from_slice(piece);
        for line in split_lines(&mut buffer, &mut discarding) {
            let Line::Complete(line) = line else {
                continue;
            };
            assert!(line.len() <= MAX_REQUEST_LINE);
            assert!(!line.contains(&b'\n'));
            let reply = match Request::parse(&line) {
                Ok(request) => {
                    let json = serde_json::to_value(&request.command).unwrap();
                    let again: Command = serde_json::from_value(json).unwrap();
                    assert_eq!(again, request.command);
                    Reply::ok(request.id, serde_json::json!({}))
                }
                Err((id, err)) => Reply::error(id, err),
            };
            let text = serde_json::to_string(&reply).unwrap();
            assert!(!text.contains('\n'), "a reply is one line");
        }
        assert!(buffer.len() <= MAX_REQUEST_LINE);
    }
});

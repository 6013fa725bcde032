//! The config reader: any text gives a config or a list of problems, never a panic; and a config
//! that parses prints back its effective table without panicking. (Compiling is left out: it reads
//! the files a config names, and an operator's config may name any file.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text) {
        Ok(config) => {
            let _ = tiergate::snapshot::describe(&config);
        }
        Err(problems) => assert!(!problems.0.is_empty(), "an error with no problem listed"),
    }
});

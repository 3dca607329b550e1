//! Any text, any lexer mode: the policy must answer, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgward::policy::{LexOptions, Policy, PolicyConfig, PreparedRegistry, SessionScope};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(sql) = std::str::from_utf8(rest) else {
        return;
    };
    let policy = Policy::from_config(&PolicyConfig::default()).expect("default policy");
    let lex = LexOptions {
        standard_conforming_strings: mode & 1 == 0,
    };
    let _ = policy.evaluate(sql, &SessionScope::default(), lex, &PreparedRegistry::new());
});

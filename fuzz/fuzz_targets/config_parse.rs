//! `plugin_config::parse_with_env` on any configuration, then everything
//! the filter builds from a valid one: the whole `Filter`, the verifier,
//! each exchanger and its first request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plugin_config::{RuleAction, RuleExchange};
use token_exchange_filter::fuzzing::Filter;
use token_exchange_filter::fuzzing::Verifier;
use token_exchange_filter::fuzzing::{Exchanger, Stamp};
use token_exchange_fuzz::{env, NOW, SUBJECT};

fuzz_target!(|data: &[u8]| {
    let Ok(config) = plugin_config::parse_with_env(data, &env) else {
        return;
    };
    if let Some(oidc) = &config.oidc {
        let _ = Verifier::new(oidc);
    }
    let mut exchanges: Vec<_> = config.token_exchange.iter().collect();
    for rule in &config.rules {
        if let RuleAction::Apply { oidc, exchange } = &rule.action {
            let _ = Verifier::new(oidc);
            if let RuleExchange::Replace(te) = exchange {
                exchanges.push(te);
            }
        }
    }
    for te in exchanges {
        if let Ok(ex) = Exchanger::new(te) {
            let _ = ex.request(
                SUBJECT,
                None,
                &Stamp {
                    now_ms: NOW * 1000,
                    jti: "jti-1".into(),
                },
            );
        }
    }
    let _ = Filter::new(&config, "fuzz");
});

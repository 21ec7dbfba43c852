//! The test filter modules, built by this crate's build script: the proxy-wasm filters of
//! `tests/filters` (for wasm32-wasip1) and the hand-written modules of `tests/filters/wat`.
//!
//! Each constant is the absolute path of one `.wasm` file, named after its crate or WAT file
//! (`HEADER_REWRITER`, `ABI_0_2_0`, ...); [`ALL`] lists them all and [`path`] finds one by name.
//! Each filter's behaviour and configuration is described at the top of its source.

include!(concat!(env!("OUT_DIR"), "/filters.rs"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_is_a_wasm_file() {
        assert!(!ALL.is_empty());
        for &(name, module) in ALL {
            let bytes =
                std::fs::read(module).unwrap_or_else(|err| panic!("{name}: {module}: {err}"));
            assert!(
                bytes.starts_with(b"\0asm"),
                "{name}: {module} is not a wasm module"
            );
            assert_eq!(path(name), module);
        }
    }

    #[test]
    fn the_expected_modules_are_there() {
        let filters = [
            ("header_rewriter", HEADER_REWRITER),
            ("body_rewriter", BODY_REWRITER),
            ("local_responder", LOCAL_RESPONDER),
            ("pauser", PAUSER),
            ("properties", PROPERTIES),
            ("counter", COUNTER),
            ("hostile", HOSTILE),
            ("callout", CALLOUT),
            ("root_callout", ROOT_CALLOUT),
            ("tick_counter", TICK_COUNTER),
            ("cas", CAS),
            ("queue_producer", QUEUE_PRODUCER),
            ("queue_consumer", QUEUE_CONSUMER),
            ("metrics", METRICS),
            ("survivor", SURVIVOR),
            ("abi_0_2_0", ABI_0_2_0),
            ("abi_0_1_0", ABI_0_1_0),
            ("no_abi_marker", NO_ABI_MARKER),
            ("unknown_import", UNKNOWN_IMPORT),
            ("configure_fails", CONFIGURE_FAILS),
        ];
        for (name, module) in filters {
            assert_eq!(path(name), module);
        }
        assert_eq!(ALL.len(), filters.len());
    }

    #[test]
    #[should_panic(expected = "no test filter module named \"nope\"")]
    fn an_unknown_name_panics() {
        path("nope");
    }
}

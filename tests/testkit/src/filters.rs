//! The filter modules, built by this crate's build script: the test filters of
//! `tests/filters` and the product filters of `filters` (both proxy-wasm, for wasm32-wasip1),
//! and the hand-written modules of `tests/filters/wat`.
//!
//! Each constant is the absolute path of one `.wasm` file, named after its crate or WAT file
//! (`HEADER_REWRITER`, `ADD_HEADERS` for crate `add-headers`, `ABI_0_2_0`, ...); [`ALL`] lists
//! them all and [`path`] finds one by name. Each filter's behaviour and configuration is
//! described at the top of its source. The product filters are built where
//! `config/edgeward.yaml` expects them, `filters/target/wasm32-wasip1/release/`.

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
            ("body_inspector", BODY_INSPECTOR),
            ("foreign", FOREIGN),
            ("root_callout", ROOT_CALLOUT),
            ("tick_counter", TICK_COUNTER),
            ("vm_starter", VM_STARTER),
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
            ("wrong_callback_signature", WRONG_CALLBACK_SIGNATURE),
            ("main_after_initialize", MAIN_AFTER_INITIALIZE),
            ("jwt-auth", JWT_AUTH),
            ("add-headers", ADD_HEADERS),
            ("geo-router", GEO_ROUTER),
            ("ab-test", AB_TEST),
            ("rate-limit", RATE_LIMIT),
            ("json-transform", JSON_TRANSFORM),
            ("api-compose", API_COMPOSE),
            ("image-resize", IMAGE_RESIZE),
        ];
        for (name, module) in filters {
            assert_eq!(path(name), module);
        }
        assert_eq!(ALL.len(), filters.len());
    }

    #[test]
    fn the_product_filters_are_where_the_demo_config_expects_them() {
        let release = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../filters/target/wasm32-wasip1/release")
            .canonicalize()
            .unwrap();
        for (module, file) in [
            (JWT_AUTH, "jwt_auth.wasm"),
            (ADD_HEADERS, "add_headers.wasm"),
            (GEO_ROUTER, "geo_router.wasm"),
        ] {
            assert_eq!(std::path::Path::new(module), release.join(file));
        }
    }

    #[test]
    #[should_panic(expected = "no filter module named \"nope\"")]
    fn an_unknown_name_panics() {
        path("nope");
    }
}

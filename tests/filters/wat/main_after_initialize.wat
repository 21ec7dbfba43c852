;; main_after_initialize: a WASI reactor that also exports `main`, as some toolchains build
;; filters (they configure their SDK in main). proxy-wasm-cpp-host calls `main(0, 0)` right
;; after `_initialize`; this module's proxy_on_vm_start fails unless that happened, in that
;; order. Its request and response headers get `x-main: after-initialize`.
(module
  (import "env" "proxy_add_header_map_value"
    (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  (data (i32.const 16) "x-main")
  (data (i32.const 32) "after-initialize")

  (global $initialized (mut i32) (i32.const 0))
  (global $main_ran (mut i32) (i32.const 0))

  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (return (i32.const 0))))
    (local.get $ptr))

  (func (export "_initialize")
    (global.set $initialized (i32.const 1)))

  ;; main(argc, argv): counts only when the reactor was initialized first.
  (func (export "main") (param $argc i32) (param $argv i32) (result i32)
    (if (global.get $initialized)
      (then (global.set $main_ran (i32.const 1))))
    (i32.const 0))

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_context_create") (param $context_id i32) (param $root_context_id i32))

  (func (export "proxy_on_vm_start") (param $context_id i32) (param $vm_config_size i32)
    (result i32)
    (global.get $main_ran))

  (func (export "proxy_on_configure") (param $context_id i32) (param $plugin_config_size i32)
    (result i32)
    (i32.const 1))

  (func (export "proxy_on_request_headers")
    (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (drop (call $proxy_add_header_map_value
      (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 16)))
    (i32.const 0))

  (func (export "proxy_on_response_headers")
    (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (drop (call $proxy_add_header_map_value
      (i32.const 2) (i32.const 16) (i32.const 6) (i32.const 32) (i32.const 16)))
    (i32.const 0))
)

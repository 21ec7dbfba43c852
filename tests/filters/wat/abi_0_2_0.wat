;; abi_0_2_0: a minimal, valid proxy-wasm module that declares ABI version 0.2.0
;; (`proxy_abi_version_0_2_0`) rather than 0.2.1. A host that also accepts 0.2.0 loads it;
;; every request then gets request header `x-abi: 0.2.0` and every response gets response
;; header `x-abi: 0.2.0`, both appended with `proxy_add_header_map_value`.
;;
;; proxy_on_vm_start and proxy_on_configure succeed (1), the header callbacks return
;; Continue (0), proxy_on_done returns 1 (done), the rest do nothing.
(module
  (import "env" "proxy_add_header_map_value"
    (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; The header name and value, at fixed addresses below the heap.
  (data (i32.const 16) "x-abi")
  (data (i32.const 32) "0.2.0")

  ;; Bump allocator: hands out 8-byte aligned blocks from 1024 up, growing memory when
  ;; needed, never frees; returns 0 when the request cannot be met.
  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.lt_u (local.get $end) (local.get $ptr))
      (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq
              (memory.grow
                (i32.sub
                  (i32.shr_u (i32.add (local.get $end) (i32.const 65535)) (i32.const 16))
                  (memory.size)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  (func (export "proxy_abi_version_0_2_0"))

  (func (export "proxy_on_context_create") (param $context_id i32) (param $root_context_id i32))

  (func (export "proxy_on_vm_start") (param $context_id i32) (param $vm_config_size i32)
    (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $context_id i32) (param $plugin_config_size i32)
    (result i32)
    (i32.const 1))

  ;; map type 0: request headers
  (func (export "proxy_on_request_headers")
    (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (drop (call $proxy_add_header_map_value
      (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5)))
    (i32.const 0))

  ;; map type 2: response headers
  (func (export "proxy_on_response_headers")
    (param $context_id i32) (param $num_headers i32) (param $end_of_stream i32) (result i32)
    (drop (call $proxy_add_header_map_value
      (i32.const 2) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5)))
    (i32.const 0))

  (func (export "proxy_on_done") (param $context_id i32) (result i32)
    (i32.const 1))

  (func (export "proxy_on_log") (param $context_id i32))

  (func (export "proxy_on_delete") (param $context_id i32)))

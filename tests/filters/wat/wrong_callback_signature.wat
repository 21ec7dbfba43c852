;; wrong_callback_signature: a valid ABI 0.2.1 module whose proxy_on_response_headers takes two
;; parameters instead of three. Loading the plugin must fail and name the export, not fail
;; the first response.
(module
  (memory (export "memory") 1)

  (global $heap (mut i32) (i32.const 1024))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_context_create") (param $context_id i32) (param $root_context_id i32))

  (func (export "proxy_on_vm_start") (param $context_id i32) (param $vm_config_size i32)
    (result i32)
    (i32.const 1))

  (func (export "proxy_on_configure") (param $context_id i32) (param $plugin_config_size i32)
    (result i32)
    (i32.const 1))

  (func (export "proxy_on_response_headers") (param $context_id i32) (param $num_headers i32)
    (result i32)
    (i32.const 0)))

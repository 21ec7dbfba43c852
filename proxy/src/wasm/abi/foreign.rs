//! `proxy_call_foreign_function`: the host's own extensions, by name. edgeward offers the two
//! Envoy ones that filters commonly call and that mean something here:
//!
//! - `declare_property` (arguments: Envoy's `DeclarePropertyArguments`, protobuf): declares a
//!   filter property; a read-only one can be set once per request, and a second
//!   `set_property` answers BAD_ARGUMENT, as in Envoy. Every span is the request's (edgeward
//!   keeps no per-connection filter state); the type and schema are kept as bytes.
//! - `clear_route_cache` (no arguments): the request is routed again once the request
//!   headers have gone through the chain, with the headers as the filters left them.
//!
//! Any other name answers NOT_FOUND (logged once per name and instance), as Envoy does for a
//! function it lacks.

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{HostResult, Status};
use crate::wasm::state::{DeclaredProperty, HostState};

/// The most properties one instance may declare: a filter declaring on every request must
/// not grow memory without bound.
const MAX_DECLARED: usize = 1024;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_call_foreign_function", call_foreign_function)?;
    Ok(())
}

fn call_foreign_function(
    mut caller: Caller<'_, HostState>,
    name_ptr: u32,
    name_len: u32,
    args_ptr: u32,
    args_len: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    let (name, args) = match memory::read(&caller, name_ptr, name_len)
        .and_then(|name| Ok((name, memory::read(&caller, args_ptr, args_len)?)))
    {
        Ok(read) => read,
        Err(status) => return Ok(status as i32),
    };
    let state = caller.data_mut();
    let outcome = match name.as_slice() {
        b"declare_property" => declare_property(state, &args),
        b"clear_route_cache" => {
            let own = state.call.on_own_stream();
            if let Some(http) = state.call.http.as_mut().filter(|_| own) {
                http.stream.route_cache_cleared = true;
            }
            Ok(())
        }
        _ => {
            if state.unknown_foreign_functions.insert(name.clone()) {
                log::warn!(
                    target: super::log::TARGET,
                    "[filter {}] foreign function `{}` is not offered by edgeward",
                    state.plugin.name,
                    String::from_utf8_lossy(&name)
                );
            }
            Err(Status::NotFound)
        }
    };
    match outcome {
        // Neither function returns anything.
        Ok(()) => memory::return_bytes(&mut caller, &[], ret_ptr, ret_size),
        Err(status) => Ok(status as i32),
    }
}

fn declare_property(state: &mut HostState, args: &[u8]) -> Result<(), Status> {
    let Some((name, property)) = decode_declaration(args) else {
        log::warn!(
            target: super::log::TARGET,
            "[filter {}] declare_property: malformed arguments",
            state.plugin.name
        );
        return Err(Status::BadArgument);
    };
    let known = state.declared_properties.contains_key(&name);
    if !known && state.declared_properties.len() >= MAX_DECLARED {
        return Err(Status::BadArgument);
    }
    state.declared_properties.insert(name, property);
    Ok(())
}

/// `DeclarePropertyArguments` (Envoy's `declare_property.proto`): `name` = 1 (string),
/// `readonly` = 2 (bool), `type` = 3 (enum), `schema` = 4 (bytes), `span` = 5 (enum). The
/// name is required; fields edgeward does not use are skipped by their wire type.
fn decode_declaration(bytes: &[u8]) -> Option<(Vec<u8>, DeclaredProperty)> {
    let mut name = None;
    let mut readonly = false;
    let mut at = 0;
    while at < bytes.len() {
        let (key, used) = varint(&bytes[at..])?;
        at += used;
        let field = key >> 3;
        match key & 7 {
            0 => {
                let (value, used) = varint(&bytes[at..])?;
                at += used;
                if field == 2 {
                    readonly = value != 0;
                }
            }
            2 => {
                let (len, used) = varint(&bytes[at..])?;
                at += used;
                let end = at.checked_add(usize::try_from(len).ok()?)?;
                let value = bytes.get(at..end)?;
                at = end;
                if field == 1 {
                    name = Some(value.to_vec());
                }
            }
            1 => at = at.checked_add(8).filter(|end| *end <= bytes.len())?,
            5 => at = at.checked_add(4).filter(|end| *end <= bytes.len())?,
            _ => return None,
        }
    }
    let name = name.filter(|name| !name.is_empty())?;
    Some((name, DeclaredProperty { readonly }))
}

/// A protobuf varint: its value and length.
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (n, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * n);
        if byte & 0x80 == 0 {
            return Some((value, n + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_decode_as_envoy_encodes_them() {
        // name: "my_prop", readonly: true, type: STRING (1), span: DOWNSTREAM_REQUEST (1)
        let mut args = vec![0x0a, 7];
        args.extend_from_slice(b"my_prop");
        args.extend_from_slice(&[0x10, 1, 0x18, 1, 0x28, 1]);
        let (name, property) = decode_declaration(&args).unwrap();
        assert_eq!(name, b"my_prop");
        assert!(property.readonly);
        // A schema (bytes, field 4) is skipped; readonly defaults to false.
        let mut args = vec![0x0a, 1, b'p', 0x22, 3, 1, 2, 3];
        args.extend_from_slice(&[0x18, 2]);
        let (_, property) = decode_declaration(&args).unwrap();
        assert!(!property.readonly);
    }

    #[test]
    fn malformed_declarations_are_refused() {
        for args in [
            &b""[..],             // no name
            &[0x0a, 9, b'p'][..], // a length past the end
            &[0x0a][..],          // a truncated length
            &[0x0b, 1, b'p'][..], // wire type 3 (groups)
            &[0x10, 0xff][..],    // an unterminated varint
            &[0x0a, 0][..],       // an empty name
            &[0x09, 1, 2, 3][..], // a fixed64 past the end
        ] {
            assert!(decode_declaration(args).is_none(), "{args:?}");
        }
    }
}

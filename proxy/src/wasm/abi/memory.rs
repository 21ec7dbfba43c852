//! Bounds-checked access to guest memory, and handing data to the guest through its allocator.

use wasmtime::{Caller, Memory};

use super::status::{status, HostResult, Status};
use crate::wasm::state::HostState;

fn memory(caller: &Caller<'_, HostState>) -> Result<Memory, Status> {
    caller.data().memory.ok_or(Status::InternalFailure)
}

/// The guest bytes at `ptr..ptr+len`, or INVALID_MEMORY_ACCESS when any lies outside memory.
pub(crate) fn slice(mem: &[u8], ptr: u32, len: u32) -> Result<&[u8], Status> {
    let start = ptr as usize;
    let end = start
        .checked_add(len as usize)
        .ok_or(Status::InvalidMemoryAccess)?;
    mem.get(start..end).ok_or(Status::InvalidMemoryAccess)
}

/// A copy of guest bytes (for when the host state must change while using them).
pub(crate) fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
    let mem = memory(caller)?;
    slice(mem.data(caller), ptr, len).map(<[u8]>::to_vec)
}

/// Guest memory and host state at once, so that guest bytes can be used in place.
pub(crate) fn split<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> Result<(&'a [u8], &'a mut HostState), Status> {
    let mem = memory(caller)?;
    let (data, state) = mem.data_and_store_mut(caller);
    Ok((&*data, state))
}

pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    value: u32,
) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    value: u64,
) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as usize, bytes)
        .map_err(|_| Status::InvalidMemoryAccess)
}

/// Copies `data` into a fresh guest allocation and stores its address and length at
/// `ret_ptr`/`ret_size`, as the ABI's memory-ownership rules say: the guest frees it. Empty
/// data is returned as (0, 0) without calling the allocator (some SDKs crash on 0-byte
/// allocations). The allocator is guest code and may trap; that error unwinds the callback.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ret_ptr: u32,
    ret_size: u32,
) -> HostResult {
    // Check both return slots before allocating, so a bad pointer leaks nothing.
    let mem = match memory(caller) {
        Ok(mem) => mem,
        Err(status) => return Ok(status as i32),
    };
    let size = mem.data_size(&*caller);
    for p in [ret_ptr, ret_size] {
        if (p as usize).checked_add(4).is_none_or(|end| end > size) {
            return Ok(Status::InvalidMemoryAccess as i32);
        }
    }
    if data.is_empty() {
        return Ok(status(
            write_u32(caller, ret_ptr, 0).and_then(|()| write_u32(caller, ret_size, 0)),
        ));
    }
    let Ok(len) = u32::try_from(data.len()) else {
        return Ok(Status::InternalFailure as i32);
    };
    // Taken out for the call rather than cloned (a clone costs several atomic counts); the
    // guest's allocator makes no hostcall that would need it meanwhile.
    let Some(alloc) = caller.data_mut().alloc.take() else {
        return Ok(Status::InternalFailure as i32);
    };
    let called = alloc.call(&mut *caller, len);
    caller.data_mut().alloc = Some(alloc);
    let ptr = called?;
    if ptr == 0 {
        return Ok(Status::InternalFailure as i32);
    }
    // The allocation may have grown memory: `write` takes a fresh view.
    let result = write(caller, ptr, data)
        .and_then(|()| write_u32(caller, ret_ptr, ptr))
        .and_then(|()| write_u32(caller, ret_size, len));
    Ok(status(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_bounds_checked_without_overflow() {
        let mem = [1u8, 2, 3, 4];
        assert_eq!(slice(&mem, 1, 2), Ok(&[2u8, 3][..]));
        assert_eq!(slice(&mem, 4, 0), Ok(&[][..]));
        assert_eq!(slice(&mem, 3, 2), Err(Status::InvalidMemoryAccess));
        assert_eq!(
            slice(&mem, u32::MAX, u32::MAX),
            Err(Status::InvalidMemoryAccess)
        );
        assert_eq!(slice(&mem, 5, 0), Err(Status::InvalidMemoryAccess));
    }
}

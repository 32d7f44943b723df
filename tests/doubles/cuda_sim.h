// The SIMULATED CUDA driver (libcuda_sim.so) that tests load in place of
// libcuda.so.1 by setting $WARMSTART_LIBCUDA to its path. It is not a GPU
// and proves nothing about one: it implements, on host memory, the subset of
// the driver API that the CUDA backend calls, so the backend's logic
// (allocation, export, stream and event ordering, slab recycling, error
// paths) runs in CI. The real-GPU tests (cuda_device_gpu_test) stay the
// proof.
//
// What it simulates:
// - one GPU named "warmstart simulated GPU (not a real device)" with a fixed
//   UUID; "device memory" is host memory, and device pointers are host
//   addresses: cuMemAlloc and cuMemCreate are memfds (so
//   cuMemExportToShareableHandle returns a real descriptor that tests can
//   mmap), cuMemAddressReserve/cuMemMap/cuMemSetAccess are mmap/mprotect
//   (cuMemSetAccess grants read-only access when asked). New memory is
//   filled with 0xA5, as real GPU memory is not zeroed either.
// - legacy IPC across processes: cuIpcGetMemHandle writes the exporter's
//   pid and the block's memfd number into the handle, and
//   cuIpcOpenMemHandle in another process of the same user opens
//   /proc/<pid>/fd/<fd> and maps it read-write (checking the memfd's name,
//   so a handle to a freed block fails with CUDA_ERROR_INVALID_HANDLE).
//   Like the real driver it refuses a handle in the process that exported
//   it (CUDA_ERROR_INVALID_CONTEXT), returns the same pointer when a handle
//   is opened again, and unmaps at the last cuIpcCloseMemHandle. Unlike the
//   real driver, opened memory stays readable after the exporter frees it.
// - streams are worker threads that run their copies and memsets in order;
//   an event completes when its stream reaches it. So asynchrony and
//   ordering are real.
// - contexts: the primary context must be retained and current on the
//   calling thread for memory, stream and copy calls
//   (CUDA_ERROR_INVALID_CONTEXT otherwise).
// - copies and memsets into memory that is not allocated, mapped and
//   accessible fail with CUDA_ERROR_INVALID_VALUE; cuIpcGetMemHandle refuses
//   VMM memory as the real driver does.
//
// Options, read by every cuInit (which also clears injected errors):
//   WARMSTART_SIM_VMM=0            VMM not supported (device attribute 0,
//                                  cuMemCreate fails).
//   WARMSTART_SIM_POSIX_FD=0       no POSIX file descriptor handles.
//   WARMSTART_SIM_DEVICES=N        the driver sees N GPUs (0 to 8, default
//                                  1), each with its own UUID; they share
//                                  one primary context, one memory total
//                                  and the counters below.
//   WARMSTART_SIM_MEMORY_BYTES=N   simulated GPU memory (default 1 GiB).
//   WARMSTART_SIM_OTHERS_MEMORY_BYTES=N  of which N are used by other
//                                  processes (cuMemGetInfo does not report
//                                  them free; allocations cannot use them).
//   WARMSTART_SIM_COPY_DELAY_US=N  each copy takes at least N us.
//   WARMSTART_SIM_INIT_ERROR=code  cuInit fails with `code`.
//   WARMSTART_SIM_MISSING=a,b      cuGetProcAddress does not find these.
//
// Test controls, exported as C functions (dlsym them from the library the
// driver loaded: dlopen(path, RTLD_NOW | RTLD_NOLOAD)).
//
// Ownership: the simulation is one per process, owned by the library (what
// a test allocates through the driver API it gives back through it).
// Thread safety: the entry points and the controls may be called from any
// thread, as the real driver's may.
#ifndef WARMSTART_TESTS_DOUBLES_CUDA_SIM_H_
#define WARMSTART_TESTS_DOUBLES_CUDA_SIM_H_

extern "C" {

// The `nth` call (1-based, counted from now) of entry point `call` (its
// base name: "cuMemAlloc", "cuMemcpyHtoDAsync", ...) fails with
// `error_code` (a CUresult) and does nothing else; cuStreamSynchronize
// and cuEventSynchronize still wait first, as a real asynchronous error is
// reported once the failed work has stopped.
void warmstart_sim_inject(const char* call, int nth, int error_code);
// While paused, stream workers start no new operation.
void warmstart_sim_pause_streams(int paused);

// What is alive in the simulation.
int warmstart_sim_live_allocations();     // cuMemAlloc'd + cuMemCreate'd.
int warmstart_sim_live_address_ranges();  // Reservations + mappings.
// Handles of other processes opened here (cuIpcOpenMemHandle), counted
// once however often each was opened.
int warmstart_sim_live_ipc_mappings();
int warmstart_sim_registered_host_regions();
int warmstart_sim_outstanding_copies();  // Enqueued, not yet done.
int warmstart_sim_live_streams();
int warmstart_sim_live_events();
int warmstart_sim_context_retains();
// Copies since cuInit whose source was not registered host memory (a real
// driver makes those synchronous and slow).
int warmstart_sim_pageable_copies();
}

#endif  // WARMSTART_TESTS_DOUBLES_CUDA_SIM_H_
